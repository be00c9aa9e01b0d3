"""Audio sources: pull-based producers of 20 ms frames of 8 kHz 16-bit mono PCM.

The media clock calls `read()` once per tick on whatever a call (or a conference) is playing.
A source never blocks and never does I/O in `read()`: anything slow (TTS, downloads, file
decoding) happens before the source is built.

Also owns the concrete sources (silence, tones, in-memory PCM, sequences) and `load_wav`, which
turns a WAV file (PCM 8/16/24/32-bit, float, μ-law, A-law; any rate; mono or stereo) into 8 kHz
mono int16 samples.
"""

from __future__ import annotations

import io
import math
import os
import struct
import wave
from collections.abc import Sequence
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from confroom.media import g711

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz

Frame = npt.NDArray[np.int16]  # shape (FRAME_SAMPLES,)


class Source(Protocol):
    def read(self) -> Frame | None:
        """The next 160 samples, or None once the source has finished."""
        ...


# --- concrete sources ------------------------------------------------------------------------
# (appended by the media module owner; the contract above is unchanged)
# Frames handed out by these sources may be shared or views into a larger array: consumers
# must treat them as read-only (copy before modifying).

_ZERO_FRAME: Final[Frame] = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_ZERO_FRAME.flags.writeable = False
_FRAME_INDEX: Final = np.arange(FRAME_SAMPLES, dtype=np.float64)


def _frame_count(duration_s: float) -> int:
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration must be a finite number >= 0, got {duration_s!r}")
    return math.ceil(round(duration_s * SAMPLE_RATE) / FRAME_SAMPLES)


class SilenceSource:
    """Zeros for `duration_s` seconds (rounded up to whole frames), or forever if None."""

    __slots__ = ("_remaining",)

    def __init__(self, duration_s: float | None = None) -> None:
        self._remaining: int | None = None if duration_s is None else _frame_count(duration_s)

    def read(self) -> Frame | None:
        remaining = self._remaining
        if remaining is not None:
            if remaining <= 0:
                return None
            self._remaining = remaining - 1
        return _ZERO_FRAME


class ToneSource:
    """A sum of sine waves, phase-continuous across frames.

    `amplitude` is the peak of each component as a fraction of full scale (the sum is clipped
    to int16). `duration_s` None plays forever; otherwise the last partial frame is zero-padded.
    """

    __slots__ = ("_amp", "_phase", "_remaining", "_step")

    def __init__(self, freqs: Sequence[float], duration_s: float | None, amplitude: float = 0.3):
        if not freqs:
            raise ValueError("ToneSource needs at least one frequency")
        if not 0.0 <= amplitude <= 1.0:
            raise ValueError(f"amplitude must be within 0..1, got {amplitude!r}")
        self._step = np.array([2.0 * math.pi * f / SAMPLE_RATE for f in freqs], dtype=np.float64)
        self._phase = np.zeros(len(freqs), dtype=np.float64)
        self._amp = amplitude * 32767.0
        self._remaining: int | None = (
            None if duration_s is None else round(duration_s * SAMPLE_RATE)
        )

    def read(self) -> Frame | None:
        remaining = self._remaining
        if remaining is not None:
            if remaining <= 0:
                return None
            self._remaining = remaining - FRAME_SAMPLES
        phases = self._phase[:, None] + self._step[:, None] * _FRAME_INDEX
        wave_ = np.sin(phases).sum(axis=0) * self._amp
        self._phase = (self._phase + self._step * FRAME_SAMPLES) % (2.0 * math.pi)
        if remaining is not None and remaining < FRAME_SAMPLES:
            wave_[remaining:] = 0.0
        out: Frame = np.clip(np.rint(wave_), -32768, 32767).astype(np.int16)
        return out


