"""SIP over WebSocket (RFC 7118) and WebRTC media end to end: callers on `ws://.../sip` of the
HTTP port join a conference like UDP callers (INVITE, 200 with WS Via/Contact, ACK, audio heard
on the wire, BYE); garbage and a 10 MB frame close the connection (1003, 1009) without hurting
the server or the calls on other connections; a WebRTC peer
(ICE check, DTLS client, SRTP, from the libraries browsers' stacks are built like) hears and is
heard; one that never completes DTLS is ended with a clear log line and a BYE."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import uuid

import aiohttp
import numpy as np
import pytest
from aioice import stun
from conftest import ConfroomFactory
from harness import (
    HOST,
    ConfroomProcess,
    Int16Array,
    RtpPeer,
    build_rtp,
    dominant_frequency,
    free_tcp_port,
    g711_decode,
    g711_encode,
    tone,
    tone_power,
)

from confroom.media.dtls import DtlsIdentity, DtlsSrtp
from confroom.media.srtp import SrtpContext

pytestmark = pytest.mark.e2e


def _sdp(rtp: RtpPeer) -> str:
    host, port = rtp.address
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


class WsCaller:
    """A minimal RFC 7118 UAC over an aiohttp WebSocket: INVITE/ACK/BYE of one call."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, user: str) -> None:
        self.ws = ws
        self.user = user
        self.call_id = f"{uuid.uuid4().hex}@ws.invalid"
        self.tag = uuid.uuid4().hex[:8]
        self.to_tag = ""

    def _request(self, method: str, cseq: int, body: str = "") -> str:
        to = "<sip:conf@confroom>" + (f";tag={self.to_tag}" if self.to_tag else "")
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} sip:conf@confroom SIP/2.0\r\n"
                f"Via: SIP/2.0/WS {self.user}.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@ws.invalid>;tag={self.tag}\r\n"
                f"To: {to}\r\nCall-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:{self.user}@{self.user}.invalid;transport=ws>\r\n"
                f"{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}")

    async def final_response(self) -> str:
        while True:
            msg = await self.ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            text: str = msg.data
            status = int(text.split(" ", 2)[1])
            if status >= 200:
                return text

    async def invite(self, rtp: RtpPeer | str) -> str:
        body = rtp if isinstance(rtp, str) else _sdp(rtp)
        await self.ws.send_str(self._request("INVITE", 1, body))
        resp = await self.final_response()
        m = re.search(r"^To:.*;tag=([^;\r\n]+)", resp, re.M)
        assert m is not None, resp
        self.to_tag = m.group(1)
        await self.ws.send_str(self._request("ACK", 1))
        return resp

    async def bye(self) -> str:
        await self.ws.send_str(self._request("BYE", 2))
        return await self.final_response()

    async def answer_bye(self, timeout: float = 10.0) -> str:
        """Wait for the server's BYE on this connection and answer it 200; the BYE."""
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        bye: str = msg.data
        assert bye.startswith("BYE "), bye
        copied = [line for line in bye.split("\r\n")
                  if line.split(":", 1)[0] in ("Via", "From", "To", "Call-ID", "CSeq")]
        await self.ws.send_str("SIP/2.0 200 OK\r\n" + "\r\n".join(copied)
                               + "\r\nContent-Length: 0\r\n\r\n")
        return bye


def _rtp_target(answer: str) -> tuple[str, int]:
    host = re.search(r"^c=IN IP4 (\S+)", answer, re.M)
    port = re.search(r"^m=audio (\d+)", answer, re.M)
    assert host is not None and port is not None, answer
    return host.group(1), int(port.group(1))


