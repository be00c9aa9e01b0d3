"""Audio codecs behind one interface: what each codec is, and per-stream encoders/decoders.

Owns the codec registry (`CODECS`: SDP name, RTP clock rate, the audio rate the engine uses
for it, payload bytes per 20 ms where fixed) and `make_encoder` / `make_decoder`, which give a
stream's own codec state. Every encoder takes one 20 ms frame of int16 PCM at the codec's
`audio_rate` and returns the RTP payload; every decoder turns one payload into one 20 ms frame
(`None` payload: the frame was lost, conceal it if the codec can). G.711 is also batched
(media/g711.py: one table lookup for any number of frames; the engine uses that directly).

Audio rates: G.711 is 8 kHz; G.722 and Opus run at 16 kHz, the engine's wideband rate (Opus
carries 48 kHz RTP time but its encoder and decoder work at 16 kHz here, which is all a
16 kHz conference mix holds; see media/codecs/opus.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "CODECS",
    "NARROWBAND_RATE",
    "WIDEBAND_RATE",
    "CodecInfo",
    "CodecPolicy",
    "Decoder",
    "Encoder",
    "OpusConfig",
    "codec_info",
    "make_decoder",
    "make_encoder",
]

NARROWBAND_RATE: Final = 8000
WIDEBAND_RATE: Final = 16000

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """What the SDP and the RTP stream of a codec look like."""

    name: str  # as the engine names it (upper case): PCMU, PCMA, G722, OPUS
    sdp_name: str  # encoding name in a=rtpmap
    rtp_clock: int  # RTP timestamp rate (and the rtpmap rate)
    channels: int  # rtpmap channels (opus/48000/2 by RFC 7587, though we send mono)
    audio_rate: int  # the PCM rate its encoder takes and its decoder gives
    static_pt: int | None  # RFC 3551 static payload type, if any

    @property
    def wideband(self) -> bool:
        return self.audio_rate > NARROWBAND_RATE

    @property
    def ts_per_frame(self) -> int:
        """RTP timestamp units per 20 ms."""
        return self.rtp_clock // 50

    @property
    def frame_samples(self) -> int:
        """PCM samples per 20 ms at `audio_rate`."""
        return self.audio_rate // 50


CODECS: Final[dict[str, CodecInfo]] = {
    "PCMU": CodecInfo("PCMU", "PCMU", 8000, 1, NARROWBAND_RATE, 0),
    "PCMA": CodecInfo("PCMA", "PCMA", 8000, 1, NARROWBAND_RATE, 8),
    # RFC 3551 4.5.2: G.722's RTP clock is 8000 although it samples at 16 kHz
    "G722": CodecInfo("G722", "G722", 8000, 1, WIDEBAND_RATE, 9),
    "OPUS": CodecInfo("OPUS", "opus", 48000, 2, WIDEBAND_RATE, None),
}


def codec_info(name: str) -> CodecInfo:
    try:
        return CODECS[name.upper()]
    except KeyError:
        raise ValueError(
            f"unsupported codec {name!r} (supported: {', '.join(CODECS)})"
        ) from None


@dataclass(frozen=True, slots=True)
class OpusConfig:
    """Encoder settings of every Opus stream (config `[media] opus_*`)."""

    bitrate: int = 32000  # bits/s
    complexity: int = 5  # 0..10: CPU against quality
    fec: bool = True  # in-band FEC (LBRR) in what we send
    packet_loss_perc: int = 5  # the loss the encoder's FEC plans for

    def validate(self) -> None:
        if not 6000 <= self.bitrate <= 510000:
            raise ValueError(f"opus bitrate {self.bitrate} out of 6000..510000")
        if not 0 <= self.complexity <= 10:
            raise ValueError(f"opus complexity {self.complexity} out of 0..10")
        if not 0 <= self.packet_loss_perc <= 100:
            raise ValueError(f"opus packet loss {self.packet_loss_perc} out of 0..100")


@dataclass(frozen=True, slots=True)
class CodecPolicy:
    """What a server negotiates: its codecs in its order, whose order wins, Opus settings."""

    codecs: tuple[str, ...] = ("OPUS", "G722", "PCMU", "PCMA")
    prefer_ours: bool = False  # config `codec_priority = "server"`
    opus: OpusConfig = OpusConfig()


class Encoder(Protocol):
    def encode(self, pcm: Pcm) -> bytes:
        """One 20 ms frame (`frame_samples` int16 at the codec's audio rate) -> payload."""
        ...


class Decoder(Protocol):
    def decode(self, payload: bytes | None, next_payload: bytes | None = None) -> Pcm | None:
        """One payload -> one 20 ms frame. `payload` None: the frame was lost; a codec with
        its own concealment returns it (using `next_payload`, the following packet, when it
        carries FEC), the others return None (the engine's concealment takes over)."""
        ...


def make_encoder(name: str, opus: OpusConfig | None = None) -> Encoder:
    info = codec_info(name)
    if info.name == "G722":
        from confroom.media.codecs.g722 import G722Encoder
        return G722Encoder()
    if info.name == "OPUS":
        from confroom.media.codecs.opus import OpusEncoder
        return OpusEncoder(opus or OpusConfig())
    from confroom.media.codecs.g711 import G711Encoder
    return G711Encoder(info.name)


def make_decoder(name: str) -> Decoder:
    info = codec_info(name)
    if info.name == "G722":
        from confroom.media.codecs.g722 import G722Decoder
        return G722Decoder()
    if info.name == "OPUS":
        from confroom.media.codecs.opus import OpusDecoder
        return OpusDecoder()
    from confroom.media.codecs.g711 import G711Decoder
    return G711Decoder(info.name)
