"""Micro-benchmark for the media clock's receive path: `MediaEngine.tick()` with N real RTP
sockets, each receiving one 20 ms PCMU packet per tick from its latched peer.

Prints the tick's median and p90 cost in microseconds and per participant. Not a test; run
it (on a quiet core if you can) with `python bench/rtp_receive_micro.py [N] [TICKS]`, and
compare two versions of the code in one sitting by alternating runs, e.g.
`PYTHONPATH=/path/to/other/src python bench/rtp_receive_micro.py` (that `confroom` is
imported instead of the installed one; the line says which).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import numpy as np

import confroom
from confroom.media.engine import MediaEngine
from confroom.media.rtp import build_rtp_header


async def main(n: int, ticks: int) -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # our replies: dropped
    here = peer.getsockname()
    engine = MediaEngine("127.0.0.1", 40000, 40000 + 2 * n + 400, rtp_timeout=0)
    sessions = [await engine.open_session() for _ in range(n)]
    for s in sessions:
        s.update("PCMU", 0, 101, here[0], here[1], "sendrecv")
    payload = bytes(160)
    targets = [("127.0.0.1", s.local_port) for s in sessions]
    costs = []
    now = 1000.0
    for k in range(ticks):
        header = build_rtp_header(0, False, k & 0xFFFF, k * 160, 0x5EED)
        for t in targets:
            peer.sendto(header + payload, t)
        t0 = time.perf_counter()
        engine.tick(now)
        costs.append(time.perf_counter() - t0)
        now += 0.02
    await engine.stop()
    peer.close()
    steady = np.array(costs[ticks // 5 :]) * 1e6
    med, p90 = float(np.median(steady)), float(np.percentile(steady, 90))
    print(f"{confroom.__file__}: N={n} ticks={ticks} tick median {med:.0f} us "
          f"({med / n:.2f} us/participant), p90 {p90:.0f} us; received "
          f"{sum(s.jitter.stats.received for s in sessions)} of {n * ticks}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(args[0] if args else 500, args[1] if len(args) > 1 else 1000))
