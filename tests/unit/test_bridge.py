"""`Bridges`: two-party frame copies on the engine's frame table, both ways, batched."""

from __future__ import annotations

import numpy as np
import pytest

from confroom.media.bridge import Bridges
from confroom.media.frames import FrameTable
from confroom.media.session import MediaSession
from confroom.media.sources import FRAME_SAMPLES


def _session(port: int, table: FrameTable) -> MediaSession:
    s = MediaSession(port)
    s.adopt_frames(table)
    return s


def _frame(value: int) -> np.ndarray:
    return np.full(FRAME_SAMPLES, value, dtype=np.int16)


def test_bridge_copies_both_ways_and_stops_on_remove() -> None:
    table = FrameTable(2)
    a, b, c, d = (_session(p, table) for p in (20000, 20002, 20004, 20006))
    bridges = Bridges(table)
    h1 = bridges.add(a, b)
    bridges.add(c, d)
    a.inbound = _frame(100)
    b.inbound = None  # b said nothing this tick
    c.inbound = _frame(-5)
    d.inbound = _frame(7)
    bridges.mix(0.0)
    assert b.mix_out is not None and (b.mix_out == 100).all()
    assert a.mix_out is None  # silence, not a stale frame
    assert d.mix_out is not None and (d.mix_out == -5).all()
    assert c.mix_out is not None and (c.mix_out == 7).all()
    bridges.remove(h1)
    table.has_outbound[:] = False
    bridges.mix(0.02)
    assert b.mix_out is None and d.mix_out is not None and len(bridges) == 1


def test_bridge_needs_sessions_of_its_table() -> None:
    bridges = Bridges(FrameTable(2))
    with pytest.raises(ValueError, match="bridging engine"):
        bridges.add(MediaSession(1), MediaSession(2))
