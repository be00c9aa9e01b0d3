"""SRTP (SDES): the a=crypto offer/answer, `SrtpContext`, and the engine's hooks (received
packets unprotected before the jitter buffer, sent packets protected), with libsrtp on the
other side as the phone."""

from __future__ import annotations

import base64
import os
import socket
import struct

import numpy as np
import pylibsrtp
import pytest

from confroom.media import g711
from confroom.media.engine import MediaEngine
from confroom.media.rtp import build_rtp_header, parse_rtp
from confroom.media.session import MediaSession
from confroom.media.sources import ToneSource
from confroom.media.srtp import SrtpContext, new_key
from confroom.sip.sdp import (
    Crypto,
    NoCommonCodec,
    SrtpRequired,
    build_answer,
    negotiate,
    parse_crypto,
    parse_sdp,
)

SUITE80 = "AES_CM_128_HMAC_SHA1_80"
SUITE32 = "AES_CM_128_HMAC_SHA1_32"
TICK = 0.02


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def offer(m_lines: str) -> bytes:
    return ("v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
            + m_lines).encode()


def phone(suite: str, phone_key: bytes) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """The phone's side: (its sender with its key, its receiver of our key: set later)."""
    profile = {SUITE80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
               SUITE32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32}[suite]
    tx = pylibsrtp.Session(pylibsrtp.Policy(
        key=phone_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    return tx, pylibsrtp.Session()


def phone_rx(suite: str, our_key: bytes) -> pylibsrtp.Session:
    profile = {SUITE80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
               SUITE32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32}[suite]
    return pylibsrtp.Session(pylibsrtp.Policy(
        key=our_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile))


# ---- SDP ------------------------------------------------------------------------------------


def test_parse_crypto_accepts_the_two_suites_and_refuses_what_we_cannot_do() -> None:
    key = os.urandom(30)
    c = parse_crypto(f"1 {SUITE80} inline:{b64(key)}")
    assert c == Crypto(1, SUITE80, key)
    assert parse_crypto(f"7 {SUITE32} inline:{b64(key)}|2^31") == Crypto(7, SUITE32, key)
    assert parse_crypto(f"1 {SUITE80} inline:{b64(key)}|2^20|1:4") is None  # MKI
    assert parse_crypto(f"1 {SUITE80} inline:{b64(key)} UNENCRYPTED_SRTP") is None
    assert parse_crypto(f"1 AEAD_AES_256_GCM inline:{b64(key)}") is None
    assert parse_crypto(f"1 {SUITE80} inline:{b64(key[:20])}") is None  # short key
    assert parse_crypto(f"1 {SUITE80} inline:!!notbase64!!") is None
    assert parse_crypto(f"x {SUITE80} inline:{b64(key)}") is None
    assert parse_crypto("") is None


def test_savp_offer_gets_an_savp_answer_with_our_own_key() -> None:
    theirs = os.urandom(30)
    sdp = offer("m=audio 4000 RTP/SAVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
                f"a=crypto:1 AEAD_AES_256_GCM inline:{b64(os.urandom(44))}\r\n"
                f"a=crypto:2 {SUITE32} inline:{b64(theirs)}\r\n"
                f"a=crypto:3 {SUITE80} inline:{b64(os.urandom(30))}\r\n")
    neg = negotiate(parse_sdp(sdp))
    assert neg.crypto == Crypto(2, SUITE32, theirs) and neg.codec == "PCMA"
    ours = new_key()
    answer = parse_sdp(build_answer(neg, local_host="10.0.0.1", local_port=30000,
                                    session_id=1, version=1, srtp_key=ours))
    (m,) = answer.media
    assert m.proto == "RTP/SAVP"
    (line,) = [v for n, v in m.attributes if n == "crypto"]
    assert line is not None and parse_crypto(line) == Crypto(2, SUITE32, ours)
    with pytest.raises(ValueError):
        build_answer(neg, local_host="10.0.0.1", local_port=30000, session_id=1, version=1)


def test_plain_offers_stay_plain_and_the_policy_can_require_srtp() -> None:
    plain = offer("m=audio 4000 RTP/AVP 0\r\n"
                  f"a=crypto:1 {SUITE80} inline:{b64(os.urandom(30))}\r\n")  # ignored on AVP
    neg = negotiate(parse_sdp(plain))
    assert neg.crypto is None
    answer = build_answer(neg, local_host="10.0.0.1", local_port=30000, session_id=1, version=1)
    assert b"RTP/AVP" in answer and b"crypto" not in answer
    with pytest.raises(SrtpRequired):
        negotiate(parse_sdp(plain), require_srtp=True)
    # SAVP with nothing usable: 488 either way
    bad = offer(f"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 {SUITE80} inline:AAAA\r\n")
    with pytest.raises(NoCommonCodec):
        negotiate(parse_sdp(bad))
    # two streams (SAVP, then AVP as a fallback): the SRTP one is taken first
    both = offer(f"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 {SUITE80} inline:{b64(os.urandom(30))}"
                 "\r\nm=audio 4002 RTP/AVP 0\r\n")
    neg2 = negotiate(parse_sdp(both), require_srtp=True)
    assert neg2.crypto is not None and neg2.remote_port == 4000


# ---- SrtpContext ------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", [SUITE80, SUITE32])
def test_context_round_trip_and_refusals(suite: str) -> None:
    phone_key, our_key = os.urandom(30), os.urandom(30)
    ctx = SrtpContext(suite, our_key, phone_key, label="t")
    ptx, _ = phone(suite, phone_key)
    plain = build_rtp_header(0, False, 7, 1120, 0xBEEF) + bytes(range(160))
    wire = ptx.protect(plain)
    assert len(wire) == len(plain) + (10 if suite == SUITE80 else 4)
    assert ctx.unprotect(wire) == plain
    assert ctx.unprotect(wire) is None  # replayed
    tampered = bytearray(ptx.protect(build_rtp_header(0, False, 8, 1280, 0xBEEF) + bytes(160)))
    tampered[20] ^= 1
    assert ctx.unprotect(bytes(tampered)) is None
    assert ctx.unprotect(build_rtp_header(0, False, 9, 1440, 0xBEEF) + bytes(160)) is None
    rtcp = struct.pack("!BBH", 0x81, 200, 6) + bytes(24)
    assert ctx.unprotect(rtcp) is None
    assert (ctx.unprotected, ctx.auth_failures) == (1, 3)  # RTCP is not a failure
    out = ctx.protect(plain)
    assert out is not None and phone_rx(suite, our_key).unprotect(out) == plain
    assert "rejected=3" in ctx.summary()


# ---- the engine -------------------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def test_every_sent_packet_is_protected_audio_and_dtmf() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20010, rtp_timeout=0)
    our_key = new_key()
    srtp = MediaSession(20000)
    srtp.update("PCMU", 0, 101, "10.0.0.9", 4000, "sendrecv")
    plain = MediaSession(20002)
    plain.update("PCMU", 0, 101, "10.0.0.9", 4002, "sendrecv")
    t_srtp, t_plain = FakeTransport(), FakeTransport()
    engine.add_session(srtp, t_srtp)
    engine.add_session(plain, t_plain)
    engine.set_srtp(srtp, SrtpContext(SUITE80, our_key, os.urandom(30)))
    srtp.play(ToneSource([1000.0], None))
    plain.play(ToneSource([1000.0], None))
    now = 10.0
    for _ in range(5):
        engine.tick(now)
        now += TICK
    assert srtp.send_dtmf("7")
    for _ in range(15):
        engine.tick(now)
        now += TICK
    rx = phone_rx(SUITE80, our_key)
    decrypted = [rx.unprotect(p) for p in t_srtp.sent]
    assert len(decrypted) >= 20  # a packet per tick, the DTMF end packets three times
    assert all(len(p) == len(d) + 10 for p, d in zip(t_srtp.sent, decrypted, strict=True))
    pts = [parse_rtp(d).payload_type for d in decrypted]  # type: ignore[union-attr]
    assert pts[:5] == [0] * 5 and 101 in pts
    tone = b"".join(parse_rtp(d).payload for d in decrypted[:5])  # type: ignore[union-attr]
    pcm = g711.decode("PCMU", np.frombuffer(tone, np.uint8))
    assert np.abs(pcm).max() > 1000
    # the plain session next to it is unchanged: 172-byte plain RTP
    assert t_plain.sent and all(len(p) == 172 for p in t_plain.sent)


def _free_even_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1]) & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 2))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


