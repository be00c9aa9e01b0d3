"""Jitter buffer: ordering, loss, duplicates, late packets, wrap-around, ptimes, resync."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from confroom.media.g711 import ULAW_ENCODE
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
    # the first three empty pops could be lost packets (the cursor runs on), then underrun
    assert jb.stats.lost == 3 and jb.stats.underruns == 1
    # Talk resumes 500 ms of timestamps later: no stale gap is played out.
    jb.push(2, 160 * 2 + 4000, frame(7))
    assert jb.pop() is None
    jb.push(3, 160 * 3 + 4000, frame(8))
    assert pops(jb, 2) == [7, 8]
    assert jb.stats.lost == 3 and jb.stats.resets == 0


def test_a_lost_packet_costs_no_latency() -> None:
    """One frame buffered (a clean stream at min_depth) and its next packet lost: the pop
    yields None and the cursor runs on, so the following packet plays on time (no underrun,
    no prefill pause)."""
    jb = JitterBuffer(depth=1)
    jb.push(0, 0, frame(0))
    out = [jb.pop()]
    for i in range(1, 6):
        if i != 3:
            jb.push(i, i * 160, frame(i))
        f = jb.pop()
        out.append(None if f is None else f)
    assert out == [frame(0), frame(1), frame(2), None, frame(4), frame(5)]
    assert jb.stats.lost == 1 and jb.stats.underruns == 0


def test_sequence_restart_with_continuous_timestamps() -> None:
    jb = JitterBuffer(depth=2)
    for i in range(3):
        jb.push(1000 + i, i * 160, frame(i))
    assert pops(jb, 1) == [0]
    for i in range(3, 6):  # new sequence numbering far behind, timestamps continue
        jb.push(i, i * 160, frame(i))
    assert pops(jb, 5) == [1, 2, 3, 4, 5]
    assert jb.stats.duplicate == 0 and jb.stats.late == 0


QUIET = bytes([0xFF]) * 160  # mu-law silence: a pause
TONE = ULAW_ENCODE[
    (8000 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000)).astype(np.int16).view(np.uint16)
].tobytes()  # a steady 440 Hz tone at about -12 dBFS: talking


class _Sender:
    """20 ms packets of one stream, `payload` as it is set."""

    def __init__(self, jb: JitterBuffer) -> None:
        self.jb = jb
        self.seq = 100
        self.ts = 8000

    def packet(self, payload: bytes) -> tuple[int, int, bytes]:
        p = (self.seq, self.ts, payload)
        self.seq += 1
        self.ts += 160
        return p

    def push(self, payload: bytes) -> None:
        self.jb.push(*self.packet(payload))


def test_a_burst_of_extra_latency_is_given_back_in_a_pause() -> None:
    """After a stall (three frames arrive in one go), the buffer stays deeper than its target;
    while a tone plays nothing is skipped, then in the pause one quiet frame is skipped per
    half second of that until the latency is back to normal."""
    jb = JitterBuffer(depth=2)
    tx = _Sender(jb)
    tx.push(TONE)
    tx.push(TONE)
    for _ in range(3):  # a stall: the sender's next frames arrive together with later ones
        tx.push(TONE)
    levels = []
    for _ in range(100):  # 2 s of tone, steady 1-in-1-out
        assert jb.pop() == TONE
        levels.append(jb.buffered_frames)
        tx.push(TONE)
    assert levels[0] == 4 and levels[-1] == 4  # 3 frames more than the steady level of 1
    assert jb.stats.shrunk == 0
    for _ in range(100):  # 2 s of pause
        assert jb.pop() is not None
        levels.append(jb.buffered_frames)
        tx.push(QUIET)
    assert jb.stats.shrunk == 3 and levels[-1] == 1
    assert jb.stats.lost == 0


# --- the target follows the jitter ----------------------------------------------------------


def _run(
    tx: _Sender, rng: random.Random, seconds: float, jitter_ms: float,
    payload: Callable[[int], bytes],
) -> list[bytes | None]:
    """`tx` sends 20 ms packets whose network delay is uniform in 0..`jitter_ms`, received
    and popped on a 20 ms tick; returns what the ticks popped."""
    jb = tx.jb
    ticks = int(seconds * 50)
    arrivals: dict[int, list[tuple[int, int, bytes]]] = {}
    for k in range(ticks):
        at = int(-(-(k * 20 + rng.uniform(0, jitter_ms)) // 20))
        arrivals.setdefault(at, []).append(tx.packet(payload(k)))
    out: list[bytes | None] = []
    for t in range(ticks):
        for pkt in sorted(arrivals.get(t, []), key=lambda _: rng.random()):
            jb.push(*pkt)
        out.append(jb.pop())
    return out


def test_a_clean_stream_keeps_one_frame_of_latency() -> None:
    jb = JitterBuffer(depth=2, min_depth=1)
    tx = _Sender(jb)
    out = _run(tx, random.Random(1), 4, 0, lambda k: QUIET if k % 50 < 10 else TONE)
    assert jb.target == 1 and jb.jitter < 5
    assert jb.buffered_frames <= 1
    assert jb.stats.lost == 0 and jb.stats.late == 0
    assert out[-1] is not None


def test_80ms_of_jitter_gets_a_deep_enough_buffer() -> None:
    """Talk spurts (1.6 s) and pauses (0.4 s) with 0..80 ms of jitter: the target grows to
    cover it (more than the old fixed 40 ms) and after the first seconds hardly a frame comes
    too late."""
    jb = JitterBuffer(depth=2, min_depth=1)
    tx = _Sender(jb)
    rng = random.Random(2)
    _run(tx, rng, 6, 80, lambda k: QUIET if k % 100 >= 80 else TONE)
    assert 20 < jb.jitter < 40
    assert jb.target >= 4  # >= 80 ms
    before = jb.stats
    out = _run(tx, rng, 10, 80, lambda k: QUIET if k % 100 >= 80 else TONE)
    late = jb.stats.late - before.late
    assert late <= 0.02 * len(out)
    assert jb.stats.grown > 0  # the extra depth came in pauses


def test_the_depth_grows_only_in_a_pause() -> None:
    """Jitter starts while a tone plays: the buffer does not insert anything into the tone
    (every popped frame is the tone or a late packet's gap); it deepens in the next pause."""
    jb = JitterBuffer(depth=2, min_depth=1)
    tx = _Sender(jb)
    rng = random.Random(3)
    _run(tx, rng, 2, 0, lambda k: TONE)
    assert jb.target == 1
    out = _run(tx, rng, 3, 60, lambda k: TONE)
    assert jb.target >= 3 and jb.stats.grown == 0 and jb.stats.shrunk == 0
    assert all(f == TONE for f in out if f is not None)
    _run(tx, rng, 1, 60, lambda k: QUIET)
    assert jb.stats.grown > 0


def test_a_steady_tone_loses_no_frame_to_the_depth_changes() -> None:
    """The target falls (the jitter stops) while a tone plays: no frame is skipped."""
    jb = JitterBuffer(depth=2, min_depth=1)
    tx = _Sender(jb)
    rng = random.Random(4)
    _run(tx, rng, 3, 80, lambda k: QUIET if 20 <= k % 50 < 30 else TONE)
    shrunk = jb.stats.shrunk
    out = _run(tx, rng, 4, 0, lambda k: TONE)
    assert jb.target == 1 and jb.stats.shrunk == shrunk and jb.buffered_frames >= 3
    # (None: the packets the first run left in flight, never delivered)
    assert all(f == TONE for f in out if f is not None) and out.count(None) <= 4
    assert jb.stats.resets == 0
    _run(tx, rng, 3, 0, lambda k: QUIET)  # the pause gives the latency back
    assert jb.buffered_frames <= 1 and jb.stats.shrunk > shrunk


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
            # talk spurts (any byte) and pauses (mu-law silence), so depth changes happen
            payload = bytes([rng.randrange(256) if (t // 40) % 2 else 0xFF]) * size
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
             "end", "max_seq", "seq_bits", "deep_pops", "shallow_pops", "starved", "target",
             "jit16", "transit", "has_transit", "clock", "counts")
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
    # lost, late, duplicate, overflow, underruns, resets, shrunk, grown all seen
    assert all(totals[1:9] > 0), totals


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
