"""Generated test signals for talking detection (8 kHz int16): espeak-ng speech, in-band DTMF,
music-like sequences, white/pink/brown noise. Shared by tests/unit and bench/ (pure numpy,
deterministic by seed; speech needs the espeak-ng binary)."""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from confroom.media.sources import SAMPLE_RATE

I16 = npt.NDArray[np.int16]
F64 = npt.NDArray[np.float64]

DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)


def resample(x: F64, rate_in: int, rate_out: int) -> F64:
    """Band-limited resampling by truncating/zero-padding the spectrum."""
    n_out = round(len(x) * rate_out / rate_in)
    spec = np.fft.rfft(x)
    keep = n_out // 2 + 1
    spec = spec[:keep] if len(spec) >= keep else np.pad(spec, (0, keep - len(spec)))
    out: F64 = np.fft.irfft(spec, n_out) * (n_out / len(x))
    return out


def to_i16(x: F64) -> I16:
    out: I16 = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return out


def at_dbfs(x: F64, dbfs: float) -> I16:
    """Scale to an RMS level in dBFS (over the non-silent samples)."""
    active = x[np.abs(x) > 1e-9 * (np.max(np.abs(x)) + 1e-12)]
    rms = float(np.sqrt(np.mean(active * active))) if active.size else 1.0
    return to_i16(x * (32768.0 * 10 ** (dbfs / 20) / rms))


def espeak(text: str, voice: str = "en-us", speed: int = 175) -> I16:
    """espeak-ng speech at 8 kHz (its own level, about -20 dBFS)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True
        )
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return to_i16(resample(raw.astype(np.float64), rate, SAMPLE_RATE))


def noise(color: str, dbfs: float, seconds: float, seed: int) -> I16:
    """White, pink (1/f) or brown (1/f^2) Gaussian noise at an RMS level."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64) * SAMPLE_RATE / n
    f[0] = f[1]
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[color]
    x = np.fft.irfft(spec / f**exponent, n)
    return at_dbfs(x, dbfs)


