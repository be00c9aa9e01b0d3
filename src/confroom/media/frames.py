"""`FrameTable`: this tick's audio frames of many sessions, one numpy row per session.

Owns the two per-tick frame slots of every media session of an engine: what the session's
caller said this tick (`inbound`: decoded, with loss concealment) and what the session is to
send (`outbound`: a conference mix), each with a flag saying whether the row holds a frame,
plus the loss-concealment countdown and the codec. The engine fills `inbound` for all
sessions in a few array operations and encodes `outbound` in one; a mixer gathers its
members' rows with one fancy index and writes its output the same way. A session outside
any engine has a table of its own, so the same code serves both.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from confroom.media.sources import FRAME_SAMPLES, Frame

__all__ = ["PLC_FRAMES", "FrameTable"]

PLC_FRAMES: Final = 3  # a lost frame is concealed by fading repeats of the last one
_PLC_FADE_OUT: Final = np.linspace(1.0, 0.0, FRAME_SAMPLES, dtype=np.float64)


class FrameTable:
    """Rows of frames (see the module docstring). Rows are numbered from 0; `open()` gives
    out a free row, `close()` takes it back. The arrays grow (doubling) in `open()`, so index
    them afresh after it."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = 0
        self.inbound = np.zeros((0, FRAME_SAMPLES), dtype=np.int16)
        self.has_inbound = np.zeros(0, dtype=bool)
        self.outbound = np.zeros((0, FRAME_SAMPLES), dtype=np.int16)
        self.has_outbound = np.zeros(0, dtype=bool)
        self.plc_left = np.zeros(0, dtype=np.int64)  # concealment frames left per row
        self.alaw = np.zeros(0, dtype=bool)  # the row's codec is PCMA (else PCMU)
        self._free: list[int] = []
        self.version = 0  # changes whenever a row is given out or taken back
        self.concealed = 0  # missing frames replaced by concealment, all rows, ever
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name in ("inbound", "has_inbound", "outbound", "has_outbound", "plc_left", "alaw"):
            a = getattr(self, name)
            new = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            new[:old] = a
            setattr(self, name, new)
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    def open(self) -> int:
        if not self._free:
            self._grow(self.capacity * 2)
        row = self._free.pop()
        self.clear(row)
        self.alaw[row] = False
        self.version += 1
        return row

    def close(self, row: int) -> None:
        self.clear(row)
        self._free.append(row)
        self.version += 1

    def clear(self, row: int) -> None:
        self.has_inbound[row] = False
        self.has_outbound[row] = False
        self.plc_left[row] = 0

    # --- one row, as the session's `inbound` / `mix_out` attributes -------------------------

    def get_inbound(self, row: int) -> Frame | None:
        return self.inbound[row].copy() if self.has_inbound[row] else None

    def set_inbound(self, row: int, frame: Frame | None) -> None:
        if frame is None:
            self.has_inbound[row] = False
        else:
            self.inbound[row] = frame
            self.has_inbound[row] = True

    def get_outbound(self, row: int) -> Frame | None:
        return self.outbound[row].copy() if self.has_outbound[row] else None

    def set_outbound(self, row: int, frame: Frame | None) -> None:
        if frame is None:
            self.has_outbound[row] = False
        else:
            self.outbound[row] = frame
            self.has_outbound[row] = True

    # --- the engine's pass over all rows ------------------------------------------------------

    def take_inbound(
        self, rows: npt.NDArray[np.intp], pcm: npt.NDArray[np.int16], ok: npt.NDArray[np.bool_]
    ) -> None:
        """This tick's inbound for `rows`: `pcm[k]` where `ok[k]`; otherwise, while the row's
        concealment lasts, the last frame at half the level (the last repeat fading out to
        zero, so the stream ends without a click); otherwise nothing."""
        got = rows[ok]
        self.inbound[got] = pcm[ok]
        self.has_inbound[got] = True
        self.plc_left[got] = PLC_FRAMES
        missing = rows[~ok]
        if not len(missing):
            return
        left = self.plc_left[missing]
        conceal = missing[left > 0]
        self.has_inbound[missing] = False
        if len(conceal):
            self.inbound[conceal] >>= 1
            last = conceal[self.plc_left[conceal] == 1]
            if len(last):
                self.inbound[last] = (self.inbound[last] * _PLC_FADE_OUT).astype(np.int16)
            self.plc_left[conceal] -= 1
            self.has_inbound[conceal] = True
            self.concealed += len(conceal)
