"""Batched 8 kHz <-> 16 kHz resampling of 20 ms frames (polyphase FIR, numpy).

Owns the one low-pass filter (windowed sinc, Kaiser, `TAPS` taps at 16 kHz, cut-off 3.7 kHz,
stop band from 4.3 kHz) and the two batched operations a wideband conference needs:
`up2` (8 -> 16 kHz: a narrowband member's voice into a 16 kHz mix, a prompt to a wideband
member) and `down2` (16 -> 8 kHz: a 16 kHz mix to a narrowband member, a wideband member's
voice to the 8 kHz consumers: talk detection, speech recognition, narrowband recording).

Both work on many rows at once, each row with its own history (the last samples of the
row's previous input, passed in and returned), so consecutive frames join without seams:
one sliding-window view times the filter bank, one matmul per call. Zero history means
the stream starts from silence.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["DOWN_HISTORY", "TAPS", "UP_HISTORY", "down2", "up2"]

TAPS: Final = 48  # filter length at 16 kHz (24 per phase when upsampling)
UP_HISTORY: Final = TAPS // 2 - 1  # 8 kHz samples of history `up2` needs per row
DOWN_HISTORY: Final = TAPS - 1  # 16 kHz samples of history `down2` needs per row


def _design() -> npt.NDArray[np.float64]:
    n = np.arange(TAPS) - (TAPS - 1) / 2
    cutoff = 4000.0 / 16000.0  # half-band: the 6 dB point at 4 kHz
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(TAPS, 7.0)
    result: npt.NDArray[np.float64] = h / h.sum()
    return result


_H: Final = _design()
# up2: output 2m+p = 2 * sum_j h[2j+p] x[m-j]; window index i = T-1-j
_UP_BANK: Final = np.stack(
    [2 * _H[p::2][::-1] for p in range(2)], axis=1
).astype(np.float32)  # (TAPS // 2, 2)
_DOWN_BANK: Final = _H[::-1].astype(np.float32)  # (TAPS,)


def _to_int16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    np.rint(x, out=x)
    np.clip(x, -32768, 32767, out=x)
    return x.astype(np.int16)


def up2(
    frames: npt.NDArray[np.int16], history: npt.NDArray[np.int16]
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """(n, k) int16 at 8 kHz -> ((n, 2k) int16 at 16 kHz, the new (n, UP_HISTORY) history)."""
    x = np.concatenate((history, frames), axis=1).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(x, TAPS // 2, axis=1)
    y = (windows @ _UP_BANK).reshape(frames.shape[0], -1)
    return _to_int16(y), np.ascontiguousarray(frames[:, frames.shape[1] - UP_HISTORY :])


def down2(
    frames: npt.NDArray[np.int16], history: npt.NDArray[np.int16]
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """(n, 2k) int16 at 16 kHz -> ((n, k) int16 at 8 kHz, the new (n, DOWN_HISTORY) history)."""
    x = np.concatenate((history, frames), axis=1).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(x, TAPS, axis=1)[:, ::2]
    y = windows @ _DOWN_BANK
    return _to_int16(y), np.ascontiguousarray(frames[:, frames.shape[1] - DOWN_HISTORY :])
