"""FrameTable: rows given out and back, growth, the version the mixer watches, concealment."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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


def _voiced(n_frames: int, f0: float = 137.0, level: float = 12000.0) -> npt.NDArray[np.int16]:
    """A synthetic voiced signal (a harmonic series at `f0`), as (n_frames, 160) frames."""
    t = np.arange(n_frames * 160) / 8000.0
    sig = sum((0.5**k) * np.sin(2 * np.pi * f0 * k * t + k) for k in range(1, 6))
    sig = sig / np.abs(sig).max() * level
    return sig.astype(np.int16).reshape(n_frames, 160)


def _play(lost: set[int], frames: npt.NDArray[np.int16]) -> list[npt.NDArray[np.int16] | None]:
    t = FrameTable(capacity=1)
    rows = np.array([t.open()], dtype=np.intp)
    out = []
    for i, f in enumerate(frames):
        t.take_inbound(rows, f[None], np.array([i not in lost]))
        out.append(t.get_inbound(int(rows[0])))
    return out


def test_concealment_continues_the_voice() -> None:
    """One lost frame of a voiced signal: the concealed frame follows the true one far better
    than silence or the old half-level repeat of the last frame, at the same level."""
    frames = _voiced(20)
    out = _play({10}, frames)
    concealed = out[10]
    assert concealed is not None
    true = frames[10].astype(np.float64)
    err = float(np.mean((concealed - true) ** 2))
    old = frames[9] / 2
    assert float(np.corrcoef(concealed, true)[0, 1]) > 0.8
    assert err < 0.25 * float(np.mean(true**2))  # silence's error is mean(true**2)
    assert err < 0.25 * float(np.mean((old - true) ** 2))
    assert 0.8 < float(np.std(concealed)) / float(np.std(true)) < 1.2


def test_concealment_boundaries_do_not_click() -> None:
    """Sample steps at the loss boundary and at recovery stay within the signal's own."""
    frames = _voiced(20)
    out = _play({10}, frames)
    signal = np.concatenate([f for f in out if f is not None]).astype(np.int64)
    assert len(signal) == 20 * 160
    steepest = int(np.abs(np.diff(frames.reshape(-1).astype(np.int64))).max())
    for at in (10 * 160, 11 * 160):
        steps = np.abs(np.diff(signal[at - 4 : at + 4]))
        assert int(steps.max()) <= 1.5 * steepest
    # energy continuity: the frames around the loss are at the signal's level
    for k in (10, 11):
        got = out[k]
        assert got is not None
        assert 0.7 < float(np.std(got)) / float(np.std(frames[k])) < 1.3


def test_long_loss_fades_out_then_falls_silent() -> None:
    frames = _voiced(20)
    out = _play(set(range(10, 20)), frames)
    levels = [float(np.std(f)) if f is not None else None for f in out[10:]]
    first, second, third = levels[:PLC_FRAMES]
    assert first is not None and second is not None and third is not None
    assert first > second > third
    tail = out[12]
    assert tail is not None and abs(int(tail[-1])) < 120  # -40 dB of the level 60 ms in
    assert levels[PLC_FRAMES:] == [None] * (20 - 10 - PLC_FRAMES)


def test_concealment_is_per_row() -> None:
    t = FrameTable(capacity=2)
    rows = np.array([t.open(), t.open()], dtype=np.intp)
    frames = _voiced(3)
    for f in frames[:2]:
        t.take_inbound(rows, np.stack([f, f]), np.array([True, True]))
    t.take_inbound(rows, np.stack([frames[2], frames[2]]), np.array([True, False]))
    kept = t.get_inbound(int(rows[0]))
    assert kept is not None and np.array_equal(kept, frames[2])
    assert t.get_inbound(int(rows[1])) is not None and t.concealed == 1
