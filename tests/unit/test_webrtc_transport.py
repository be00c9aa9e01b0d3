"""The sans-IO WebRTC transport pieces: the ICE-lite responder (`media/ice.py`) against STUN
checks built like a browser's, and DTLS-SRTP (`media/dtls.py`) between two real OpenSSL
endpoints over memory BIOs, keys checked by protecting on one side and unprotecting on the
other."""

from __future__ import annotations

import pytest
from aioice import stun

from confroom.media.dtls import DtlsError, DtlsIdentity, DtlsSrtp, parse_fingerprint
from confroom.media.ice import IceLite, is_dtls, is_stun
from confroom.media.rtp import build_rtp_header
from confroom.sip.sdp import SdpError, build_answer, negotiate, parse_sdp
from confroom.sip.webrtc_sdp import split_webrtc, webrtc_answer


def _check(ice: IceLite, username: str, pwd: str, use_candidate: bool = True) -> bytes:
    req = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    req.attributes["USERNAME"] = username
    req.attributes["PRIORITY"] = 1853817087
    req.attributes["ICE-CONTROLLING"] = 0x1234567890
    if use_candidate:
        req.attributes["USE-CANDIDATE"] = None
    req.add_message_integrity(pwd.encode())
    return bytes(req)


def test_ice_lite_answers_only_checks_signed_with_our_password() -> None:
    ice = IceLite(remote_ufrag="brws")
    addr = ("192.0.2.7", 50123)
    data = _check(ice, f"{ice.local_ufrag}:brws", ice.local_pwd)
    assert is_stun(data[0]) and not is_dtls(data[0])
    raw = ice.handle(data, addr)
    assert raw is not None
    resp = stun.parse_message(raw)  # also verifies our FINGERPRINT
    assert resp.message_class == stun.Class.RESPONSE
    assert resp.transaction_id == stun.parse_message(data).transaction_id
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == addr
    assert resp.check_message_integrity(ice.local_pwd.encode())
    assert ice.selected == addr and ice.answered == 1
    # wrong password, wrong ufrag (ours or theirs), garbage: no answer, counted
    assert ice.handle(_check(ice, f"{ice.local_ufrag}:brws", "x" * 32), addr) is None
    assert ice.handle(_check(ice, "nope:brws", ice.local_pwd), addr) is None
    assert ice.handle(_check(ice, f"{ice.local_ufrag}:evil", ice.local_pwd), addr) is None
    assert ice.handle(b"\x00\x01\x00\x00garbage", addr) is None
    assert ice.rejected == 4 and ice.answered == 1


def _pump(a: DtlsSrtp, b: DtlsSrtp, first: list[bytes], now: float = 0.0) -> None:
    to_b, to_a = first, []
    for _ in range(20):
        for d in to_b:
            to_a += b.feed(d, now)
        to_b = []
        for d in to_a:
            to_b += a.feed(d, now)
        to_a = []
        if not to_b and not to_a:
            return


def test_dtls_handshake_derives_matching_srtp_keys() -> None:
    server_id, client_id = DtlsIdentity.generate(), DtlsIdentity.generate()
    server = DtlsSrtp(server_id, client_id.fingerprint, 0.0, server=True)
    client = DtlsSrtp(client_id, server_id.fingerprint, 0.0, server=False)
    _pump(client, server, client.start(0.0))
    assert server.error is None and client.error is None
    assert server.srtp is not None and client.srtp is not None
    rtp = build_rtp_header(0, False, 1, 160, 0x1234) + bytes(range(160))
    protected = client.srtp.protect(rtp)
    assert protected is not None and protected != rtp
    assert server.srtp.unprotect(protected) == rtp
    back = server.srtp.protect(rtp)
    assert back is not None and client.srtp.unprotect(back) == rtp
    assert server.srtp.unprotect(protected) is None  # a replay is refused


def test_dtls_peer_with_another_certificate_than_its_fingerprint_fails() -> None:
    server_id, client_id = DtlsIdentity.generate(), DtlsIdentity.generate()
    other = DtlsIdentity.generate()
    server = DtlsSrtp(server_id, other.fingerprint, 0.0)
    client = DtlsSrtp(client_id, server_id.fingerprint, 0.0, server=False)
    _pump(client, server, client.start(0.0))
    assert server.srtp is None
    assert server.error == "DTLS peer certificate does not match the SDP fingerprint"


def test_dtls_client_that_never_completes_times_out() -> None:
    server_id, client_id = DtlsIdentity.generate(), DtlsIdentity.generate()
    server = DtlsSrtp(server_id, client_id.fingerprint, 100.0, timeout=5.0)
    client = DtlsSrtp(client_id, server_id.fingerprint, 100.0, server=False)
    hello = client.start(100.0)
    assert hello and is_dtls(hello[0][0])
    reply = server.feed(hello[0], 100.0)  # the server's flight; the client goes silent
    assert reply and not server.connected
    server.poll(104.9)
    assert not server.failed
    server.poll(105.0)
    assert server.failed and server.error == "DTLS handshake not completed within 5 s"
    assert server.feed(hello[0], 105.1) == []


def test_dtls_garbage_fails_the_handshake_clearly() -> None:
    server_id, client_id = DtlsIdentity.generate(), DtlsIdentity.generate()
    server = DtlsSrtp(server_id, client_id.fingerprint, 0.0)
    server.feed(b"\x16\xfe\xfd" + b"\x00" * 60, 0.0)
    assert not server.connected
    # a malformed record is either dropped by OpenSSL (then the deadline ends it) or an error
    server.poll(20.0)
    assert server.failed and server.error is not None and "DTLS" in server.error


