"""What a test needs to check that code leaves no reference cycles (see confroom.memory).

`no_automatic_gc()` stops the automatic collector while the code under test runs (it would
free cycles unseen); `confroom_garbage()` then runs one full collection keeping what it frees
and names what of confroom is among it: objects of confroom's classes and frames of its code.
"""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_automatic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def confroom_garbage() -> list[str]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    ours = [type(o).__qualname__ for o in found if type(o).__module__.startswith("confroom.")]
    ours += [f"frame {o.f_code.co_qualname}" for o in found
             if isinstance(o, types.FrameType) and "/confroom/" in o.f_code.co_filename]
    return ours
