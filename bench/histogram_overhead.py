"""Micro-benchmark: what the metrics' histograms cost the media clock.

`EngineStats.lateness` and `.tick_duration` get one `Histogram.observe()` per 20 ms tick.
Prints the cost of one observation and the median `MediaEngine.tick()` with N sessions
(fake transports, no sockets) with the tick-duration histogram and with a no-op in its place.
Not a test; run with `.venv/bin/python bench/histogram_overhead.py`.
"""

from __future__ import annotations

import statistics
import time
import timeit

from confroom.histogram import Histogram
from confroom.media.engine import LATENESS_BUCKETS, MediaEngine
from confroom.media.session import MediaSession


class _Sink:
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def close(self) -> None:
        pass


class _NoHistogram:
    def observe(self, value: float) -> None:
        pass


def median_tick(sessions: int, histogram: bool, ticks: int = 2000) -> float:
    engine = MediaEngine("127.0.0.1", 40000, 48000, 0)
    for i in range(sessions):
        s = MediaSession(40000 + 2 * i)
        s.update("PCMU", 0, 101, "10.0.0.9", 50000 + i, "sendrecv")
        engine.add_session(s, _Sink())
    if not histogram:
        engine.stats.tick_duration = _NoHistogram()  # type: ignore[assignment]
    now = 100.0
    took: list[float] = []
    for k in range(ticks + 200):
        t0 = time.perf_counter()
        engine.tick(now)
        if k >= 200:  # warmed up
            took.append(time.perf_counter() - t0)
        now += 0.02
    return statistics.median(took)


def main() -> None:
    h = Histogram(LATENESS_BUCKETS)
    n = 200_000
    per = min(timeit.repeat(lambda: h.observe(0.0031), number=n, repeat=5)) / n
    print(f"Histogram.observe: {per * 1e9:.0f} ns")
    for sessions in (10, 500):
        with_h = median_tick(sessions, True)
        without = median_tick(sessions, False)
        print(f"tick, {sessions} sessions: median {with_h * 1e6:.1f} us with the histogram, "
              f"{without * 1e6:.1f} us without")


if __name__ == "__main__":
    main()