def dtmf(seconds: float, seed: int, dbfs: float = -12.0) -> I16:
    """In-band DTMF as an IVR caller sends it: digits of 60-400 ms (some held ~1 s), gaps of
    50-200 ms, pauses between numbers, tone levels varying +-6 dB and a -3 dB high-group twist."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    out = np.zeros(n)
    pos = round(0.3 * SAMPLE_RATE)
    while pos < n:
        for _ in range(int(rng.integers(1, 12))):
            dur = float(rng.choice([rng.uniform(0.06, 0.4), rng.uniform(0.6, 1.2)], p=[0.85, 0.15]))
            m = min(round(dur * SAMPLE_RATE), n - pos)
            if m <= 0:
                break
            t = np.arange(m) / SAMPLE_RATE
            lo = DTMF_LOW[int(rng.integers(4))] * (1 + rng.uniform(-0.015, 0.015))
            hi = DTMF_HIGH[int(rng.integers(4))] * (1 + rng.uniform(-0.015, 0.015))
            level = 10 ** ((dbfs + rng.uniform(-6, 6)) / 20) * 32768 * np.sqrt(2)
            burst = np.sin(2 * np.pi * lo * t) + 10 ** (-3 / 20) * np.sin(2 * np.pi * hi * t)
            out[pos : pos + m] = level * burst / np.sqrt(1 + 10 ** (-3 / 10))
            pos += m + round(rng.uniform(0.05, 0.2) * SAMPLE_RATE)
        pos += round(rng.uniform(0.3, 2.0) * SAMPLE_RATE)
    return to_i16(out)


def _note(freq: float, seconds: float, kind: str, rng: np.random.Generator) -> F64:
    m = round(seconds * SAMPLE_RATE)
    t = np.arange(m) / SAMPLE_RATE
    vib = 1 + 0.004 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t) if kind == "string" else 1.0
    phase = 2 * np.pi * freq * np.cumsum(np.broadcast_to(vib, t.shape)) / SAMPLE_RATE
    harmonics = {"organ": (1.0, 0.5, 0.3, 0.2), "string": (1.0, 0.6, 0.4, 0.3, 0.2, 0.1),
                 "pluck": (1.0, 0.7, 0.4, 0.25, 0.15), "flute": (1.0, 0.15, 0.05)}[kind]
    x = np.zeros(m)
    for h, a in enumerate(harmonics, start=1):
        if freq * h < SAMPLE_RATE / 2 - 200:
            x += a * np.sin(h * phase)
    attack = min(m, round(0.01 * SAMPLE_RATE))
    env = np.ones(m)
    env[:attack] = np.linspace(0, 1, attack)
    if kind == "pluck":
        env *= np.exp(-t * 4.0)
    release = min(m, round(0.03 * SAMPLE_RATE))
    env[m - release :] *= np.linspace(1, 0, release)
    return x * env


def music(seconds: float, seed: int, dbfs: float = -20.0, drums: bool = True) -> I16:
    """Music-like: a chord progression (organ/string pads), a melody (flute/pluck), a bass line
    and optionally drums (kick and hi-hat noise bursts), at a steady tempo."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    out = np.zeros(n)
    bpm = float(rng.uniform(80, 140))
    beat = 60.0 / bpm
    roots = [57, 62, 64, 60, 55, 53]  # MIDI note numbers
    major = rng.random() < 0.5
    chord_iv = (0, 4, 7) if major else (0, 3, 7)
    scale = (0, 2, 4, 5, 7, 9, 11, 12)

    def hz(midi: float) -> float:
        return 440.0 * 2 ** ((midi - 69) / 12)

    pad_kind = str(rng.choice(["organ", "string"]))
    lead_kind = str(rng.choice(["flute", "pluck", "string"]))
    t0 = 0.0
    while t0 < seconds:
        root = roots[int(rng.integers(len(roots)))]
        bar = 4 * beat
        start = round(t0 * SAMPLE_RATE)
        for iv in chord_iv:
            nt = _note(hz(root + iv), bar, pad_kind, rng) * 0.25
            end = min(n, start + len(nt))
            out[start:end] += nt[: end - start]
        for b in range(4):
            s = round((t0 + b * beat) * SAMPLE_RATE)
            bass = _note(hz(root - 12), beat * 0.9, "pluck", rng) * 0.5
            e = min(n, s + len(bass))
            if s < n:
                out[s:e] += bass[: e - s]
        tm = t0
        while tm < t0 + bar:
            dur = beat * float(rng.choice([0.5, 1.0, 1.5, 2.0]))
            s = round(tm * SAMPLE_RATE)
            if s >= n:
                break
            nt = _note(hz(root + 12 + scale[int(rng.integers(len(scale)))]), dur, lead_kind, rng)
            e = min(n, s + len(nt))
            out[s:e] += 0.6 * nt[: e - s]
            tm += dur
        if drums:
            for b in range(8):
                s = round((t0 + b * beat / 2) * SAMPLE_RATE)
                m = round(0.05 * SAMPLE_RATE)
                if s + m >= n:
                    break
                tt = np.arange(m) / SAMPLE_RATE
                hat = rng.standard_normal(m) * np.exp(-tt * 60) * 0.15
                out[s : s + m] += np.diff(hat, prepend=0.0)
                if b % 2 == 0:
                    kick = np.sin(2 * np.pi * (120 - 600 * tt) * tt) * np.exp(-tt * 30) * 0.6
                    out[s : s + m] += kick
        t0 += bar
    return at_dbfs(out, dbfs)


def sox_noise(color: str, dbfs: float, seconds: float) -> I16:
    """Noise from sox's own generator (`synth whitenoise|pinknoise|brownnoise`; sox's brown
    noise is a random walk, which fooled the detector where spectrally shaped noise did not),
    normalised to an RMS level. Needs the sox binary."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "n.wav"
        subprocess.run(
            ["sox", "-n", "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", str(path),
             "synth", str(seconds), f"{color}noise"],
            check=True,
        )
        with wave.open(str(path)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return at_dbfs(raw.astype(np.float64), dbfs)
