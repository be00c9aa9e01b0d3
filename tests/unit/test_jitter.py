"""Jitter buffer: ordering, loss, duplicates, late packets, wrap-around, ptimes, resync."""

from __future__ import annotations

import random

import numpy as np

from confroom.media.jitter import JitterBank, JitterBuffer


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


# --- the adaptive target --------------------------------------------------------------------


def test_a_clean_stream_lowers_its_target_to_min_depth_and_a_late_packet_raises_it() -> None:
    jb = JitterBuffer(depth=2, min_depth=1)
    seq = ts = 0

    def push() -> None:
        nonlocal seq, ts
        jb.push(seq, ts, frame(seq))
        seq += 1
        ts += 160

    push()
    push()
    assert jb.target == 2
    for _ in range(100):  # 2 s in time: the target drops to one frame
        assert jb.pop() is not None
        push()
    assert jb.target == 1
    for _ in range(60):  # the shrink then gives the extra frame back within about 1 s
        assert jb.pop() is not None
        push()
    assert jb.buffered_frames == 1 and jb.stats.shrunk == 1
    out = jb.pop()  # steady at one frame: what was pushed just before the pop is played
    assert out == frame(seq - 1) and jb.buffered_frames == 0
    assert jb.pop() is None  # the next packet is late: underrun, back to two frames
    assert jb.target == 2 and jb.stats.underruns == 1
    push()  # the late one arrives
    assert jb.pop() is None  # prefilling to two frames again
    push()
    assert jb.pop() == frame(seq - 2)


def test_a_lost_frame_restores_the_full_depth() -> None:
    jb = JitterBuffer(depth=3, min_depth=1)
    for i in range(3):
        jb.push(i, i * 160, frame(i))
    for i in range(3, 103):
        assert jb.pop() is not None
        jb.push(i, i * 160, frame(i))
    assert jb.target == 2
    jb.push(104, 104 * 160, frame(104))  # 103 is lost
    while jb.stats.lost == 0:
        jb.pop()
    assert jb.target == 3


def test_min_depth_must_be_in_range() -> None:
    for bad in (0, 3):
        try:
            JitterBuffer(depth=2, min_depth=bad)
        except ValueError:
            continue
        raise AssertionError(f"min_depth={bad} accepted")


# --- the batch path equals the per-packet path ------------------------------------------------


def _random_streams(rng: random.Random, n_streams: int, ticks: int) -> list[list[list[tuple]]]:
    """Per tick, per stream, the packets (seq, ts, payload, ssrc) that arrive in that tick:
    mostly 20 ms in order, with loss, reordering, duplicates, late bursts, silence gaps, SSRC
    changes, timestamp jumps and 10/30 ms packets mixed in."""
    plan: list[list[list[tuple]]] = [[[] for _ in range(n_streams)] for _ in range(ticks)]
    for s in range(n_streams):
        seq = rng.randrange(65536)
        ts = rng.randrange(2**32)
        ssrc = rng.randrange(2**32)
        pending: list[tuple[int, tuple]] = []
        for t in range(ticks):
            r = rng.random()
            if r < 0.03:
                pass  # lost
            elif r < 0.05:
                ts = (ts + 160 * rng.randrange(2, 80)) & 0xFFFFFFFF  # silence / jump
            elif r < 0.06:
                ssrc = rng.randrange(2**32)
            elif r < 0.07 and pending:
                pending.append((t, pending[-1][1]))  # duplicate
            size = 160
            if r > 0.98:
                size = rng.choice([80, 240, 100])
            payload = bytes([rng.randrange(256)]) * size
            delay = 0 if rng.random() < 0.9 else rng.randrange(1, 4)
            pending.append((t + delay, (seq, ts, payload, ssrc)))
            seq = (seq + 1) & 0xFFFF
            ts = (ts + size) & 0xFFFFFFFF
        for when, pkt in pending:
            if when < ticks:
                plan[when][s].append(pkt)
        for t in range(ticks):
            if rng.random() < 0.2:
                rng.shuffle(plan[t][s])
    return plan


def _state(bank: JitterBank) -> list[np.ndarray]:
    names = ("ring", "filled", "ssrc", "started", "playing", "has_played", "head", "read_ts",
             "end", "max_seq", "seq_bits", "deep_pops", "target", "clean", "counts")
    return [getattr(bank, n).copy() for n in names]


def test_push_frames_and_pop_all_equal_packet_by_packet() -> None:
    rng = random.Random(7)
    n = 40
    plan = _random_streams(rng, n, 600)
    batch = JitterBank(capacity=4, depth=2, min_depth=1)
    single = JitterBank(capacity=4, depth=2, min_depth=1)
    ids = [batch.open() for _ in range(n)]
    assert ids == [single.open() for _ in range(n)]
    idx_all = np.array(ids, dtype=np.intp)
    batched = 0
    for tick in plan:
        rounds = max(len(p) for p in tick)
        for r in range(rounds):
            rows = [(s, tick[s][r]) for s in range(n) if len(tick[s]) > r]
            for s, (seq, ts, payload, ssrc) in rows:
                single.push(ids[s], seq, ts, payload, ssrc)
            fast = [(s, p) for s, p in rows if len(p[2]) == 160]
            slow = [(s, p) for s, p in rows if len(p[2]) != 160]
            if fast:
                rest = batch.push_frames(
                    np.array([ids[s] for s, _ in fast], dtype=np.intp),
                    np.array([p[0] for _, p in fast], dtype=np.int64),
                    np.array([p[1] for _, p in fast], dtype=np.int64),
                    np.array([p[3] for _, p in fast], dtype=np.int64),
                    np.frombuffer(b"".join(p[2] for _, p in fast), np.uint8).reshape(-1, 160),
                )
                batched += int((~rest).sum())
                slow += [fast[k] for k in np.flatnonzero(rest)]
            for s, (seq, ts, payload, ssrc) in slow:
                batch.push(ids[s], seq, ts, payload, ssrc)
        codes_b, ok_b = batch.pop_all(idx_all)
        popped = [single.pop(i) for i in ids]
        assert [p is not None for p in popped] == ok_b.tolist()
        for k, p in enumerate(popped):
            if p is not None:
                assert codes_b[k].tobytes() == p
        for a, b in zip(_state(batch), _state(single), strict=True):
            np.testing.assert_array_equal(a, b)
    assert batched > 0.4 * n * 600  # the batch path took most packets, even of these streams
    totals = batch.counts.sum(axis=0)
    assert all(totals[1:7] > 0)  # lost, late, duplicate, overflow, underruns, resets all seen


def test_bank_grows_and_reuses_streams() -> None:
    bank = JitterBank(capacity=1)
    a = bank.open()
    b = bank.open(fill=0xD5)
    assert bank.capacity == 2 and a != b
    bank.push(b, 0, 0, frame(3))
    bank.push(b, 1, 160, frame(4))
    assert bank.pop(b) == frame(3)
    bank.close(b)
    c = bank.open()
    assert c == b and bank.stats(c).received == 0 and bank.buffered_frames(c) == 0
