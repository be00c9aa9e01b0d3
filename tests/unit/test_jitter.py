"""Jitter buffer: ordering, loss, duplicates, late packets, wrap-around, ptimes, resync."""

from __future__ import annotations

from confroom.media.jitter import JitterBuffer


def frame(n: int, size: int = 160) -> bytes:
    """A recognisable payload: every byte is n (mod 256)."""
    return bytes([n % 256]) * size


def pops(jb: JitterBuffer, count: int) -> list[int | None]:
    """Pop `count` frames; each as its (uniform) byte value, None if missing."""
    out: list[int | None] = []
    for _ in range(count):
        f = jb.pop()
        if f is None:
            out.append(None)
        else:
            assert len(f) == 160
            assert len(set(f)) == 1, f"mixed frame {f[:4]!r}..{f[-4:]!r}"
            out.append(f[0])
    return out


def test_prefill_then_in_order() -> None:
    jb = JitterBuffer(depth=2)
    jb.push(10, 1000, frame(1))
    assert jb.pop() is None  # 1 frame buffered < depth
    jb.push(11, 1160, frame(2))
    assert pops(jb, 1) == [1]
    for i in range(3, 8):
        jb.push(10 + i - 1, 1000 + 160 * (i - 1), frame(i))
        assert pops(jb, 1) == [i - 1]
    assert jb.stats.received == 7 and jb.stats.lost == 0


def test_reorder_inside_the_buffer() -> None:
    jb = JitterBuffer(depth=2)
    order = [0, 2, 1, 3, 5, 4]
    for i in order:
        jb.push(i, i * 160, frame(i))
    assert pops(jb, 6) == [0, 1, 2, 3, 4, 5]
    assert jb.stats.lost == jb.stats.late == 0


def test_reorder_at_stream_start() -> None:
    jb = JitterBuffer(depth=3)
    jb.push(1, 160, frame(1))
    jb.push(0, 0, frame(0))  # earlier than the first packet seen: the cursor moves back
    jb.push(2, 320, frame(2))
    assert pops(jb, 3) == [0, 1, 2]
    assert jb.stats.late == 0


def test_loss_gives_none_at_the_right_pop() -> None:
    jb = JitterBuffer(depth=2)
    for i in (0, 1, 2, 4, 5):
        jb.push(i, i * 160, frame(i))
    assert pops(jb, 6) == [0, 1, 2, None, 4, 5]
    assert jb.stats.lost == 1


def test_duplicates_are_ignored() -> None:
    jb = JitterBuffer(depth=2)
    jb.push(0, 0, frame(0))
    jb.push(0, 0, frame(99))
    jb.push(1, 160, frame(1))
    jb.push(1, 160, frame(99))
    assert pops(jb, 1) == [0]
    jb.push(0, 0, frame(99))  # duplicate of a frame already played
    jb.push(2, 320, frame(2))
    assert pops(jb, 2) == [1, 2]
    assert jb.stats.duplicate == 3


def test_late_packets_are_dropped() -> None:
    jb = JitterBuffer(depth=2)
    for i in (0, 1, 3):
        jb.push(i, i * 160, frame(i))
    assert pops(jb, 3) == [0, 1, None]
    jb.push(2, 320, frame(2))  # too late: frame 2 was already popped (as lost)
    jb.push(4, 640, frame(4))
    assert pops(jb, 2) == [3, 4]
    assert jb.stats.late == 1 and jb.stats.lost == 1


