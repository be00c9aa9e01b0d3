"""The process's garbage-collector policy and its leak report.

Python frees almost everything by reference counting; only reference cycles need the cyclic
collector, whose full passes stop the whole process (the media clock included) for a time
proportional to the objects they scan: 60-150 ms with 2,000 calls up on one core (measured,
bench/RESULTS.md). So:

* calls and conferences are written so that nothing of them is left in a cycle once they
  end (callbacks pointing back at a call are dropped when it ends): they are freed by
  reference counting, and the end-to-end tests check it with `garbage_report()`;
* `GcPolicy` freezes (`gc.freeze()`) what start-up leaves alive, and again whatever survives
  a full pass: frozen objects are still freed by reference counting but never scanned, so
  the next full pass only looks at what is new since. A cycle among frozen objects would
  not be collected while frozen; when no call is up (nothing to stall) the policy thaws
  everything, runs one full pass and freezes again, and `garbage_report()` does the same.
* an exception caught for good (a failed webhook or download) is passed to
  `forget_traceback()`: its traceback's frames hold locals that refer back to it (aiohttp keeps
  the exception of a refused connection in a local; a shared download task holds its error),
  cycles that reference counting alone would never free; without the traceback they go.

`GcPolicy.tick()` is called about once a second by the event loop (cli), with `quiet` true
when no call is in progress.
"""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any

__all__ = ["GcPolicy", "forget_traceback", "garbage_report"]


def forget_traceback(exc: BaseException) -> None:
    """Drop the traceback of `exc` and of every exception chained to it (cause, context, group
    members): a traceback holds the frames it went through, whose locals often hold the
    exception again (a reference cycle). Call it where the exception ends its life, after
    logging it. (The frames are not cleared: on Python 3.11 clearing the frame of a suspended
    coroutine would finalize that coroutine.)"""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        todo += (e.__cause__, e.__context__)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)


class GcPolicy:
    """See the module docstring."""

    def __init__(self) -> None:
        self.full_passes = 0  # automatic full collections seen
        self.freezes = 0  # survivors frozen after one of them
        self.thaws = 0  # quiet-time clean-ups (thaw, full pass, freeze)
        self._seen = 0
        self._dirty = False  # frozen since the last quiet clean-up
        gc.collect()
        gc.freeze()  # what start-up leaves alive
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == 2:
            self.full_passes += 1

    def tick(self, quiet: bool) -> None:
        if self.full_passes != self._seen:
            self._seen = self.full_passes
            gc.freeze()  # what survived a full pass: not scanned again
            self.freezes += 1
            self._dirty = True
        elif quiet and self._dirty:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._seen = self.full_passes  # that pass was ours
            self.thaws += 1
            self._dirty = False


def garbage_report(top: int = 12) -> str:
    """One full collection over everything (frozen objects included), keeping what it frees
    for counting: `tracked=N frozen=N garbage=N confroom_garbage=N top=type:count,...`
    (confroom_garbage: objects of confroom's own classes among the garbage; 0 when ended
    calls leave no cycles). Everything alive is frozen again afterwards."""
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    tracked = len(gc.get_objects())
    old = gc.get_debug()
    gc.set_debug(old | gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(old)
    by_type = Counter(type(o).__qualname__ for o in found)
    ours = sum(1 for o in found if type(o).__module__.startswith("confroom."))
    del found
    gc.freeze()
    tops = ",".join(f"{name}:{n}" for name, n in by_type.most_common(top))
    return (f"tracked={tracked} frozen={frozen} garbage={sum(by_type.values())} "
            f"confroom_garbage={ours} top={tops or '-'}")
