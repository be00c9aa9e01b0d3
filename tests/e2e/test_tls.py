"""SIP over TLS, SRTP (SDES) and HTTPS end to end: a TLS+SRTP caller (siptls.py, libsrtp on
the test side) and a plain SIPp caller in one conference hear each other (FFT of the decoded
RTP), the SRTP leg's wire packets carry no audible G.711, the REST API answers over HTTPS
only, the server's BYE goes back over the TLS connection, and an app whose policy requires
TLS and SRTP refuses plain callers with the documented status codes."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme
from harness import (
    ACCOUNT_SID,
    APPLICATION_SID,
    HOST,
    WEBHOOK_SECRET,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    RtpPeer,
    SippRunner,
    free_tcp_port,
    g711_decode,
    tone_power,
)
from siptls import TlsSipCall, answer_key, new_key, sdp_offer, srtp_pair

pytestmark = pytest.mark.e2e

TOKEN = "e2e-tls-token-5e4d3c"


def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) made for this test only."""
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.cert_chain_pems[0].write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return paths


def app(name: str, url: str, numbers: list[str], **policy: str) -> dict[str, Any]:
    return {"name": name, "call_hook": url, "webhook_secret": WEBHOOK_SECRET,
            "account_sid": ACCOUNT_SID, "application_sid": APPLICATION_SID,
            "numbers": numbers, **policy}


def start(confroom: ConfroomFactory, hook_app: HookApp, tmp_path: Path
          ) -> tuple[ConfroomProcess, int, int, Path]:
    """A server with SIP over TLS, HTTPS and two apps: "*" (no policy) and 2000 (TLS and
    SRTP required). Returns (server, TLS port, HTTPS port, CA file)."""
    ca, cert, key = pki(tmp_path)
    tls_port, http_port = free_tcp_port(), free_tcp_port()
    srv = confroom(
        apps=[app("secure", hook_app.url("/secure"), ["2000"], tls="required", srtp="required"),
              app("open", hook_app.url("/call"), ["*"])],
        extra_toml={"sip": {"tls_port": tls_port}, "tls": {"cert": str(cert), "key": str(key)},
                    "http": {"port": http_port, "token": TOKEN}},
    )
    srv.wait_log(rf"tls on {re.escape(HOST)}:{tls_port}")
    srv.wait_log(rf"REST API on https://{re.escape(HOST)}:{http_port}")
    return srv, tls_port, http_port, ca


def https(port: int, ca: Path, method: str, path: str, token: str | None = TOKEN
          ) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(f"https://{HOST}:{port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def media_address(sdp: bytes) -> tuple[str, int]:
    text = sdp.decode()
    c = re.search(r"(?m)^c=IN IP4 (\S+)", text)
    m = re.search(r"(?m)^m=audio (\d+) ", text)
    assert c and m
    return c.group(1), int(m.group(1))


def pcm_since(peer: RtpPeer, t0: float, seconds: float) -> np.ndarray[Any, Any]:
    pcm = peer.decoded_pcm(since=t0)[: int(seconds * 8000)]
    assert len(pcm) >= 0.8 * seconds * 8000, f"only {len(pcm) / 8000:.2f}s received"
    return pcm


def test_tls_srtp_caller_and_plain_caller_hear_each_other_over_https_control(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer], tmp_path: Path,
) -> None:
    hook_app.route("/call", [{"verb": "conference", "name": "mixed", "beep": False}])
    hook_app.route("/secure", [])
    srv, tls_port, http_port, ca = start(confroom, hook_app, tmp_path)
    alice, bob = rtp_peer_factory(), rtp_peer_factory()
    # alice: plain SIPp over UDP, stays until the server's BYE
    run = sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": alice.port,
                                                       "from_user": "alice"}, timeout=40)
    # bob: SIP over TLS with an SDES offer
    call = TlsSipCall(HOST, tls_port, ca, from_user="bob")
    try:
        bob_key = new_key()
        ok = call.invite("1000", sdp_offer(bob.port, bob_key))
        assert ok.status == 200, ok.first_line
        assert (ok.header("Contact") or "").endswith(f":{tls_port};transport=tls>")
        assert (ok.header("Via") or "").startswith("SIP/2.0/TLS")
        proto, server_key = answer_key(ok.body)
        assert proto == "RTP/SAVP" and server_key != bob_key
        bob.protect, bob.unprotect = srtp_pair(bob_key, server_key)
        bob_to = media_address(ok.body)
        srv.wait_log(r"conference join .*members=2", timeout=15)
        alice_to = alice.wait_packets(1, timeout=10, payload_types=[0])[0].source
        assert srv.find_logs(r"srtp AES_CM_128_HMAC_SHA1_80, keys exchanged over tls$")

        t0 = time.monotonic()
        senders = [alice.send_tone_async(440.0, 3.0, alice_to, amplitude=0.2),
                   bob.send_tone_async(1000.0, 3.0, bob_to, amplitude=0.2)]
        for s in senders:
            s.join(timeout=15)
        heard_by_alice = pcm_since(alice, t0 + 0.5, 2.0)
        heard_by_bob = pcm_since(bob, t0 + 0.5, 2.0)
        assert tone_power(heard_by_alice, 1000) > 0.15, "alice does not hear the SRTP caller"
        assert tone_power(heard_by_bob, 440) > 0.15, "the SRTP caller does not hear alice"
        assert tone_power(heard_by_alice, 440) < 0.01  # nobody hears itself
        # on the wire: SRTP (10-byte tag), every packet authentic, no audible G.711 in clear
        assert bob.rejected == 0 and len(bob.wire) > 100
        assert {len(w) for w in bob.wire} == {12 + 160 + 10}
        wire_pcm = np.concatenate([g711_decode(w[12:-10], 0) for w in bob.wire[-100:]])
        # (noise spreads evenly: +-20 Hz of 4 kHz is 1 %; alice's tone in clear would be >15 %)
        assert tone_power(wire_pcm, 440) < 0.05, "the SRTP leg carries G.711 in clear"

        # an RFC 4733 digit over SRTP reaches the server too
        mark = srv.mark()
        bob.send_dtmf("5", bob_to)
        srv.wait_log(r"dtmf call_sid=\S+ digit=5", since=mark)

        # the REST API: HTTPS with the token; no token 401; plain HTTP gets no answer
        status, body = https(http_port, ca, "GET",
                             f"/v1/Accounts/{ACCOUNT_SID}/Conferences/mixed")
        assert status == 200 and body["members"] == 2
        assert https(http_port, ca, "GET", f"/v1/Accounts/{ACCOUNT_SID}/Conferences",
                     token=None)[0] == 401
        plain = urllib.request.Request(f"http://{HOST}:{http_port}/health")
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
            urllib.request.urlopen(plain, timeout=5).read()
        # ending the conference hangs both up: our BYE goes back over the TLS connection
        status, _ = https(http_port, ca, "DELETE", f"/v1/Accounts/{ACCOUNT_SID}/Conferences/mixed")
        assert status in (200, 202, 204)
        assert call.bye_received.wait(10), "no BYE over the TLS connection"
        res = run.wait()
        assert res.ok(), res.describe()
        ends = srv.wait_logs(r"srtp call_sid=\S+ suite=AES_CM_128_HMAC_SHA1_80 "
                             r"received=(\d+) rejected=0 protect_errors=0", 1, timeout=10)
        assert int(ends[0].group(1)) >= 140  # bob's 3 s of tone were authenticated
    finally:
        call.close()