def test_websocket_callers_join_a_conference_and_hear_each_other(
    confroom: ConfroomFactory, rtp_peer_factory: type[RtpPeer]
) -> None:
    port = free_tcp_port()
    srv: ConfroomProcess = confroom(
        verbs=[{"verb": "conference", "name": "ws-room"}],
        extra_toml={"http": {"port": port, "token": "ws-e2e-token"}})
    srv.wait_log(rf"ws on {re.escape(HOST)}:{port}/sip")
    alice_rtp, bob_rtp = rtp_peer_factory(), rtp_peer_factory()
    url = f"http://{HOST}:{port}/sip"

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(url, protocols=("sip",)) as ws_a, \
                s.ws_connect(url, protocols=("sip",)) as ws_b:
            alice, bob = WsCaller(ws_a, "alice"), WsCaller(ws_b, "bob")
            ok_a = await alice.invite(alice_rtp)
            ok_b = await bob.invite(bob_rtp)
            for ok in (ok_a, ok_b):
                assert ok.startswith("SIP/2.0 200"), ok
                assert re.search(r"^Via: SIP/2.0/WS \S+;branch=", ok, re.M)
                assert re.search(rf"^Contact: <sip:confroom@[^>]*:{port};transport=ws>", ok,
                                 re.M), ok
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, alice_rtp.send_pcm, tone(440, 1.5),
                                       _rtp_target(ok_a))
            heard = bob_rtp.decoded_pcm()
            assert len(heard) > 4000
            assert abs(dominant_frequency(heard) - 440) < 15
            assert abs(int(heard.max())) > 3000
            own = alice_rtp.decoded_pcm()
            assert len(own) == 0 or abs(int(own.max())) < 500  # alice does not hear herself
            bye = await alice.bye()
            assert bye.startswith("SIP/2.0 200"), bye
            # garbage on bob's connection: a clear close, the server goes on
            await ws_b.send_bytes(b"\x16\x03\x01 not sip at all\r\n\r\n")
            msg = await ws_b.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1003

    asyncio.run(scenario())
    srv.wait_log(r"SIP over WebSocket: closed: not a SIP message")
    assert srv.proc is not None and srv.proc.poll() is None


def test_a_10_mb_frame_is_closed_with_1009_and_calls_go_on(
    confroom: ConfroomFactory, rtp_peer_factory: type[RtpPeer]
) -> None:
    """A 10 MB frame on `/sip` (over the 64 KiB limit) gets close code 1009 and a log line; a
    call in progress on another connection goes on (heard on the wire, BYE answered) and a new
    connection is served."""
    port = free_tcp_port()
    srv: ConfroomProcess = confroom(
        verbs=[{"verb": "conference", "name": "ws-room"}],
        extra_toml={"http": {"port": port, "token": "ws-e2e-token"}})
    srv.wait_log(rf"ws on {re.escape(HOST)}:{port}/sip")
    alice_rtp, bob_rtp = rtp_peer_factory(), rtp_peer_factory()
    url = f"http://{HOST}:{port}/sip"

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(url, protocols=("sip",)) as ws_a, \
                s.ws_connect(url, protocols=("sip",), max_msg_size=0) as ws_big:
            alice = WsCaller(ws_a, "alice")
            ok_a = await alice.invite(alice_rtp)
            assert ok_a.startswith("SIP/2.0 200"), ok_a
            big = b"INVITE sip:x@y SIP/2.0\r\n" + b"X" * (10 * 1024 * 1024)
            with contextlib.suppress(ConnectionError):  # the server may close mid-frame
                await ws_big.send_bytes(big)
            msg = await ws_big.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009, msg
            # the server carries on: a new caller joins alice and hears her
            async with s.ws_connect(url, protocols=("sip",)) as ws_b:
                bob = WsCaller(ws_b, "bob")
                ok_b = await bob.invite(bob_rtp)
                assert ok_b.startswith("SIP/2.0 200"), ok_b
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, alice_rtp.send_pcm, tone(440, 1.5),
                                           _rtp_target(ok_a))
                heard = bob_rtp.decoded_pcm()
                assert len(heard) > 4000 and abs(dominant_frequency(heard) - 440) < 15
                for caller in (alice, bob):
                    bye = await caller.bye()
                    assert bye.startswith("SIP/2.0 200"), bye

    asyncio.run(scenario())
    srv.wait_log(r"SIP over WebSocket: closed \(1009\): Message size \d+ exceeds limit 65536")
    assert srv.proc is not None and srv.proc.poll() is None


@pytest.mark.parametrize("verb", [{"verb": "conference", "name": "ws-room"},
                                  {"verb": "pause", "length": 60}], ids=["conference", "pause"])
def test_shutdown_sends_bye_over_the_websocket(
    confroom: ConfroomFactory, rtp_peer_factory: type[RtpPeer], verb: dict[str, object]
) -> None:
    """SIGTERM (drain_time 0): a caller over `/sip` gets the server's BYE on its connection,
    answers it, and the server exits 0 at once after that, like for UDP callers (an open
    dashboard feed does not hold the exit up). In a
    conference the drain ends it (the app hangs up); in a pause the call is still up when the
    server stops (its BYE goes out before the HTTP server, which carries `/sip`, closes)."""
    port = free_tcp_port()
    srv: ConfroomProcess = confroom(
        verbs=[verb],
        extra_toml={"http": {"port": port, "token": "ws-e2e-token"},
                    "limits": {"drain_time": 0}})
    srv.wait_log(rf"ws on {re.escape(HOST)}:{port}/sip")
    url = f"http://{HOST}:{port}/sip"

    async def scenario() -> str:
        async with aiohttp.ClientSession() as s, s.ws_connect(url, protocols=("sip",)) as ws, \
                s.get(f"http://{HOST}:{port}/v1/Events",
                      headers={"Authorization": "Bearer ws-e2e-token"}) as feed:
            # the dashboard's feed is open too: it must not hold the exit up either
            assert feed.status == 200 and await feed.content.readany()
            alice = WsCaller(ws, "alice")
            ok = await alice.invite(rtp_peer_factory())
            assert ok.startswith("SIP/2.0 200"), ok
            loop = asyncio.get_running_loop()
            stopped = loop.run_in_executor(None, srv.stop)
            bye = await alice.answer_bye()
            t_bye = time.monotonic()
            assert await stopped == 0
            assert time.monotonic() - t_bye < 5, "the server did not exit after the BYE"
            return bye

    bye = asyncio.run(scenario())
    assert re.search(r"^Call-ID: .*@ws\.invalid", bye, re.M), bye
    assert re.search(r"call end call_sid=\S+ status=completed", srv.log_text())