class PcmSource:
    """Plays an in-memory 8 kHz int16 buffer `loops` times (0 = forever), back to back.

    Loops are seamless (a frame may span the end and the start of the buffer); only the very last
    frame is zero-padded. Frames inside the buffer are read-only views, not copies.
    """

    __slots__ = ("_loops_left", "_pcm", "_pos")

    def __init__(self, pcm: npt.NDArray[np.int16], loops: int = 1) -> None:
        if loops < 0:
            raise ValueError(f"loops must be >= 0, got {loops}")
        data = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
        data.flags.writeable = False
        self._pcm = data
        self._pos = 0
        # None = forever. An empty buffer finishes at once, even when looping forever.
        self._loops_left: int | None = None if loops == 0 else loops
        if data.size == 0:
            self._loops_left = 0

    def read(self) -> Frame | None:
        pcm = self._pcm
        pos = self._pos
        size = pcm.size
        if self._loops_left == 0:
            return None
        end = pos + FRAME_SAMPLES
        if end < size:
            self._pos = end
            return pcm[pos:end]
        # The frame reaches the end of the buffer: finish this loop, maybe wrap into the next.
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._loops_left != 0:
            take = min(FRAME_SAMPLES - filled, size - pos)
            out[filled : filled + take] = pcm[pos : pos + take]
            filled += take
            pos += take
            if pos >= size:
                pos = 0
                if self._loops_left is not None:
                    self._loops_left -= 1
        self._pos = pos
        return out


class SequenceSource:
    """Plays several sources one after the other; finished when the last one is."""

    __slots__ = ("_index", "_sources")

    def __init__(self, sources: Sequence[Source]) -> None:
        self._sources = list(sources)
        self._index = 0

    def read(self) -> Frame | None:
        sources = self._sources
        while self._index < len(sources):
            frame = sources[self._index].read()
            if frame is not None:
                return frame
            self._index += 1
        return None


# --- WAV loading -----------------------------------------------------------------------------


class AudioFileError(ValueError):
    """A file that cannot be read or is not a supported WAV; the message names the file."""


_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_IEEE_FLOAT: Final = 0x0003
_WAVE_FORMAT_ALAW: Final = 0x0006
_WAVE_FORMAT_MULAW: Final = 0x0007
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_FMT: Final = struct.Struct("<HHIIHH")
_CHUNK: Final = struct.Struct("<4sI")
_Samples = npt.NDArray[np.float64] | npt.NDArray[np.int16]
_LOWPASS_CUTOFF_HZ: Final = 3700.0
_LOWPASS_TRANSITION_HZ: Final = 600.0


