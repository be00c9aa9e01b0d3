"""G.711 (PCMU/PCMA) per stream, for the one-interface users (tests, tools, bridges).

The engine does not use these: it decodes and encodes every G.711 stream of a tick with one
table lookup (media/g711.py, whose tables these classes share). G.711 has no state and no
concealment of its own (the engine's pitch concealment, media/frames.py, covers losses)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from confroom.media import g711

__all__ = ["G711Decoder", "G711Encoder"]


class G711Encoder:
    def __init__(self, codec: str) -> None:
        g711.silence_byte(codec)  # validates the name
        self.codec = codec

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        return g711.encode(self.codec, pcm).tobytes()


class G711Decoder:
    def __init__(self, codec: str) -> None:
        g711.silence_byte(codec)
        self.codec = codec

    def decode(
        self, payload: bytes | None, next_payload: bytes | None = None
    ) -> npt.NDArray[np.int16] | None:
        if payload is None:
            return None
        return g711.decode(self.codec, np.frombuffer(payload, dtype=np.uint8))