def test_sequence_and_timestamp_wrap() -> None:
    jb = JitterBuffer(depth=2)
    seq0, ts0 = 65533, 2**32 - 480
    got: list[int | None] = []
    for i in range(8):
        jb.push((seq0 + i) & 0xFFFF, (ts0 + 160 * i) & 0xFFFFFFFF, frame(i))
        got += pops(jb, 1)
    # Reordered and duplicated packets around the wrap as well.
    jb.push((seq0 + 9) & 0xFFFF, (ts0 + 160 * 9) & 0xFFFFFFFF, frame(9))
    jb.push((seq0 + 8) & 0xFFFF, (ts0 + 160 * 8) & 0xFFFFFFFF, frame(8))
    jb.push((seq0 + 8) & 0xFFFF, (ts0 + 160 * 8) & 0xFFFFFFFF, frame(8))
    got += pops(jb, 3)
    assert got == [None, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert jb.stats.duplicate == 1 and jb.stats.late == 0 and jb.stats.resets == 0


def test_10ms_packets() -> None:
    jb = JitterBuffer(depth=2)
    for i in range(8):  # 8 x 10 ms = 4 frames; byte value = frame index
        jb.push(i, i * 80, frame(i // 2, 80))
    assert pops(jb, 4) == [0, 1, 2, 3]


def test_30ms_packets() -> None:
    jb = JitterBuffer(depth=2)
    data = b"".join(frame(k) for k in range(6))  # 6 frames = 4 packets of 30 ms
    for i in range(4):
        jb.push(i, i * 240, data[i * 240 : (i + 1) * 240])
    assert pops(jb, 6) == [0, 1, 2, 3, 4, 5]


def test_30ms_loss_fills_the_partial_frame_with_silence() -> None:
    jb = JitterBuffer(depth=2, fill=0xFF)
    data = b"".join(frame(k + 1) for k in range(6))
    for i in (0, 2, 3):  # the packet covering samples 240..479 is lost
        jb.push(i, i * 240, data[i * 240 : (i + 1) * 240])
    out = [jb.pop() for _ in range(6)]
    assert out[0] == frame(1)
    assert out[1] == frame(2, 80) + b"\xff" * 80  # half of frame 1 arrived
    assert out[2] is None  # frame 2 entirely lost
    assert out[3:] == [frame(4), frame(5), frame(6)]


def test_overflow_drops_oldest_and_resyncs() -> None:
    jb = JitterBuffer(depth=2, max_depth=10)
    for i in range(10):
        jb.push(i, i * 160, frame(i))
    assert jb.stats.dropped_overflow == 0 and jb.buffered_frames == 10
    jb.push(10, 1600, frame(10))  # 11 frames ahead: back down to `depth`
    assert jb.buffered_frames == 2
    assert jb.stats.dropped_overflow == 9
    assert pops(jb, 3) == [9, 10, None]


def test_sender_faster_than_clock_stays_bounded() -> None:
    jb = JitterBuffer(depth=2, max_depth=10)
    seq = 0
    for _ in range(200):
        for _ in range(2):  # two packets per pop
            jb.push(seq, seq * 160, frame(seq))
            seq += 1
        jb.pop()
        assert jb.buffered_frames <= 10
    assert jb.stats.dropped_overflow > 0


def test_new_ssrc_resets() -> None:
    jb = JitterBuffer(depth=2)
    for i in range(3):
        jb.push(i, i * 160, frame(i), ssrc=1)
    assert pops(jb, 1) == [0]
    jb.push(5000, 123456, frame(50), ssrc=2)
    assert jb.stats.resets == 1
    assert jb.pop() is None  # prefill again
    jb.push(5001, 123456 + 160, frame(51), ssrc=2)
    assert pops(jb, 2) == [50, 51]


def test_timestamp_jump_resyncs() -> None:
    jb = JitterBuffer(depth=2)
    for i in range(4):
        jb.push(i, i * 160, frame(i))
    assert pops(jb, 2) == [0, 1]
    base = 160 * 4 + 8000 * 30  # e.g. resumed after 30 s on hold
    jb.push(4, base, frame(40))
    jb.push(5, base + 160, frame(41))
    assert jb.stats.resets == 1
    assert pops(jb, 2) == [40, 41]


def test_underrun_rebases_on_the_next_talk_spurt() -> None:
    jb = JitterBuffer(depth=2)
    for i in range(2):
        jb.push(i, i * 160, frame(i))
    assert pops(jb, 2) == [0, 1]
    assert pops(jb, 5) == [None] * 5  # sender silent (e.g. silence suppression)
    assert jb.stats.underruns == 1 and jb.stats.lost == 0
    # Talk resumes 500 ms of timestamps later: no stale gap is played out.
    jb.push(2, 160 * 2 + 4000, frame(7))
    assert jb.pop() is None
    jb.push(3, 160 * 3 + 4000, frame(8))
    assert pops(jb, 2) == [7, 8]
    assert jb.stats.lost == 0 and jb.stats.resets == 0


def test_sequence_restart_with_continuous_timestamps() -> None:
    jb = JitterBuffer(depth=2)
    for i in range(3):
        jb.push(1000 + i, i * 160, frame(i))
    assert pops(jb, 1) == [0]
    for i in range(3, 6):  # new sequence numbering far behind, timestamps continue
        jb.push(i, i * 160, frame(i))
    assert pops(jb, 5) == [1, 2, 3, 4, 5]
    assert jb.stats.duplicate == 0 and jb.stats.late == 0


def test_a_burst_of_extra_latency_is_given_back_after_a_second() -> None:
    """After a stall (three frames arrive in one go), the buffer stays deeper than its target;
    it skips one frame per second of that until the latency is back to normal."""
    jb = JitterBuffer(depth=2)
    seq, ts = 100, 8000
    payload = bytes(range(160))

    def push() -> None:
        nonlocal seq, ts
        jb.push(seq, ts, payload)
        seq += 1
        ts += 160

    push()
    push()
    for _ in range(3):  # a stall: the sender's next frames arrive together with later ones
        push()
    levels = []
    for _ in range(200):  # 4 s of steady 1-in-1-out
        assert jb.pop() is not None
        levels.append(jb.buffered_frames)
        push()
    assert levels[0] == 4  # 3 frames more than the steady level of 1
    assert jb.stats.shrunk == 3 and levels[-1] == 1
    assert jb.stats.lost == 0
