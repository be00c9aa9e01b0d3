"""`Histogram`: a fixed-bucket histogram cheap enough for the media clock's hot path.

One `observe()` is a bisect and two additions (no lock, no allocation); the metrics endpoint
(`confroom.api.metrics`) reads `bounds`, `counts` and `total` at scrape time. Buckets follow the
Prometheus convention: a value `v` falls in the first bucket whose upper bound is >= `v`; the
last count is the `+Inf` bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

__all__ = ["Histogram"]


class Histogram:
    """Counts of observed values per bucket plus their sum (see the module docstring)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds: tuple[float, ...] = tuple(sorted(float(b) for b in bounds))
        if not self.bounds:
            raise ValueError("a histogram needs at least one bucket bound")
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.total = 0.0  # sum of the observed values

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, observations <= it), ending with +Inf."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out