# ---- WebRTC media: a Python peer made of the same pieces a browser uses ---------------------


class WebRtcPeer:
    """A WebRTC endpoint on a real UDP socket: sends ICE checks (controlling, USE-CANDIDATE),
    is the DTLS client, then sends and receives SRTP (PCMU), like a browser does."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.identity = DtlsIdentity.generate("browser")
        self.ufrag, self.pwd = "brws", "b" * 24
        self.received: list[bytes] = []

    def offer(self) -> str:
        port = self.sock.getsockname()[1]
        return (f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nt=0 0\r\n"
                "a=group:BUNDLE 0\r\n"
                f"m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n"
                "a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\na=mid:0\r\na=rtcp-mux\r\n"
                f"a=ice-ufrag:{self.ufrag}\r\na=ice-pwd:{self.pwd}\r\n"
                f"a=fingerprint:{self.identity.fingerprint}\r\na=setup:actpass\r\n"
                f"a=candidate:1 1 udp 2122260223 {HOST} {port} typ host\r\n")

    async def recv(self, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)

    async def connect(self, answer: str, *, dtls: bool = True) -> DtlsSrtp | None:
        """ICE check against the answer's candidate, then (with `dtls`) the handshake."""
        attrs = dict(re.findall(r"^a=([\w-]+):(.*?)\r?$", answer, re.M))
        assert "ice-lite" in answer and attrs["setup"] == "passive"
        assert re.search(r"^m=audio \d+ UDP/TLS/RTP/SAVPF 0", answer, re.M)
        assert "a=rtcp-mux" in answer and attrs["mid"] == "0"
        cand = attrs["candidate"].split()
        self.sock.connect((cand[4], int(cand[5])))
        req = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        req.attributes["USERNAME"] = f"{attrs['ice-ufrag']}:{self.ufrag}"
        req.attributes["ICE-CONTROLLING"] = 1
        req.attributes["USE-CANDIDATE"] = None
        req.add_message_integrity(attrs["ice-pwd"].encode())
        self.sock.send(bytes(req))
        resp = stun.parse_message(await self.recv())
        assert resp.message_class == stun.Class.RESPONSE
        assert resp.check_message_integrity(attrs["ice-pwd"].encode())
        if not dtls:
            return None
        now = time.monotonic()
        client = DtlsSrtp(self.identity, attrs["fingerprint"], now, server=False)
        for d in client.start(now):
            self.sock.send(d)
        while not client.connected:
            assert client.error is None, client.error
            data = await self.recv()
            if data[0] >= 128:
                continue  # media only starts after the handshake, but be lenient
            for d in client.feed(data, time.monotonic()):
                self.sock.send(d)
        return client

    async def send_tone(self, srtp: SrtpContext, pcm: Int16Array) -> None:
        """20 ms PCMU packets, SRTP-protected, paced by deadlines; what arrives meanwhile is
        collected (`received`, still protected)."""
        t0 = time.monotonic()
        for i in range(len(pcm) // 160):
            pkt = build_rtp(0, i, i * 160, 0xC0FFEE, g711_encode(pcm[i * 160:(i + 1) * 160], 0))
            protected = srtp.protect(pkt)
            assert protected is not None
            self.sock.send(protected)
            deadline = t0 + (i + 1) * 0.02
            while (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    self.received.append(await self.recv(left))

    def heard(self, srtp: SrtpContext) -> Int16Array:
        payloads = []
        for data in self.received:
            if data[0] < 128:
                continue
            plain = srtp.unprotect(data)
            if plain is not None and (plain[1] & 0x7F) == 0:
                payloads.append(g711_decode(plain[12:], 0))
        return np.concatenate(payloads) if payloads else np.zeros(0, dtype=np.int16)

    def close(self) -> None:
        self.sock.close()


def test_webrtc_member_over_websocket_hears_and_is_heard(
    confroom: ConfroomFactory, rtp_peer_factory: type[RtpPeer]
) -> None:
    port = free_tcp_port()
    srv: ConfroomProcess = confroom(
        verbs=[{"verb": "conference", "name": "rtc-room"}],
        extra_toml={"http": {"port": port, "token": "ws-e2e-token"}})
    srv.wait_log(r"DTLS uses a self-signed certificate generated at start, fingerprint sha-256")
    phone_rtp = rtp_peer_factory()
    rtc = WebRtcPeer()
    url = f"http://{HOST}:{port}/sip"

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(url, protocols=("sip",)) as ws_a, \
                s.ws_connect(url, protocols=("sip",)) as ws_b:
            browser, phone = WsCaller(ws_a, "browser"), WsCaller(ws_b, "phone")
            ok = await browser.invite(rtc.offer())
            assert ok.startswith("SIP/2.0 200"), ok
            ok_phone = await phone.invite(phone_rtp)
            client = await rtc.connect(ok)
            assert client is not None and client.srtp is not None
            loop = asyncio.get_running_loop()
            # the phone talks (440 Hz) while the browser talks (1000 Hz)
            phone_talks = loop.run_in_executor(None, phone_rtp.send_pcm, tone(440, 2.0),
                                               _rtp_target(ok_phone))
            await rtc.send_tone(client.srtp, tone(1000, 2.0))
            await phone_talks
            heard_by_browser = rtc.heard(client.srtp)
            assert len(heard_by_browser) > 8000, len(heard_by_browser)
            assert abs(dominant_frequency(heard_by_browser) - 440) < 15
            heard_by_phone = phone_rtp.decoded_pcm()
            assert abs(dominant_frequency(heard_by_phone) - 1000) < 15
            assert tone_power(heard_by_browser, 1000) < 0.01 * tone_power(heard_by_browser, 440)
            bye = await browser.bye()
            assert bye.startswith("SIP/2.0 200"), bye

    try:
        asyncio.run(scenario())
    finally:
        rtc.close()


def test_webrtc_member_that_never_completes_dtls_is_ended_clearly(
    confroom: ConfroomFactory,
) -> None:
    port = free_tcp_port()
    srv: ConfroomProcess = confroom(
        verbs=[{"verb": "conference", "name": "rtc-room"}],
        extra_toml={"http": {"port": port, "token": "ws-e2e-token"}})
    srv.wait_log(r"ws on ")
    rtc = WebRtcPeer()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(f"http://{HOST}:{port}/sip", protocols=("sip",)) as ws:
            browser = WsCaller(ws, "browser")
            ok = await browser.invite(rtc.offer())
            assert ok.startswith("SIP/2.0 200"), ok
            await rtc.connect(ok, dtls=False)  # ICE works, then silence: no ClientHello
            msg = await ws.receive(timeout=20)  # the server's BYE, on the same connection
            assert msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith("BYE "), msg

    try:
        asyncio.run(scenario())
    finally:
        rtc.close()
    srv.wait_log(r"WebRTC media on port \d+: DTLS handshake not completed within 10 s")


def test_wss_with_a_self_signed_certificate_generated_at_start(
    confroom: ConfroomFactory,
) -> None:
    port = free_tcp_port()
    srv: ConfroomProcess = confroom(
        verbs=[{"verb": "conference", "name": "wss-room"}],
        extra_toml={"http": {"port": port, "token": "ws-e2e-token", "tls": "self-signed"}})
    srv.wait_log(r"HTTPS and wss with a self-signed certificate generated at start")
    srv.wait_log(rf"wss on {re.escape(HOST)}:{port}/sip")
    options = ("OPTIONS sip:wss-room@confroom SIP/2.0\r\n"
               "Via: SIP/2.0/WSS abc.invalid;branch=z9hG4bKwss1\r\nMax-Forwards: 70\r\n"
               "From: <sip:b@ws.invalid>;tag=1\r\nTo: <sip:wss-room@confroom>\r\n"
               "Call-ID: wss-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            # plain HTTP to the port gets nothing: it speaks TLS only
            with pytest.raises(aiohttp.ClientError):
                await s.get(f"http://{HOST}:{port}/phone", timeout=aiohttp.ClientTimeout(5))
            async with s.ws_connect(f"https://{HOST}:{port}/sip", protocols=("sip",),
                                    ssl=False) as ws:
                await ws.send_str(options)
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith(
                    "SIP/2.0 200"), msg
            async with s.get(f"https://{HOST}:{port}/phone", ssl=False) as r:
                assert r.status == 200 and "jssip" in await r.text()

    asyncio.run(scenario())
