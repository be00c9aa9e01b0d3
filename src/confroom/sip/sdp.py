"""SDP (RFC 4566) parsing/building and RFC 3264 offer/answer for audio.

Owns `SessionDescription`/`MediaDescription`, `parse_sdp`, `negotiate` (pick codec,
telephone-event, remote address/direction/ptime, and for an RTP/SAVP stream its SDES
`a=crypto` line, RFC 4568, from an offer), `build_answer` and `build_offer`. Sans-IO.

Codecs (media/codecs): `opus/48000/2` (RFC 7587; we send mono, answer with
`useinbandfec=1`), `G722/8000` (RFC 3551: 8000 is the RTP clock, the audio is 16 kHz), PCMU,
PCMA; `telephone-event` is answered at the chosen codec's RTP clock (8000 or 48000) when the
offer has it there. The caller's order wins unless `prefer_ours` (then `supported`'s order).

SDES: only `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32` with one inline key, no
MKI and no session parameters are usable; the first usable line of the offer is answered,
with its tag and suite and our own key. `a=crypto` on a plain RTP/AVP stream is ignored (RFC
4568 defines it for SAVP only).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field

from confroom.media.codecs import CODECS, CodecInfo, codec_info

__all__ = [
    "DEFAULT_CODECS",
    "SRTP_KEY_LEN",
    "SRTP_SUITES",
    "Crypto",
    "MediaDescription",
    "Negotiated",
    "NoCommonCodec",
    "SdpError",
    "SessionDescription",
    "SrtpRequired",
    "answer_direction",
    "build_answer",
    "build_offer",
    "negotiate",
    "parse_crypto",
    "parse_sdp",
]

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_STATIC_PT = {0: "PCMU", 8: "PCMA", 9: "G722"}
DEFAULT_CODECS = ("OPUS", "G722", "PCMU", "PCMA")
OPUS_PT = 111  # our dynamic payload types in offers
DTMF_PT_48K = 110
_AVP_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF"})
_SAVP_PROTOS = frozenset({"RTP/SAVP", "RTP/SAVPF"})
SRTP_SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
SRTP_KEY_LEN = 30  # 128-bit master key + 112-bit master salt, both suites


class SdpError(ValueError):
    """Malformed SDP (the message says what)."""


class NoCommonCodec(Exception):
    """No usable audio stream / codec in the offer (answer 488)."""


class SrtpRequired(NoCommonCodec):
    """SRTP is required but the offer has no RTP/SAVP stream with a usable a=crypto."""


@dataclass(frozen=True)
class Crypto:
    """One usable SDES `a=crypto` line: tag, suite, master key and salt (30 bytes)."""

    tag: int
    suite: str
    key: bytes = field(repr=False)

    def attribute(self) -> str:
        """The value of the `a=crypto` line."""
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def parse_crypto(value: str) -> Crypto | None:
    """A usable `a=crypto` value (see the module docstring), else None."""
    parts = value.split()
    if len(parts) != 3:
        return None  # session parameters (UNENCRYPTED_SRTP, KDR, ...) are not supported
    tag_text, suite, key_params = parts
    if not tag_text.isdigit() or len(tag_text) > 9 or suite.upper() not in SRTP_SUITES:
        return None
    if ";" in key_params or not key_params.lower().startswith("inline:"):
        return None  # more than one key (MKI) or an unknown key method
    key_text, *extra = key_params[7:].split("|")
    if any(x.upper().startswith("MKI") or ":" in x for x in extra) or len(extra) > 1:
        return None  # MKI is not supported; a lifetime alone is accepted (we never rekey)
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(key) != SRTP_KEY_LEN:
        return None
    return Crypto(int(tag_text), suite.upper(), key)


def _direction_of(attributes: list[tuple[str, str | None]]) -> str | None:
    found: str | None = None
    for name, _ in attributes:
        if name in _DIRECTIONS:
            found = name
    return found


def _attr_value(attributes: list[tuple[str, str | None]], name: str) -> str | None:
    for n, v in attributes:
        if n == name:
            return v
    return None


def _parse_ptime(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        ptime = int(float(value.strip()))
    except ValueError:
        return None
    return ptime if ptime > 0 else None


@dataclass
class MediaDescription:
    """One m= section."""

    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def rtpmap(self) -> dict[int, tuple[str, int, int]]:
        """pt -> (encoding name upper-cased, clock rate, channels); malformed lines skipped."""
        out: dict[int, tuple[str, int, int]] = {}
        for name, value in self.attributes:
            if name != "rtpmap" or not value:
                continue
            pt_text, _, enc = value.strip().partition(" ")
            parts = enc.strip().split("/")
            try:
                pt = int(pt_text)
                rate = int(parts[1])
                channels = int(parts[2]) if len(parts) > 2 and parts[2] else 1
            except (ValueError, IndexError):
                continue
            out[pt] = (parts[0].upper(), rate, channels)
        return out

    def fmtp(self) -> dict[int, str]:
        """pt -> format parameters string."""
        out: dict[int, str] = {}
        for name, value in self.attributes:
            if name != "fmtp" or not value:
                continue
            pt_text, _, params = value.strip().partition(" ")
            try:
                out[int(pt_text)] = params.strip()
            except ValueError:
                continue
        return out

    @property
    def direction(self) -> str | None:
        return _direction_of(self.attributes)

    @property
    def ptime(self) -> int | None:
        return _parse_ptime(_attr_value(self.attributes, "ptime"))


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _attr_line(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


@dataclass
class SessionDescription:
    """A parsed or to-be-built SDP body (only the fields confroom uses)."""

    origin: str
    session_name: str = "-"
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        lines = ["v=0", f"o={self.origin}", f"s={self.session_name or '-'}"]
        if self.connection is not None:
            lines.append(f"c=IN {_addr_type(self.connection)} {self.connection}")
        lines.append("t=0 0")
        lines.extend(_attr_line(n, v) for n, v in self.attributes)
        for m in self.media:
            lines.append(f"m={m.media} {m.port} {m.proto} {' '.join(m.formats)}".rstrip())
            if m.connection is not None:
                lines.append(f"c=IN {_addr_type(m.connection)} {m.connection}")
            lines.extend(_attr_line(n, v) for n, v in m.attributes)
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN":
        raise SdpError(f"bad c= line: {value!r}")
    address = parts[2].split("/", 1)[0]
    if not address:
        raise SdpError(f"bad c= line: {value!r}")
    return address


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"bad m= line: {value!r}")
    port_text = parts[1].split("/", 1)[0]
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise SdpError(f"bad port in m= line: {value!r}")
    return MediaDescription(parts[0], int(port_text), parts[2], parts[3:])


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body; tolerant of LF line endings and unknown lines. Raises SdpError."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    origin: str | None = None
    session_name = "-"
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = []
    media: list[MediaDescription] = []
    seen_version = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if not seen_version:
            if kind != "v" or value.strip() != "0":
                raise SdpError("SDP must start with v=0")
            seen_version = True
            continue
        current = media[-1] if media else None
        if kind == "m":
            media.append(_parse_media(value))
        elif kind == "c":
            address = _parse_connection(value)
            if current is None:
                connection = address
            else:
                current.connection = address
        elif kind == "a":
            name, colon, attr_value = value.partition(":")
            attr = (name.strip(), attr_value if colon else None)
            (attributes if current is None else current.attributes).append(attr)
        elif kind == "o" and current is None:
            origin = value
        elif kind == "s" and current is None:
            session_name = value
        # other line types (i, u, e, p, b, t, r, z, k, unknown) are ignored
    if not seen_version:
        raise SdpError("empty SDP")
    if origin is None:
        raise SdpError("SDP has no o= line")
    return SessionDescription(origin, session_name, connection, attributes, media)


@dataclass(frozen=True)
class Negotiated:
    """The outcome of answering an audio offer."""

    codec: str
    payload_type: int
    dtmf_payload_type: int | None
    remote_host: str
    remote_port: int
    remote_direction: str
    ptime: int
    crypto: Crypto | None = None  # the offer's a=crypto we answer (SRTP), None: plain RTP

    @property
    def info(self) -> CodecInfo:
        return codec_info(self.codec)


def _stream_crypto(m: MediaDescription) -> Crypto | None:
    for name, value in m.attributes:
        if name == "crypto" and value:
            crypto = parse_crypto(value)
            if crypto is not None:
                return crypto
    return None


def _codec_of(name: str, rate: int, channels: int) -> str | None:
    """Our codec name for an rtpmap entry, if we support that exact format."""
    key = name.upper()
    info = CODECS.get(key)
    if info is None or rate != info.rtp_clock:
        return None
    if key == "OPUS":
        return key if channels in (1, 2) else None
    return key if channels == 1 else None


def negotiate(
    offer: SessionDescription,
    supported: Sequence[str] = DEFAULT_CODECS,
    require_srtp: bool = False,
    prefer_ours: bool = False,
) -> Negotiated:
    """Pick a codec of `supported` on the first usable audio stream: RTP/AVP, or RTP/SAVP with
    a usable a=crypto line (only the latter when `require_srtp`). The first offered codec we
    support wins; with `prefer_ours`, the first of `supported` that is offered. The
    telephone-event payload type is the one offered at the chosen codec's RTP clock.

    Raises NoCommonCodec when there is no such stream or codec (SrtpRequired when SRTP is
    required and missing), SdpError when the chosen stream has no connection address."""
    wanted = [s.upper() for s in supported]
    audio: MediaDescription | None = None
    crypto: Crypto | None = None
    saw_savp = False
    for m in offer.media:
        if m.media.lower() != "audio" or m.port == 0:
            continue
        proto = m.proto.upper()
        if proto in _SAVP_PROTOS:
            saw_savp = True
            crypto = _stream_crypto(m)
            if crypto is not None:
                audio = m
                break
        elif proto in _AVP_PROTOS and not require_srtp:
            audio = m
            break
    if audio is None:
        if require_srtp:
            raise SrtpRequired("SRTP is required: no RTP/SAVP audio stream with a usable "
                               "a=crypto (AES_CM_128_HMAC_SHA1_80/_32) in offer")
        if saw_savp:
            raise NoCommonCodec("no usable a=crypto (AES_CM_128_HMAC_SHA1_80/_32, one "
                                "inline key, no MKI) on the RTP/SAVP audio stream")
        raise NoCommonCodec("no usable RTP/AVP audio stream in offer")
    rtpmap = audio.rtpmap()
    offered: dict[str, int] = {}  # codec -> payload type, in offer order
    dtmf_at: dict[int, int] = {}  # RTP clock -> telephone-event payload type
    described: list[str] = []
    for fmt in audio.formats:
        try:
            pt = int(fmt)
        except ValueError:
            continue
        mapped = rtpmap.get(pt)
        if mapped is not None:
            name, rate, channels = mapped
        elif pt in _STATIC_PT:
            name, rate, channels = _STATIC_PT[pt], 8000, 1
        else:
            described.append(f"{pt}(no rtpmap)")
            continue
        described.append(f"{name}/{rate}")
        if name == "TELEPHONE-EVENT":
            dtmf_at.setdefault(rate, pt)
            continue
        codec_name = _codec_of(name, rate, channels)
        if codec_name is not None and codec_name not in offered:
            offered[codec_name] = pt
    usable = [c for c in offered if c in wanted]
    if prefer_ours:
        usable.sort(key=wanted.index)
    if not usable:
        raise NoCommonCodec(
            f"no common audio codec: offered {' '.join(described) or 'nothing'}, "
            f"we accept {' '.join(wanted)}")
    chosen = usable[0]
    host = audio.connection or offer.connection
    if host is None:
        raise SdpError("no connection address for audio stream")
    direction = audio.direction or _direction_of(offer.attributes) or "sendrecv"
    if host in ("0.0.0.0", "::"):  # RFC 2543 style hold: the remote will not receive
        direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)
    ptime = audio.ptime or _parse_ptime(_attr_value(offer.attributes, "ptime")) or 20
    dtmf = dtmf_at.get(codec_info(chosen).rtp_clock)
    return Negotiated(chosen, offered[chosen], dtmf, host, audio.port, direction, ptime, crypto)


def _rtpmap_value(pt: int, info: CodecInfo) -> str:
    channels = f"/{info.channels}" if info.channels != 1 else ""
    return f"{pt} {info.sdp_name}/{info.rtp_clock}{channels}"


def _codec_attributes(pt: int, info: CodecInfo) -> list[tuple[str, str | None]]:
    attributes: list[tuple[str, str | None]] = [("rtpmap", _rtpmap_value(pt, info))]
    if info.name == "OPUS":
        # mono, FEC wanted, and we render/capture 16 kHz (the conference's band)
        attributes.append(("fmtp", f"{pt} useinbandfec=1; stereo=0; sprop-stereo=0; "
                                   "maxplaybackrate=16000; sprop-maxcapturerate=16000"))
    return attributes


def answer_direction(remote_direction: str) -> str:
    """The RFC 3264 6.1 direction to answer with for an offered direction."""
    return {
        "sendrecv": "sendrecv",
        "sendonly": "recvonly",
        "recvonly": "sendonly",
        "inactive": "inactive",
    }.get(remote_direction, "sendrecv")


def build_answer(
    neg: Negotiated,
    *,
    local_host: str,
    local_port: int,
    session_id: int,
    version: int,
    direction: str | None = None,
    srtp_key: bytes | None = None,
) -> bytes:
    """A complete SDP answer for `neg` (our media at local_host:local_port); an SRTP answer
    (RTP/SAVP, the offer's crypto tag and suite with `srtp_key`) when `neg.crypto` is set."""
    formats = [str(neg.payload_type)]
    info = neg.info
    attributes = _codec_attributes(neg.payload_type, info)
    if neg.dtmf_payload_type is not None:
        formats.append(str(neg.dtmf_payload_type))
        attributes.append(
            ("rtpmap", f"{neg.dtmf_payload_type} telephone-event/{info.rtp_clock}"))
        attributes.append(("fmtp", f"{neg.dtmf_payload_type} 0-16"))
    attributes.append(("ptime", "20"))
    attributes.append((direction or answer_direction(neg.remote_direction), None))
    proto = "RTP/AVP"
    if neg.crypto is not None:
        if srtp_key is None or len(srtp_key) != SRTP_KEY_LEN:
            raise ValueError("an SRTP answer needs our 30-byte key")
        proto = "RTP/SAVP"
        ours = Crypto(neg.crypto.tag, neg.crypto.suite, srtp_key)
        attributes.append(("crypto", ours.attribute()))
    sdp = SessionDescription(
        origin=f"confroom {session_id} {version} IN {_addr_type(local_host)} {local_host}",
        session_name="confroom",
        connection=local_host,
        media=[MediaDescription("audio", local_port, proto, formats, None, attributes)],
    )
    return sdp.to_bytes()


OFFER_DTMF_PT = 101


def build_offer(
    *, local_host: str, local_port: int, session_id: int, version: int = 1,
    codecs: Sequence[str] = DEFAULT_CODECS,
) -> bytes:
    """Our SDP offer for an outbound call: `codecs` in that order (Opus as pt 111, the others
    by their static numbers), telephone-event/8000 (pt 101) and, with Opus,
    telephone-event/48000 (pt 110), 20 ms, sendrecv, plain RTP/AVP."""
    formats: list[str] = []
    attributes: list[tuple[str, str | None]] = []
    clocks: set[int] = set()
    for name in codecs:
        info = codec_info(name)
        pt = OPUS_PT if info.static_pt is None else info.static_pt
        formats.append(str(pt))
        attributes.extend(_codec_attributes(pt, info))
        clocks.add(info.rtp_clock)
    for rate, pt in ((8000, OFFER_DTMF_PT), (48000, DTMF_PT_48K)):
        if rate in clocks:
            formats.append(str(pt))
            attributes.append(("rtpmap", f"{pt} telephone-event/{rate}"))
            attributes.append(("fmtp", f"{pt} 0-16"))
    attributes.append(("ptime", "20"))
    attributes.append(("sendrecv", None))
    sdp = SessionDescription(
        origin=f"confroom {session_id} {version} IN {_addr_type(local_host)} {local_host}",
        session_name="confroom",
        connection=local_host,
        media=[MediaDescription("audio", local_port, "RTP/AVP", formats, None, attributes)],
    )
    return sdp.to_bytes()
