"""Micro-benchmark for speech `gather`: the per-tick cost of utterance detection (what runs on
the media clock for a call in a speech gather) and the time pocketsphinx takes per utterance
(what runs on the recognizer's worker thread).

Not a test; run with `python bench/speech_micro.py` (needs espeak-ng and sox).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("tests", "tests/e2e")]

from harness import g711_decode, g711_encode, speech_pcm  # noqa: E402

from confroom.speech.recognizer import UtteranceDetector  # noqa: E402
from confroom.speech.sphinx import SphinxRecognizer  # noqa: E402


async def main() -> None:
    with TemporaryDirectory() as tmp:
        words = {w: speech_pcm(Path(tmp), w) for w in ("sales", "support", "billing")}
    silence = np.zeros(8000, dtype=np.int16)
    call = np.concatenate([silence, *[np.concatenate([w, silence, silence])
                                      for w in words.values()]])
    call = g711_decode(g711_encode(call, 0), 0)
    frames = list(call[: len(call) // 160 * 160].reshape(-1, 160))
    det = UtteranceDetector()
    t0 = time.perf_counter()
    for f in frames:
        det.feed(f)
    per_frame = (time.perf_counter() - t0) / len(frames) * 1e6
    print(f"UtteranceDetector.feed: {per_frame:.1f} us per 20 ms frame ({len(frames)} frames)")
    rec = SphinxRecognizer()
    t0 = time.perf_counter()
    await rec.recognize(silence, language="en-US", hints=["sales"])
    print(f"first recognize (loads the model): {time.perf_counter() - t0:.3f} s")
    hints = list(words)
    while (u := det.take()) is not None:
        t0 = time.perf_counter()
        t = await rec.recognize(u, language="en-US", hints=hints)
        print(f"utterance {len(u) / 8000:.2f} s -> {t.text if t else None!r} in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms (hints)")
        t0 = time.perf_counter()
        t = await rec.recognize(u, language="en-US", hints=[])
        print(f"utterance {len(u) / 8000:.2f} s -> {t.text if t else None!r} in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms (no hints: language model)")


if __name__ == "__main__":
    asyncio.run(main())
