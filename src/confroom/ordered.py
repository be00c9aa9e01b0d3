"""`KeyedSerial`: run coroutines one after another per key, different keys concurrently.

Used for webhooks whose order matters: one call's call-status notifications, one conference's
status events. A failed or cancelled coroutine does not stop the ones queued after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class KeyedSerial:
    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        self._tail: dict[Hashable, asyncio.Task[Any]] = {}

    def submit(self, key: Hashable, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        prev = self._tail.get(key)

        async def after_previous() -> None:
            if prev is not None:
                await asyncio.wait([prev])
            await coro

        task = self._spawn(after_previous())
        self._tail[key] = task

        def forget(t: asyncio.Task[Any]) -> None:
            if self._tail.get(key) is t:
                del self._tail[key]

        task.add_done_callback(forget)
        return task
