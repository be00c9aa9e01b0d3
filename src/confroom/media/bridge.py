"""`Bridges`: two-party audio bridges (the `dial` verb), mixed on the one media clock.

A bridge joins two media sessions of the same engine: each tick, what one side said this
tick becomes what the other side is sent (a direct frame copy between `FrameTable` rows; a
frame that did not arrive leaves the other side silent). All bridges of the engine are done
in one fancy-indexed copy per tick (two wideband sides also get each other's 16 kHz frame;
between a wideband and a narrowband side the 8 kHz frames cross, resampled for the wideband
side by the engine). Sessions must already belong to the engine (their frame
rows live in its table); a prompt a session plays still overrides the bridge for its duration.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from confroom.media.frames import FrameTable
from confroom.media.session import MediaSession

__all__ = ["Bridges"]


class Bridges:
    """Every bridge of one engine: a `Mixer` (add it to `engine.mixers` once)."""

    def __init__(self, table: FrameTable) -> None:
        self.table = table
        self._pairs: dict[int, tuple[MediaSession, MediaSession]] = {}  # id -> (a, b)
        self._next = 1
        self._src: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._dst: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._dirty = False

    def __len__(self) -> int:
        return len(self._pairs)

    def add(self, a: MediaSession, b: MediaSession) -> int:
        """Bridge `a` and `b` (both ways); returns the bridge's handle for `remove`."""
        if a.frames is not self.table or b.frames is not self.table:
            raise ValueError("both sessions must belong to the bridging engine")
        handle = self._next
        self._next += 1
        self._pairs[handle] = (a, b)
        self._dirty = True
        return handle

    def remove(self, handle: int) -> None:
        if self._pairs.pop(handle, None) is not None:
            self._dirty = True

    def _layout(self) -> None:
        a_rows = [a.frame_row for a, _ in self._pairs.values()]
        b_rows = [b.frame_row for _, b in self._pairs.values()]
        self._src = np.array(a_rows + b_rows, dtype=np.intp)
        self._dst = np.array(b_rows + a_rows, dtype=np.intp)
        self._dirty = False

    def mix(self, now: float) -> None:
        if self._dirty:
            self._layout()
        if not len(self._src):
            return
        t = self.table
        src, dst = self._src, self._dst
        t.outbound[dst] = t.inbound[src]
        t.has_outbound[dst] = t.has_inbound[src]
        if t.n_wide:  # wideband to wideband: the full band (else the 8 kHz frame, resampled)
            both = t.wide[src] & t.wide[dst] & t.has_inbound_wb[src]
            if both.any():
                t.outbound_wb[dst[both]] = t.inbound_wb[src[both]]
                t.has_outbound_wb[dst[both]] = True
