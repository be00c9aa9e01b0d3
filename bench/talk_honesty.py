"""Talking-detection honesty: false starts on non-speech and start/stop latency on speech.

Not a test; run with `python bench/talk_honesty.py` (needs espeak-ng). Every signal is one
member of one `TalkDetector`, fed in one batched call per 20 ms tick:

* non-speech, 60 s each: in-band DTMF (3 seeds x -12/-25 dBFS), music-like sequences (3
  seeds, with and without drums), white/pink/brown noise at -10/-20/-30/-40 dBFS, shaped in
  numpy and from sox's generators: start events;
* speech: espeak-ng, 5 voices x 3 speeds (130/175/250 wpm) x 3 levels (0/-12/-20 dB from
  espeak's own, about -20 dBFS): delay from onset to start-talking, and from the last loud
  sample to stop-talking.

Signals come from tests/talk_signals.py. To measure another checkout's detector, put its
src first: `PYTHONPATH=/path/to/src python bench/talk_honesty.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import confroom.media.talk as talk
from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE
from talk_signals import I16, dtmf, espeak, music, noise, sox_noise, to_i16

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
TEXT = "Hello, this is a test of the talking detector. Can you hear me now?"


def events(signals: list[I16]) -> list[list[tuple[float, bool]]]:
    n = max(len(x) for x in signals) // FRAME_SAMPLES * FRAME_SAMPLES
    frames = np.stack(
        [np.pad(x, (0, max(0, n - len(x))))[:n].reshape(-1, FRAME_SAMPLES) for x in signals],
        axis=1,
    )
    det = talk.TalkDetector(capacity=len(signals))
    ids = np.arange(len(signals))
    out: list[list[tuple[float, bool]]] = [[] for _ in signals]
    for t in range(frames.shape[0]):
        for mid, on in det.update(frames[t], ids, t * FRAME_S):
            out[mid].append((t * FRAME_S, on))
    return out


def main() -> int:
    print(f"detector: {talk.__file__}")
    named: list[tuple[str, I16]] = []
    for seed in range(3):
        named.append((f"dtmf -12 dBFS s{seed}", dtmf(60.0, seed, -12.0)))
        named.append((f"dtmf -25 dBFS s{seed}", dtmf(60.0, seed + 10, -25.0)))
        named.append((f"music drums s{seed}", music(60.0, seed, -20.0)))
        named.append((f"music no drums s{seed}", music(60.0, seed + 10, -15.0, drums=False)))
    for color in ("white", "pink", "brown"):
        for db in (-10, -20, -30, -40):
            named.append((f"{color} {db} dBFS", noise(color, float(db), 60.0, 3)))
            named.append((f"sox-{color} {db} dBFS", sox_noise(color, float(db), 60.0)))
    ev = events([x for _, x in named])
    totals: dict[str, int] = {}
    for (name, _), e in zip(named, ev, strict=True):
        kind = name.split(" ")[0]
        totals[kind] = totals.get(kind, 0) + sum(1 for _, on in e if on)
    print("false starts in 60 s per signal, summed:", ", ".join(
        f"{k} {v} (of {sum(1 for n, _ in named if n.startswith(k))} signals)"
        for k, v in totals.items()))

    speech: list[tuple[float, I16]] = []
    onsets: list[tuple[float, float]] = []
    for voice in ("en-us", "en+f3", "en+m3", "en-gb", "en+f2"):
        for speed in (130, 175, 250):
            x = espeak(TEXT, voice, speed).astype(np.float64)
            loud = np.flatnonzero(np.abs(x) > 300)
            for level in (0.0, -12.0, -20.0):
                sig = to_i16(np.concatenate([np.zeros(SAMPLE_RATE), x * 10 ** (level / 20),
                                             np.zeros(3 * SAMPLE_RATE)]))
                speech.append((level, sig))
                onsets.append((1 + loud[0] / SAMPLE_RATE, 1 + loud[-1] / SAMPLE_RATE))
    ev = events([x for _, x in speech])
    for level in (0.0, -12.0, -20.0):
        starts, stops, missed = [], [], 0
        for (lv, _), (onset, end), e in zip(speech, onsets, ev, strict=True):
            if lv != level:
                continue
            on = [t for t, o in e if o]
            off = [t for t, o in e if not o]
            if not on:
                missed += 1
                continue
            starts.append((on[0] - onset) * 1000)
            if off:
                stops.append((off[-1] - end) * 1000)
        n = len(starts) + missed
        print(f"speech {level:+.0f} dB: detected {len(starts)}/{n}; start after onset "
              f"median {np.median(starts):.0f} ms, max {max(starts):.0f} ms, "
              f"<= 300 ms: {sum(s <= 300 for s in starts)}/{n}; stop after last sound median "
              f"{np.median(stops):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