def load_wav(path: str | os.PathLike[str]) -> npt.NDArray[np.int16]:
    """Read a WAV file as 8 kHz mono int16 (downmixed and resampled as needed)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise AudioFileError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    try:
        samples, channels, rate = _decode_with_wave(raw)
    except (wave.Error, EOFError):
        samples, channels, rate = _decode_riff(raw, name)
    except (struct.error, ValueError) as exc:  # malformed headers that confuse `wave`
        raise AudioFileError(f"{name}: malformed WAV file: {exc}") from exc
    if channels < 1 or rate < 1:
        raise AudioFileError(f"{name}: invalid WAV header ({channels} channels, {rate} Hz)")
    return _to_8k_mono(samples, channels, rate)


def _decode_with_wave(raw: bytes) -> tuple[_Samples, int, int]:
    with wave.open(io.BytesIO(raw), "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        data = w.readframes(w.getnframes())
    return _pcm_samples(data, width, "", channels), channels, rate


def _decode_riff(raw: bytes, name: str) -> tuple[_Samples, int, int]:
    """Minimal RIFF/WAVE reader for what `wave` rejects: μ-law, A-law, float, extensible."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise AudioFileError(f"{name}: not a WAV (RIFF/WAVE) file")
    fmt: bytes | None = None
    data: bytes | None = None
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id, size = _CHUNK.unpack_from(raw, pos)
        body_start = pos + 8
        if chunk_id == b"data" and (size == 0xFFFFFFFF or body_start + size > len(raw)):
            data = raw[body_start:]  # streamed/truncated: take the rest of the file
            break
        body = raw[body_start : body_start + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            data = body
        pos = body_start + size + (size & 1)
    if fmt is None or len(fmt) < _FMT.size:
        raise AudioFileError(f"{name}: WAV file has no valid 'fmt ' chunk")
    if data is None:
        raise AudioFileError(f"{name}: WAV file has no 'data' chunk")
    tag, channels, rate, _byte_rate, _block_align, bits = _FMT.unpack_from(fmt)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the SubFormat GUID
    if channels < 1:
        raise AudioFileError(f"{name}: invalid WAV header ({channels} channels)")
    if tag in (_WAVE_FORMAT_MULAW, _WAVE_FORMAT_ALAW):
        if bits != 8:
            raise AudioFileError(f"{name}: G.711 WAV with {bits} bits per sample")
        codes = np.frombuffer(data, dtype=np.uint8)
        codec = "PCMU" if tag == _WAVE_FORMAT_MULAW else "PCMA"
        return g711.decode(codec, codes[: codes.size - codes.size % channels]), channels, rate
    if tag == _WAVE_FORMAT_PCM and bits in (8, 16, 24, 32):
        return _pcm_samples(data, bits // 8, "", channels), channels, rate
    if tag == _WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64):
        return _pcm_samples(data, bits // 8, "float", channels), channels, rate
    raise AudioFileError(f"{name}: unsupported WAV encoding (format tag {tag:#06x}, {bits} bits)")


def _pcm_samples(data: bytes, width: int, kind: str, channels: int) -> _Samples:
    """Interleaved little-endian samples -> int16 (integer PCM) or float64 in int16 scale."""
    frame_bytes = width * max(channels, 1)
    usable = len(data) - len(data) % frame_bytes
    buf = data[:usable]
    if kind == "float":
        f = np.frombuffer(buf, dtype="<f4" if width == 4 else "<f8").astype(np.float64)
        return np.clip(f * 32768.0, -32768.0, 32767.0)
    if width == 1:
        return ((np.frombuffer(buf, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 2:
        return np.frombuffer(buf, dtype="<i2").astype(np.int16)
    if width == 3:
        triples = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 3)
        return np.ascontiguousarray(triples[:, 1:]).view("<i2").reshape(-1).astype(np.int16)
    if width == 4:
        return (np.frombuffer(buf, dtype="<i4") >> 16).astype(np.int16)
    raise wave.Error(f"unsupported sample width {width}")


def _to_8k_mono(samples: _Samples, channels: int, rate: int) -> npt.NDArray[np.int16]:
    if channels == 1 and rate == SAMPLE_RATE and samples.dtype == np.int16:
        return np.array(samples, dtype=np.int16)
    x = samples.astype(np.float64).reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE and x.size:
        x = _resample(x, rate)
    out: npt.NDArray[np.int16] = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return out


def _lowpass(x: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.float64]:
    """Windowed-sinc (Blackman) low-pass below 4 kHz, applied by FFT convolution."""
    taps = int(5.5 * rate / _LOWPASS_TRANSITION_HZ) | 1
    fc = _LOWPASS_CUTOFF_HZ / rate
    m = np.arange(taps, dtype=np.float64) - (taps - 1) / 2
    h = 2 * fc * np.sinc(2 * fc * m) * np.blackman(taps)
    h /= h.sum()
    n = x.size + taps - 1
    nfft = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[:n]
    start = (taps - 1) // 2
    return y[start : start + x.size]


def _resample(x: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.float64]:
    """Resample to 8 kHz: low-pass first when downsampling, then linear interpolation."""
    if rate > SAMPLE_RATE:
        x = _lowpass(x, rate)
    n_out = (x.size - 1) * SAMPLE_RATE // rate + 1
    positions = np.arange(n_out, dtype=np.float64) * (rate / SAMPLE_RATE)
    return np.interp(positions, np.arange(x.size, dtype=np.float64), x)
