"""PESQ-NB of espeak-ng speech through a real confroom conference of 3, with loss and jitter.

For each impairment of the talker's upstream (clean; 1, 3, 5, 10 % random loss; 0-80 ms of
uniform jitter) it runs `--runs` conferences (a fresh server and three SIPp callers each, see
tests/e2e/quality.py), and prints the median PESQ-NB of what a listener heard, with, in
brackets, the median of the same lost packets decoded without the server, lost frames left
silent (issue 12's baseline). Needs espeak-ng, sox, SIPp and the `pesq` package (test extra).
With `--codec G722` or `--codec OPUS` every caller uses that codec, the speech is 16 kHz and
the score is PESQ-WB (P.862.2); `--cases` limits the impairments (e.g. `--cases 0,3`).

    .venv/bin/python bench/quality.py [--runs 3] [--codec PCMU] [--cases 0,3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "e2e"), str(ROOT / "tests")]

from quality import Impairment, conference_pesq, espeak_speech  # noqa: E402

TEXT = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
        "It is easy to tell the depth of a well.")
CASES = [
    Impairment(),
    Impairment(loss=0.01),
    Impairment(loss=0.03),
    Impairment(loss=0.05),
    Impairment(loss=0.10),
    Impairment(jitter_ms=40),
    Impairment(jitter_ms=80),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--codec", default="PCMU", choices=["PCMU", "PCMA", "G722", "OPUS"])
    ap.add_argument("--cases", help="comma-separated indexes into the impairment list")
    ap.add_argument("--json", type=Path, help="write every run's scores here")
    args = ap.parse_args()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="confroom-quality-") as tmp:
        work = Path(tmp)
        rate = 16000 if args.codec in ("G722", "OPUS") else 8000
        metric = "PESQ-WB" if rate == 16000 else "PESQ-NB"
        speech = espeak_speech(work, TEXT, rate=rate)
        print(f"{args.codec}: speech {len(speech) / rate:.1f} s, {args.runs} runs per case")
        wanted = ({int(i) for i in args.cases.split(",")} if args.cases
                  else set(range(len(CASES))))
        for n, case in enumerate(CASES):
            if n not in wanted:
                continue
            heard, silent = [], []
            for run in range(args.runs):
                h, s = conference_pesq(work / f"c{n}r{run}", speech, case, seed=1000 * n + run,
                                       codec=args.codec)
                heard.append(h)
                silent.append(s)
            results.append({"codec": args.codec, "case": str(case), "heard": heard,
                            "silent": silent})
            print(f"{case!s:<28} {metric} {statistics.median(heard):.2f} "
                  f"({statistics.median(silent):.2f})   runs: "
                  + " ".join(f"{h:.2f}" for h in heard), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
