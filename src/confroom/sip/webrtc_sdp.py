"""The WebRTC parts of SDP (RFC 8839 ICE, RFC 8842 DTLS, RFC 5761 rtcp-mux), sans-IO.

Kept apart from `confroom.sip.sdp` (codecs and SDES): `split_webrtc(offer)` recognises an
offer whose first audio stream is `UDP/TLS/RTP/SAVPF` (a browser's), returns its ICE and DTLS
parameters, and the same offer with that stream presented as plain `RTP/AVPF` so the ordinary
codec negotiation applies unchanged (the media address of a WebRTC offer is meaningless to
us: media goes where ICE checks come from). `webrtc_answer()` turns the ordinary answer back
into a WebRTC one: the profile, `a=ice-lite`, our `a=ice-ufrag`/`a=ice-pwd`, our certificate
`a=fingerprint`, `a=setup:passive` (the browser is the DTLS client), `a=rtcp-mux`, the offer's
`a=mid` (and BUNDLE group), and one host candidate (our RTP address).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from confroom.sip.sdp import SdpError, SessionDescription

__all__ = ["DTLS_PROTO", "WebRtcOffer", "split_webrtc", "webrtc_answer"]

DTLS_PROTO = "UDP/TLS/RTP/SAVPF"
_PLAIN_PROTO = "RTP/AVPF"


@dataclass(frozen=True)
class WebRtcOffer:
    """The ICE/DTLS parameters of a browser's audio stream."""

    ufrag: str
    pwd: str
    fingerprint: str  # "sha-256 AB:CD:..."
    setup: str  # actpass | active (passive: it wants us to be the DTLS client, refused)
    mid: str | None
    bundle: bool  # the offer has a=group:BUNDLE with that mid


def _attr(attrs: list[tuple[str, str | None]], name: str) -> str | None:
    for n, v in attrs:
        if n.lower() == name:
            return v
    return None


def split_webrtc(offer: SessionDescription) -> tuple[SessionDescription, WebRtcOffer | None]:
    """(offer, None) for an ordinary offer; for a WebRTC one (its first usable audio stream
    is UDP/TLS/RTP/SAVPF) the offer with that stream as RTP/AVPF, and its parameters.
    SdpError when a WebRTC stream lacks ICE credentials or a fingerprint, or wants us to be
    the DTLS client."""
    for i, m in enumerate(offer.media):
        if m.media.lower() != "audio" or m.port == 0:
            continue
        if m.proto.upper() != DTLS_PROTO:
            return offer, None
        ufrag = _attr(m.attributes, "ice-ufrag") or _attr(offer.attributes, "ice-ufrag")
        pwd = _attr(m.attributes, "ice-pwd") or _attr(offer.attributes, "ice-pwd")
        fingerprint = (_attr(m.attributes, "fingerprint")
                       or _attr(offer.attributes, "fingerprint"))
        setup = (_attr(m.attributes, "setup") or _attr(offer.attributes, "setup")
                 or "actpass").lower()
        if not ufrag or not pwd:
            raise SdpError("WebRTC offer without a=ice-ufrag/a=ice-pwd")
        if not fingerprint:
            raise SdpError("WebRTC offer without a=fingerprint")
        if setup not in ("actpass", "active"):
            raise SdpError(f"WebRTC offer with a=setup:{setup} (we are the DTLS server only)")
        mid = _attr(m.attributes, "mid")
        group = _attr(offer.attributes, "group") or ""
        bundle = mid is not None and group.split()[:1] == ["BUNDLE"] and mid in group.split()
        # the address: a host candidate's, else c= (we send nowhere before ICE anyway), never
        # 0.0.0.0, which the ordinary negotiation would read as hold
        host = m.connection or offer.connection or ""
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
            for n, v in m.attributes:
                parts = (v or "").split()
                if n == "candidate" and len(parts) >= 8 and parts[2].lower() == "udp":
                    host = parts[4]
                    break
        plain = dataclasses.replace(m, proto=_PLAIN_PROTO, connection=host)
        media = [*offer.media[:i], plain, *offer.media[i + 1:]]
        return (dataclasses.replace(offer, media=media),
                WebRtcOffer(ufrag, pwd, fingerprint, setup, mid, bundle))
    return offer, None


def webrtc_answer(answer: bytes, offer: WebRtcOffer, *, ufrag: str, pwd: str,
                  fingerprint: str, host: str, port: int) -> bytes:
    """The ordinary SDP `answer` (one RTP/AVP or RTP/AVPF audio stream) made a WebRTC answer
    (see the module docstring)."""
    lines = answer.decode("utf-8").rstrip("\r\n").split("\r\n")
    out: list[str] = []
    for line in lines:
        if line.startswith("m=audio "):
            parts = line.split(" ")
            parts[2] = DTLS_PROTO
            line = " ".join(parts)
        out.append(line)
        if line.startswith("t="):
            out.append("a=ice-lite")
            if offer.bundle and offer.mid is not None:
                out.append(f"a=group:BUNDLE {offer.mid}")
    if offer.mid is not None:
        out.append(f"a=mid:{offer.mid}")
    out += [
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:{fingerprint}",
        "a=setup:passive",
        "a=rtcp-mux",
        f"a=candidate:1 1 udp 2130706431 {host} {port} typ host",
        "a=end-of-candidates",
    ]
    return ("\r\n".join(out) + "\r\n").encode("utf-8")