def test_policy_requires_tls_and_srtp(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer], tmp_path: Path,
) -> None:
    """The app for 2000 requires TLS and SRTP: plain SIP gets 403 (Warning), a TLS call with
    a plain RTP offer 488 (Warning), a sips: call with SDES is answered (sips: Contact) and
    hung up by the caller; the other app still takes plain calls."""
    hook_app.route("/secure", [{"verb": "pause", "length": 20}])
    hook_app.route("/call", [{"verb": "pause", "length": 20}])
    srv, tls_port, _, ca = start(confroom, hook_app, tmp_path)
    peer = rtp_peer_factory()
    res = sipp.run("uac_expect_status", srv.target, service="2000",
                   keys={"rtp_port": peer.port}, variables={"expected_status": 403}, timeout=15)
    assert res.ok(), res.describe()
    srv.wait_log(r"refused \(tls required\) from 127\.0\.0\.1 over udp")

    plain = TlsSipCall(HOST, tls_port, ca)
    try:
        resp = plain.invite("2000", sdp_offer(peer.port, None))
        assert resp.status == 488 and "SRTP" in (resp.header("Warning") or "")
    finally:
        plain.close()

    secure = TlsSipCall(HOST, tls_port, ca)
    try:
        ok = secure.invite("2000", sdp_offer(peer.port, new_key()), scheme="sips")
        assert ok.status == 200, ok.first_line
        assert ok.header("Contact") == f"<sips:confroom@{HOST}:{tls_port}>"
        assert answer_key(ok.body)[0] == "RTP/SAVP"
        assert secure.bye().status == 200
    finally:
        secure.close()
    # the app without a policy takes a TLS call with a plain offer: plain RTP answer
    other = TlsSipCall(HOST, tls_port, ca)
    try:
        ok = other.invite("1000", sdp_offer(peer.port, None))
        assert ok.status == 200 and b"RTP/AVP" in ok.body and b"crypto" not in ok.body
        assert other.bye().status == 200
    finally:
        other.close()
    # SDES over plain TCP: the 2000 app refuses it (403), the other answers SRTP and logs
    # that the keys went in clear
    over_tcp = TlsSipCall(HOST, srv.sip_port, None)
    try:
        assert over_tcp.invite("2000", sdp_offer(peer.port, new_key())).status == 403
    finally:
        over_tcp.close()
    over_tcp = TlsSipCall(HOST, srv.sip_port, None)
    try:
        ok = over_tcp.invite("1000", sdp_offer(peer.port, new_key()))
        assert ok.status == 200 and answer_key(ok.body)[0] == "RTP/SAVP"
        srv.wait_log(r"srtp AES_CM_128_HMAC_SHA1_80, keys exchanged over tcp \(in clear")
        assert over_tcp.bye().status == 200
    finally:
        over_tcp.close()
    assert srv.wait_logs(r"call end .*status=completed", 3, timeout=10)
