"""Run `confroom serve` with a few read-only probes, for the benchmark (no change to src/).

    python3 bench/confroom_probe.py serve --sip-port ... (same arguments as `confroom`)

Wraps `MediaEngine.tick` to time every tick (and every 10 s counts the objects the cyclic
GC tracks, with the most common types), hooks `gc.callbacks` to time every garbage
collection, and at exit writes to $BENCH_PROBE_OUT (JSON): the engine's own `EngineStats`
(late/skipped ticks, worst lateness), tick duration percentiles, and GC pauses per
generation. Ticks and pauses are kept with their monotonic time so a window can be cut out.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import time
from collections import Counter
from typing import Any

from confroom import cli
from confroom.histogram import Histogram
from confroom.media import engine as eng

_engines: list[eng.MediaEngine] = []
_ticks: list[tuple[float, float]] = []  # (monotonic start, duration)
_gc: list[tuple[float, int, float]] = []  # (monotonic start, generation, duration)
_gc_start = [0.0]
_objects: list[tuple[float, int, int]] = []  # (monotonic, GC-tracked objects, sessions)
_types: dict[str, int] = {}  # the most common tracked types at the last sample

_orig_init = eng.MediaEngine.__init__
_orig_tick = eng.MediaEngine.tick


def _init(self: eng.MediaEngine, *args: Any, **kwargs: Any) -> None:
    _orig_init(self, *args, **kwargs)
    _engines.append(self)


def _tick(self: eng.MediaEngine, now: float) -> None:
    t = time.perf_counter()
    _orig_tick(self, now)
    _ticks.append((t, time.perf_counter() - t))
    if len(_ticks) % 500 == 1:  # every 10 s: how many objects the cyclic GC has to scan
        objs = gc.get_objects()
        _objects.append((t, len(objs), len(self.sessions)))
        _types.clear()
        _types.update(Counter(type(o).__name__ for o in objs).most_common(15))
        del objs


def _gc_cb(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    else:
        _gc.append((_gc_start[0], info["generation"], time.perf_counter() - _gc_start[0]))


def _plain(value: Any) -> Any:
    """A stats field as JSON can hold it (a histogram as its cumulative buckets and sum)."""
    if isinstance(value, Histogram):
        return {"buckets": value.cumulative(), "sum": value.total}
    return value


def _dump() -> None:
    path = os.environ.get("BENCH_PROBE_OUT")
    if not path:
        return
    # Cyclic garbage left behind (the calls have ended by now): what only the GC can free.
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    garbage = Counter(type(o).__name__ for o in gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    out: dict[str, Any] = {
        "engine_stats": [
            {k: _plain(getattr(e.stats, k)) for k in e.stats.__dataclass_fields__}
            for e in _engines
        ],
        "ticks": _ticks[-200_000:],
        "gc": _gc[-200_000:],
        "objects": _objects,
        "object_types": _types,
        "cyclic_garbage_at_exit": sum(garbage.values()),
        "cyclic_garbage_types": dict(garbage.most_common(20)),
    }
    with open(path, "w") as f:
        json.dump(out, f)


eng.MediaEngine.__init__ = _init  # type: ignore[method-assign]
eng.MediaEngine.tick = _tick  # type: ignore[method-assign]
gc.callbacks.append(_gc_cb)
atexit.register(_dump)

if __name__ == "__main__":
    raise SystemExit(cli.main())