def test_fingerprint_parsing() -> None:
    assert parse_fingerprint("sha-256 AB:cd:01") == ("sha-256", b"\xab\xcd\x01")
    with pytest.raises(DtlsError):
        parse_fingerprint("md5 AB:CD")
    with pytest.raises(DtlsError):
        parse_fingerprint("sha-256 zz:11")


CHROME_OFFER = (
    "v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "a=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 13 126\r\n"
    "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=candidate:842163049 1 udp 1677729535 198.51.100.4 53517 typ srflx raddr 0.0.0.0\r\n"
    "a=ice-ufrag:Zx9d\r\na=ice-pwd:a1b2c3d4e5f6a1b2c3d4e5f6\r\n"
    "a=fingerprint:sha-256 0A:1B:2C:3D\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\n"
    "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:126 telephone-event/8000\r\n"
)


def test_webrtc_offer_is_split_and_the_answer_made_webrtc() -> None:
    offer, rtc = split_webrtc(parse_sdp(CHROME_OFFER))
    assert rtc is not None
    assert (rtc.ufrag, rtc.pwd, rtc.setup, rtc.mid, rtc.bundle) == (
        "Zx9d", "a1b2c3d4e5f6a1b2c3d4e5f6", "actpass", "0", True)
    assert rtc.fingerprint == "sha-256 0A:1B:2C:3D"
    neg = negotiate(offer)  # the ordinary negotiation, on the stream as RTP/AVPF
    assert (neg.codec, neg.payload_type, neg.remote_direction) == ("OPUS", 111, "sendrecv")
    assert neg.remote_host == "198.51.100.4"  # not 0.0.0.0 (= hold): a candidate's address
    plain = build_answer(neg, local_host="203.0.113.9", local_port=40000, session_id=1,
                         version=1)
    sdp = webrtc_answer(plain, rtc, ufrag="ourufrag", pwd="p" * 32,
                        fingerprint="sha-256 AA:BB", host="203.0.113.9",
                        port=40000).decode()
    lines = sdp.split("\r\n")
    assert lines.index("a=ice-lite") < lines.index("a=group:BUNDLE 0") < next(
        i for i, x in enumerate(lines) if x.startswith("m="))
    assert any(x.startswith("m=audio 40000 UDP/TLS/RTP/SAVPF 111") for x in lines), lines
    for want in ("a=mid:0", "a=ice-ufrag:ourufrag", f"a=ice-pwd:{'p' * 32}",
                 "a=fingerprint:sha-256 AA:BB", "a=setup:passive", "a=rtcp-mux",
                 "a=candidate:1 1 udp 2130706431 203.0.113.9 40000 typ host"):
        assert want in lines
    parsed = parse_sdp(sdp)  # still valid SDP for our own parser
    assert parsed.media[0].proto == "UDP/TLS/RTP/SAVPF"


def test_webrtc_offer_errors() -> None:
    plain = parse_sdp(CHROME_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"))
    assert split_webrtc(plain) == (plain, None)
    with pytest.raises(SdpError, match="ice-ufrag"):
        split_webrtc(parse_sdp(CHROME_OFFER.replace("a=ice-ufrag:Zx9d\r\n", "")))
    with pytest.raises(SdpError, match="fingerprint"):
        split_webrtc(parse_sdp(CHROME_OFFER.replace("a=fingerprint:sha-256 0A:1B:2C:3D\r\n",
                                                    "")))
    with pytest.raises(SdpError, match="setup:passive"):
        split_webrtc(parse_sdp(CHROME_OFFER.replace("setup:actpass", "setup:passive")))


def test_ice_consent_is_lost_after_30_s_without_a_valid_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 7675: a WebRTC member whose valid ICE checks stop for 30 s is ended by the engine
    (its `on_timeout`, once) with one log line; checks every few seconds keep it, and checks
    with a wrong password do not count."""
    from confroom.media.engine import MediaEngine
    from confroom.media.session import MediaSession
    from confroom.media.webrtc import CONSENT_TIMEOUT, WebRtcTransport

    assert CONSENT_TIMEOUT == 30.0
    identity = DtlsIdentity.generate()
    # no DTLS client here: its handshake deadline is put out of the way
    rtc = WebRtcTransport(identity, identity.fingerprint, "brws", now=100.0, timeout=1e6)

    class Sink:
        def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
            pass

    engine = MediaEngine("127.0.0.1", 42000, 42010, 0)
    s = MediaSession(42000)
    s.update("PCMU", 0, None, "192.0.2.7", 50123)
    engine.add_session(s, Sink())
    engine.set_webrtc(s, rtc)
    ended: list[float] = []
    now = 100.0
    s.on_timeout = lambda: ended.append(now)
    addr = ("192.0.2.7", 50123)
    good = f"{rtc.ice.local_ufrag}:brws"
    for now in (101.0, 106.0, 111.0, 125.0):  # checks every few seconds (and one late)
        rtc.handle(_check(rtc.ice, good, rtc.ice.local_pwd), addr, now)
        engine._webrtc_io(now)
    assert rtc.outbox == [] and rtc.error is None and not ended
    for now in (130.0, 150.0):  # a stranger's checks (wrong password) do not keep consent
        rtc.handle(_check(rtc.ice, good, "x" * 32), addr, now)
        engine._webrtc_io(now)
    now = 154.9
    engine._webrtc_io(now)
    assert rtc.error is None and not ended
    with caplog.at_level("WARNING", logger="confroom.media.engine"):
        for now in (155.1, 155.12, 160.0):
            engine._webrtc_io(now)
    assert ended == [155.1]
    assert rtc.error is not None and "ICE consent lost: no valid check for 30 s" in rtc.error
    lines = [r.getMessage() for r in caplog.records if "consent" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("WebRTC media on port 42000: ICE consent "
                                                   "lost") and lines[0].endswith(
        "(ICE checks answered 4, refused 2); ending the call"), lines
