"""Summarise a py-spy raw (collapsed-stack) profile: inclusive and self share per function.

    python3 bench/profile_summary.py prof.txt [--per-packet PACKETS_PER_S --cpu-pct PCT]

With --per-packet (packets received per second, e.g. N*50) and --cpu-pct (the server's CPU %
over the same window), each function's share is also given in µs of CPU per received packet
(= per participant per 20 ms frame).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LOC = re.compile(r"\s*\([^)]*\)$")


def load(path: Path) -> tuple[Counter[str], Counter[str], int]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [_LOC.sub("", f) + " " + (f[f.rfind("(") :] if "(" in f else "")
                  for f in stack.split(";")]
        names = []
        for f in frames:
            m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", f.strip())
            names.append(f"{m.group(1)} ({m.group(2)})" if m else f.strip())
        for name in set(names[1:]):  # the first frame is the process/thread label
            inclusive[name] += c
        if len(names) > 1:
            own[names[-1]] += c
    return inclusive, own, total


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("profile", type=Path)
    p.add_argument("--per-packet", type=float, default=0.0)
    p.add_argument("--cpu-pct", type=float, default=0.0)
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    inclusive, own, total = load(a.profile)
    scale = 0.0
    if a.per_packet and a.cpu_pct:
        scale = a.cpu_pct / 100.0 / a.per_packet * 1e6  # µs per packet at 100 % of samples
    print(f"samples: {total}")
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"\n--- {title} ---")
        for name, c in table.most_common(a.top):
            share = c / total
            us = f"{share * scale:7.2f} µs/pkt" if scale else ""
            print(f"{share * 100:6.1f}%  {us}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
