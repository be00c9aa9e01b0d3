"""Test audio for the load generator: G.711 µ-law, per-participant tones, marker bursts,
and the analysis side (tone levels by FFT, marker detection by Goertzel).

Own µ-law codec (ITU-T G.711, the classic bias-0x84 algorithm) so that the checks do not
depend on the server's tables.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "CYCLE",
    "MARKER_HZ",
    "marker_energy",
    "marker_frames",
    "marker_pcm",
    "tone_cycle",
    "tone_levels",
    "tone_pcm",
    "ulaw_decode",
    "ulaw_encode",
]

RATE = 8000
FRAME = 160
CYCLE = 50  # frames per tone cycle: tones are whole Hz, so 1 s repeats exactly
MARKER_HZ = 3600.0
MARKER_AMP = 8000.0
MARKER_FRAMES = 2

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]


def ulaw_encode(pcm: npt.NDArray[np.integer]) -> U8:
    x = np.clip(pcm.astype(np.int32), -32635, 32635)
    sign = np.where(x < 0, 0x80, 0).astype(np.int32)
    mag = np.abs(x) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    exp = np.clip(exp, 0, 7)
    mant = (mag >> (exp + 3)) & 0x0F
    out: U8 = (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8)
    return out


def _decode_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exp = (u >> 4) & 0x07
    mant = u & 0x0F
    mag = (((mant << 3) + 0x84) << exp) - 0x84
    return np.where(sign != 0, -mag, mag).astype(np.int16)


ULAW_TABLE = _decode_table()


def ulaw_decode(codes: U8) -> npt.NDArray[np.int16]:
    out: npt.NDArray[np.int16] = ULAW_TABLE[codes]
    return out


def tone_pcm(freq: float, amp: float, phase: float) -> F64:
    """(CYCLE, 160) samples of a continuous tone of a whole-Hz frequency (one 1 s cycle)."""
    t = np.arange(CYCLE * FRAME) / RATE
    pcm: F64 = np.round(amp * np.sin(2 * np.pi * freq * t + phase)).reshape(CYCLE, FRAME)
    return pcm


def tone_cycle(freq: float, amp: float, phase: float) -> U8:
    """(CYCLE, 160) µ-law frames of a continuous tone of a whole-Hz frequency."""
    return ulaw_encode(tone_pcm(freq, amp, phase))


def marker_pcm() -> F64:
    """(MARKER_FRAMES, 160) samples of the marker burst (added on top of the tone, so the
    tone itself is never interrupted: an interruption would put sidebands at ±1 Hz steps)."""
    t = np.arange(MARKER_FRAMES * FRAME) / RATE
    pcm: F64 = np.round(MARKER_AMP * np.sin(2 * np.pi * MARKER_HZ * t)).reshape(
        MARKER_FRAMES, FRAME
    )
    return pcm


def marker_frames() -> U8:
    """(MARKER_FRAMES, 160) µ-law frames of the marker burst alone."""
    return ulaw_encode(marker_pcm())


_WIN = np.hanning(FRAME)
_T = np.arange(FRAME) / RATE
_COS = _WIN * np.cos(2 * np.pi * MARKER_HZ * _T)
_SIN = _WIN * np.sin(2 * np.pi * MARKER_HZ * _T)


def marker_energy(pcm_frames: npt.NDArray[np.int16]) -> F64:
    """Per-frame energy at the marker frequency (Hann-windowed Goertzel), (n,)."""
    x = pcm_frames.astype(np.float64)
    e: F64 = (x @ _COS) ** 2 + (x @ _SIN) ** 2
    return e


MARKER_REF = float(marker_energy(ulaw_decode(marker_frames()))[0])


def tone_levels(pcm: npt.NDArray[np.int16], freqs: list[float]) -> tuple[F64, float]:
    """Amplitude spectrum peaks at `freqs` (±0.6 Hz) and the median level of 300-3400 Hz."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spec = np.abs(np.fft.rfft(x))
    res = RATE / len(pcm)
    levels = []
    for f in freqs:
        lo = max(0, int((f - 0.6) / res))
        hi = int((f + 0.6) / res) + 2
        levels.append(float(spec[lo:hi].max()))
    band = spec[int(300 / res) : int(3400 / res)]
    return np.array(levels), float(np.median(band))
