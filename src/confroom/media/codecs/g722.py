"""G.722 (64 kb/s, 16 kHz audio, RTP clock 8000) per stream, via the `G722` package (libg722).

One encoder or decoder object holds one stream's ADPCM state. 20 ms = 320 samples = 160
bytes. No concealment of its own: a lost frame decodes as None and the engine's pitch
concealment (media/frames.py) fills it."""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from G722 import G722

__all__ = ["FRAME_BYTES", "FRAME_SAMPLES", "G722Decoder", "G722Encoder"]

FRAME_SAMPLES: Final = 320
FRAME_BYTES: Final = 160
_RATE: Final = 16000
_BITRATE: Final = 64000


class G722Encoder:
    def __init__(self) -> None:
        self._state = G722(_RATE, _BITRATE)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if pcm.shape != (FRAME_SAMPLES,):
            raise ValueError(f"G.722 frames are {FRAME_SAMPLES} samples, got {pcm.shape}")
        out: bytes = self._state.encode(np.ascontiguousarray(pcm, dtype=np.int16))
        return out


class G722Decoder:
    def __init__(self) -> None:
        self._state = G722(_RATE, _BITRATE)

    def decode(
        self, payload: bytes | None, next_payload: bytes | None = None
    ) -> npt.NDArray[np.int16] | None:
        if payload is None:
            return None
        pcm = np.asarray(self._state.decode(payload), dtype=np.int16)
        if pcm.shape[0] != FRAME_SAMPLES:  # another packetisation than 20 ms: pad or cut
            fixed = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            n = min(FRAME_SAMPLES, pcm.shape[0])
            fixed[:n] = pcm[:n]
            return fixed
        return pcm
