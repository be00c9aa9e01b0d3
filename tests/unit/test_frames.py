"""FrameTable: rows given out and back, growth, the version the mixer watches, concealment."""

from __future__ import annotations

import numpy as np

from confroom.media.frames import PLC_FRAMES, FrameTable


def test_rows_grow_and_are_reused_and_the_version_moves() -> None:
    t = FrameTable(capacity=1)
    a = t.open()
    t.set_inbound(a, np.full(160, 7, np.int16))
    v = t.version
    b = t.open()  # grows: what row a held survives
    assert t.capacity == 2 and b != a and t.version == v + 1
    got = t.get_inbound(a)
    assert got is not None and int(got[0]) == 7
    t.close(b)
    assert t.version == v + 2 and t.open() == b and t.get_inbound(b) is None


def test_frames_read_back_as_copies() -> None:
    t = FrameTable()
    r = t.open()
    t.set_outbound(r, np.full(160, 3, np.int16))
    out = t.get_outbound(r)
    assert out is not None
    out[:] = 0
    again = t.get_outbound(r)
    assert again is not None and int(again[0]) == 3
    t.set_outbound(r, None)
    assert t.get_outbound(r) is None


def test_take_inbound_conceals_a_loss_then_falls_silent() -> None:
    t = FrameTable(capacity=2)
    rows = np.array([t.open(), t.open()], dtype=np.intp)
    pcm = np.full((2, 160), 4000, np.int16)
    t.take_inbound(rows, pcm, np.array([True, True]))
    levels = []
    for _ in range(PLC_FRAMES + 1):
        t.take_inbound(rows, pcm, np.array([True, False]))  # row 1 lost from now on
        f = t.get_inbound(int(rows[1]))
        levels.append(None if f is None else int(f[0]))
        kept = t.get_inbound(int(rows[0]))
        assert kept is not None and int(kept[0]) == 4000
    assert levels == [2000, 1000, 500, None]