async def test_received_packets_are_authenticated_before_the_jitter_buffer() -> None:
    """Real sockets: an SRTP session hears only authentic packets, also once latched (where
    plain 20 ms audio would take the batched path); a plain session beside it is batched."""
    base = _free_even_port()
    engine = MediaEngine("127.0.0.1", base, base + 3, rtp_timeout=0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    here = client.getsockname()
    phone_key = os.urandom(30)
    ptx, _ = phone(SUITE80, phone_key)
    try:
        s = await engine.open_session()
        p = await engine.open_session()
        s.update("PCMU", 0, 101, here[0], here[1], "sendrecv")
        p.update("PCMU", 0, 101, here[0], here[1], "sendrecv")
        ctx = SrtpContext(SUITE80, new_key(), phone_key)
        engine.set_srtp(s, ctx)
        loud = g711.encode("PCMU", np.full(160, 8000, np.int16)).tobytes()

        def rtp(seq: int) -> bytes:
            return build_rtp_header(0, False, seq, 160 * seq, 0x5151) + loud

        now = 50.0
        # a forged plain packet first: not latched on, not decoded
        client.sendto(rtp(1), ("127.0.0.1", s.local_port))
        client.sendto(rtp(1), ("127.0.0.1", p.local_port))
        engine.tick(now)
        assert s.jitter.stats.received == 0 and ctx.auth_failures == 1
        for seq in range(2, 6):  # authentic: latches, decoded
            client.sendto(ptx.protect(rtp(seq)), ("127.0.0.1", s.local_port))
            client.sendto(rtp(seq), ("127.0.0.1", p.local_port))
            now += TICK
            engine.tick(now)
        assert s.jitter.stats.received == 4 and ctx.unprotected == 4
        assert p.jitter.stats.received == 5
        # latched now: a plain 172-byte packet (the batched shape) is still refused
        client.sendto(rtp(6), ("127.0.0.1", s.local_port))
        now += TICK
        engine.tick(now)
        assert s.jitter.stats.received == 4 and ctx.auth_failures == 2
        engine.close_session(s)
        assert engine._srtp_count == 0
    finally:
        client.close()
        await engine.stop()


# ---- re-INVITEs of an SRTP call -------------------------------------------------------------


class Sig:
    """The signalling side of a `Call`, recording re-INVITE answers."""

    def __init__(self) -> None:
        self.reinvites: list[tuple[int, bytes | None]] = []

    def sip_ring(self, leg: object) -> None: ...
    def sip_answer(self, leg: object, sdp: bytes) -> bool:
        return True
    def sip_reject(self, leg: object, status: int, reason: str | None,
                   headers: list[tuple[str, str]]) -> bool:
        return True
    def sip_bye(self, leg: object, headers: list[tuple[str, str]]) -> bool:
        return True
    def sip_respond_reinvite(self, leg: object, tx: object, status: int,
                             sdp: bytes | None) -> None:
        self.reinvites.append((status, sdp))
    def call_finished(self, call: object) -> None: ...


def _answer_key(sdp: bytes | None) -> bytes | None:
    assert sdp is not None
    (m,) = parse_sdp(sdp).media
    lines = [v for n, v in m.attributes if n == "crypto"]
    if not lines:
        return None
    c = parse_crypto(lines[0] or "")
    assert c is not None
    return c.key


def test_reinvite_keeps_the_key_rekeys_on_a_new_offer_and_never_changes_security() -> None:
    from confroom.app.control import CallInfo
    from confroom.call import Call
    from confroom.config import AppConfig

    phone_key = os.urandom(30)
    savp = offer(f"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 {SUITE80} inline:{b64(phone_key)}\r\n")
    neg = negotiate(parse_sdp(savp))
    media = MediaSession(30000)
    ours = new_key()
    media.srtp = SrtpContext(SUITE80, ours, phone_key)
    sig = Sig()
    info = CallInfo("sid", "cid", "a", "b", "", "10.0.0.5", 5060, "10.0.0.1:5060", "acc", "app")
    call = Call(info=info, app=AppConfig(), leg=None, media=media,  # type: ignore[arg-type]
                negotiated=neg, signalling=sig, local_media_host="10.0.0.1", srtp_key=ours)
    first = media.srtp
    call.on_reinvite(None, savp)  # type: ignore[arg-type]
    assert sig.reinvites[-1][0] == 200 and _answer_key(sig.reinvites[-1][1]) == ours
    assert media.srtp is first
    rekey = offer(f"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 {SUITE80} inline:{b64(new_key())}\r\n")
    call.on_reinvite(None, rekey)  # type: ignore[arg-type]
    status, sdp = sig.reinvites[-1]
    assert status == 200 and _answer_key(sdp) not in (None, ours) and media.srtp is not first
    call.on_reinvite(None, offer("m=audio 4000 RTP/AVP 0\r\n"))  # type: ignore[arg-type]
    assert sig.reinvites[-1] == (488, None)  # no downgrade to plain RTP
    assert media.srtp is not None

    plain_media = MediaSession(30002)
    plain_call = Call(info=info, app=AppConfig(), leg=None,  # type: ignore[arg-type]
                      media=plain_media, negotiated=negotiate(parse_sdp(offer(
                          "m=audio 4000 RTP/AVP 0\r\n"))), signalling=sig,
                      local_media_host="10.0.0.1")
    plain_call.on_reinvite(None, savp)  # type: ignore[arg-type]
    assert sig.reinvites[-1] == (488, None) and plain_media.srtp is None
