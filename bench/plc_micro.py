"""Cost of the G.711 loss concealment in the media tick (`FrameTable.take_inbound`).

Times one tick of `rows` sessions with `lost` of them starting a loss (pitch search + first
concealed frame), one with them continuing a loss, and one with no loss; prints the cost per
concealed frame (the difference, divided by `lost`).

    .venv/bin/python bench/plc_micro.py [--rows 1000] [--lost 10] [--ticks 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from confroom.media.frames import FrameTable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--lost", type=int, default=10)
    ap.add_argument("--ticks", type=int, default=300)
    args = ap.parse_args()
    t = np.arange(320) / 8000
    voiced = (6000 * np.sin(2 * np.pi * 137 * t) + 2000 * np.sin(2 * np.pi * 274 * t))
    table = FrameTable(args.rows)
    rows = np.array([table.open() for _ in range(args.rows)], dtype=np.intp)
    frames = np.tile(voiced.astype(np.int16)[160:], (args.rows, 1))
    all_ok = np.ones(args.rows, dtype=bool)
    some_lost = all_ok.copy()
    some_lost[: args.lost] = False

    def run(ok: np.ndarray, reset: bool) -> float:
        best = float("inf")
        for _ in range(args.ticks):
            table.take_inbound(rows, frames, all_ok)
            if reset:
                table.take_inbound(rows, frames, all_ok)
            t0 = time.perf_counter()
            table.take_inbound(rows, frames, ok)
            best = min(best, time.perf_counter() - t0)
        return best

    base = run(all_ok, False)
    start = run(some_lost, True)
    print(f"{args.rows} rows, tick without loss: {base * 1e6:.0f} us (best of {args.ticks})")
    print(f"{args.lost} rows starting a loss: +{(start - base) * 1e6:.0f} us, "
          f"{(start - base) / args.lost * 1e6:.1f} us per concealed frame")
    # a loss going on: the second frame (no pitch search)
    best = float("inf")
    for _ in range(args.ticks):
        table.take_inbound(rows, frames, all_ok)
        table.take_inbound(rows, frames, some_lost)
        t0 = time.perf_counter()
        table.take_inbound(rows, frames, some_lost)
        best = min(best, time.perf_counter() - t0)
    print(f"{args.lost} rows continuing a loss: +{(best - base) * 1e6:.0f} us, "
          f"{(best - base) / args.lost * 1e6:.1f} us per concealed frame")


if __name__ == "__main__":
    main()
