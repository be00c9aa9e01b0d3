"""Micro-benchmark for the per-tick media math: `mix()` and `TalkDetector.update()`.

Prints microseconds per 20 ms tick. Not a test; run with `python bench/talk_mixer_micro.py`.

* mix(): one conference of M members, with 3 of them speaking (typical) and with all M
  "speaking" (every member unmuted and fed into the mix: worst case).
* mix_with_audience(): M members, 3 public speakers + 1 coach restricted to a 4-member group.
* TalkDetector.update(): 2,000 members in one call, with
  - 5% speech + 95% digital silence (typical),
  - 5% speech + 95% comfort-level noise at -60 dBFS (below the -45 dBFS gate),
  - 100% white noise at -30 dBFS (every frame passes the energy gate),
  - 100% pink noise at -30 dBFS,
  - 100% speech (every frame reaches webrtcvad: absolute worst case).

Speech comes from espeak-ng when it is installed, otherwise from a synthetic voiced signal.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from confroom.media.mixer import mix, mix_with_audience
from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE
from confroom.media.talk import TalkDetector

RNG = np.random.default_rng(7)


def _resample(x: npt.NDArray[np.float64], rate_in: int, rate_out: int) -> npt.NDArray[np.float64]:
    n_out = round(len(x) * rate_out / rate_in)
    spec = np.fft.rfft(x)
    keep = n_out // 2 + 1
    spec = spec[:keep] if len(spec) >= keep else np.pad(spec, (0, keep - len(spec)))
    resampled: npt.NDArray[np.float64] = np.fft.irfft(spec, n_out) * (n_out / len(x))
    return resampled


def speech_samples() -> npt.NDArray[np.int16]:
    text = (
        "Good morning everyone, thanks for joining the weekly call. "
        "Let's start with the status of the release and then review open issues."
    )
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "speech.wav"
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
            with wave.open(str(path)) as w:
                rate = w.getframerate()
                raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        x = _resample(raw.astype(np.float64), rate, SAMPLE_RATE)
    else:  # synthetic: 130 Hz pulse train through two resonances, 4 Hz syllable envelope
        t = np.arange(SAMPLE_RATE * 8) / SAMPLE_RATE
        x = np.zeros_like(t)
        x[:: SAMPLE_RATE // 130] = 1.0
        for f0, bw in ((700.0, 100.0), (1200.0, 120.0)):
            r = np.exp(-np.pi * bw / SAMPLE_RATE)
            a1, a2 = 2 * r * np.cos(2 * np.pi * f0 / SAMPLE_RATE), -r * r
            y = np.zeros_like(x)
            for i in range(2, len(x)):
                y[i] = x[i] + a1 * y[i - 1] + a2 * y[i - 2]
            x = y
        x *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
        x *= 3000.0 / np.sqrt(np.mean(x * x))
    n = len(x) // FRAME_SAMPLES * FRAME_SAMPLES
    out: npt.NDArray[np.int16] = np.clip(np.round(x[:n]), -32768, 32767).astype(np.int16)
    return out


def white(dbfs: float, n_frames: int) -> npt.NDArray[np.int16]:
    x = RNG.standard_normal((n_frames, FRAME_SAMPLES)) * 32768.0 * 10 ** (dbfs / 20)
    out: npt.NDArray[np.int16] = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return out


def pink(dbfs: float, n_frames: int) -> npt.NDArray[np.int16]:
    n = n_frames * FRAME_SAMPLES
    spec = np.fft.rfft(RNG.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    x *= 32768.0 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x * x))
    out: npt.NDArray[np.int16] = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return out.reshape(n_frames, FRAME_SAMPLES)


def timeit_us(fn: Callable[[], object], repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best * 1e6


def bench_mix() -> None:
    print("mix(): us per tick for one conference of M members")
    for m in (10, 100, 1000, 2000):
        frames = RNG.integers(-8000, 8000, (m, FRAME_SAMPLES), dtype=np.int16)
        out = np.empty_like(frames)
        few = np.zeros(m, dtype=np.bool_)
        few[:3] = True
        everyone = np.ones(m, dtype=np.bool_)
        restricted = np.full(m, -1, dtype=np.intp)
        restricted[3] = 0
        group = np.full(m, -1, dtype=np.intp)
        group[4:8] = 0
        coach = few.copy()
        coach[3] = True
        rep = 2000 if m <= 100 else 300
        t_few = timeit_us(partial(mix, frames, few, out), rep)
        t_all = timeit_us(partial(mix, frames, everyone, out), rep)
        t_aud = timeit_us(partial(mix_with_audience, frames, coach, restricted, group, out), rep)
        print(
            f"  M={m:5d}: 3 speaking {t_few:7.1f} us | all speaking {t_all:7.1f} us | "
            f"with coach {t_aud:7.1f} us  ({t_all / m * 1000:.0f} ns/member worst)"
        )


def bench_talk(speech: npt.NDArray[np.int16]) -> None:
    m = 2000
    ticks = 100
    speech_frames = speech.reshape(-1, FRAME_SAMPLES)
    ids = np.arange(m, dtype=np.intp)
    n_speakers = m // 20
    # Each speaker starts at a different offset into the speech.
    offsets = RNG.integers(0, len(speech_frames), m)

    def speech_tick(t: int, rows: int) -> npt.NDArray[np.int16]:
        idx = (offsets[:rows] + t) % len(speech_frames)
        picked: npt.NDArray[np.int16] = speech_frames[idx]
        return picked

    scenarios: dict[str, list[npt.NDArray[np.int16]]] = {}
    quiet = np.zeros((m, FRAME_SAMPLES), dtype=np.int16)
    comfort = white(-60.0, m)
    ticks_silence = []
    ticks_comfort = []
    for t in range(ticks):
        a = quiet.copy()
        a[:n_speakers] = speech_tick(t, n_speakers)
        ticks_silence.append(a)
        b = comfort.copy()
        b[:n_speakers] = speech_tick(t, n_speakers)
        ticks_comfort.append(b)
    scenarios["5% speech, 95% digital silence"] = ticks_silence
    scenarios["5% speech, 95% noise at -60 dBFS"] = ticks_comfort
    scenarios["100% white noise -30 dBFS"] = [white(-30.0, m) for _ in range(ticks)]
    pink_all = pink(-30.0, m * ticks).reshape(ticks, m, FRAME_SAMPLES)
    scenarios["100% pink noise -30 dBFS"] = list(pink_all)
    scenarios["100% speech (worst case)"] = [speech_tick(t, m) for t in range(ticks)]

    print(f"TalkDetector.update(): us per tick, {m} members in one call")
    for name, seq in scenarios.items():
        det = TalkDetector(capacity=m)
        gated = 0
        vad_calls = 0
        t0 = time.perf_counter()
        for t, frames in enumerate(seq):
            det.update(frames, ids, t * 0.02)
            gated += det.last_gated
            vad_calls += det.last_vad_calls
        dt = (time.perf_counter() - t0) / len(seq) * 1e6
        print(
            f"  {name:36s} {dt:8.0f} us/tick  ({dt / m * 1000:5.0f} ns/member; "
            f"per tick: {gated / len(seq):6.0f} gated, {vad_calls / len(seq):6.0f} webrtcvad calls)"
        )


def main() -> int:
    bench_mix()
    bench_talk(speech_samples())
    return 0


if __name__ == "__main__":
    sys.exit(main())
