"""`cached_file`: a file in the media cache, made once even when many callers ask at once.

TTS output and downloaded audio are both cached as files keyed by a hash; the first caller
starts making the file, concurrent callers for the same path await that same work, and a
caller that gives up (its call ended) does not cancel the work the others are waiting for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

_inflight: dict[Path, asyncio.Task[Path]] = {}


async def cached_file(path: Path, make: Callable[[], Coroutine[Any, Any, Path]]) -> Path:
    """`path` if it exists, else the result of `make()` (run once per path at a time)."""
    if path.exists():
        return path
    task = _inflight.get(path)
    if task is None or task.get_loop() is not asyncio.get_running_loop():
        task = asyncio.ensure_future(make())
        _inflight[path] = task
        task.add_done_callback(lambda t: _forget(path, t))
    return await asyncio.shield(task)


def _forget(path: Path, task: asyncio.Task[Path]) -> None:
    if _inflight.get(path) is task:
        del _inflight[path]
    if not task.cancelled():
        task.exception()  # mark retrieved: callers may all have gone away
