"""Jitter buffers for G.711 RTP audio (one byte per sample), sans-IO, many streams per bank.

Owns the reordering/de-jittering of inbound streams. A `JitterBank` holds every stream of a
media engine in numpy arrays (one byte ring of whole 160-sample frames per stream, plus the
per-stream cursor state), so the media clock can push a whole round of received 20 ms packets
with `push_frames()` and pop every stream with `pop_all()` in a few array operations instead of
Python work per packet. `JitterBuffer` is one stream of a bank (a standalone one owns a bank of
one) with the per-packet `push()` / `pop()` that handle everything the batch path does not.
Packets are placed by RTP timestamp, so any packetisation (10/20/30 ms, or odd sizes) comes
out as exactly one 20 ms frame per pop. Both paths implement one policy:

- prefill: after (re)start, a pop yields nothing until the stream's target depth of frames is
  buffered ahead of the read cursor; the cursor then advances one frame per pop, a missing
  frame pops as None.
- adaptive target: a stream starts at `depth` frames. With `min_depth` below that, a stream
  whose frames all arrived in time for 2 s (`_LOWER_AFTER` pops) lowers its target by one
  frame (20 ms less latency on a clean path); an underrun or a lost frame puts it straight
  back to `depth`.
- underrun (nothing at all buffered): the cursor holds still and prefill starts again; the next
  packet re-bases the cursor on itself, so a talk spurt after silence suppression or a burst
  of loss does not add latency.
- late packets (behind the cursor) are dropped; duplicates (by sequence number, 64-packet
  window) are dropped; reordering inside the buffer is free.
- overflow: a packet ending more than `max_depth` frames ahead drops the oldest frames so that
  `depth` frames remain (latency cannot grow without bound).
- shrinking: when more than the steady `target - 1` frames stay queued after every pop for a
  whole second (a late tick or a burst left them), one frame is skipped to give latency back.
- a new SSRC, or a timestamp more than 1 s away from the cursor, resets the stream.

`push_frames()` takes only the packets whose effect is simple (same SSRC, the next sequence
numbers, 160 bytes at a frame boundary inside the buffer, no re-base) and hands the others
back for `push()`; tests check that both paths leave identical state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["FRAME_BYTES", "JitterBank", "JitterBuffer", "JitterStats"]

FRAME_BYTES: Final = 160  # 20 ms of G.711 at 8 kHz
_RESYNC_SAMPLES: Final = 8000  # a timestamp this far (1 s) from the cursor restarts the stream
_SEQ_WINDOW: Final = 64
_SHRINK_AFTER_POPS: Final = 50  # 1 s of pops leaving more than the steady level queued
_LOWER_AFTER: Final = 100  # 2 s of frames all in time lower a stream's target by one frame
_SEQ_MASK: Final = (1 << _SEQ_WINDOW) - 1
_TS_MASK: Final = 0xFFFFFFFF

# columns of JitterBank.counts, in JitterStats field order
_RECEIVED, _LOST, _LATE, _DUPLICATE, _OVERFLOW, _UNDERRUNS, _RESETS, _SHRUNK = range(8)

IntArray = npt.NDArray[np.int64]


@dataclass(slots=True)
class JitterStats:
    received: int = 0  # packets pushed (all of them, including the dropped ones below)
    lost: int = 0  # frames popped as None while playing (nothing arrived for them in time)
    late: int = 0  # packets that arrived behind the read cursor
    duplicate: int = 0  # packets whose sequence number was already seen
    dropped_overflow: int = 0  # buffered frames discarded to bring the latency back down
    underruns: int = 0  # pops that found the buffer empty (prefill restarted)
    resets: int = 0  # restarts on a new SSRC or a timestamp jump
    shrunk: int = 0  # frames skipped because the buffer stayed too deep (latency given back)


class _State:
    """One stream's cursor state as Python ints, for the per-packet paths."""

    __slots__ = (
        "deep_pops", "end", "has_played", "head", "max_seq", "playing", "read_ts", "seq_bits",
        "ssrc", "started",
    )

    def __init__(self, bank: JitterBank, i: int) -> None:
        self.ssrc = int(bank.ssrc[i])  # -1: none yet
        self.started = bool(bank.started[i])
        self.playing = bool(bank.playing[i])
        self.has_played = bool(bank.has_played[i])
        self.head = int(bank.head[i])
        self.read_ts = int(bank.read_ts[i])
        self.end = int(bank.end[i])
        self.max_seq = int(bank.max_seq[i])
        self.seq_bits = int(bank.seq_bits[i])
        self.deep_pops = int(bank.deep_pops[i])

    def store(self, bank: JitterBank, i: int) -> None:
        bank.ssrc[i] = self.ssrc
        bank.started[i] = self.started
        bank.playing[i] = self.playing
        bank.has_played[i] = self.has_played
        bank.head[i] = self.head
        bank.read_ts[i] = self.read_ts
        bank.end[i] = self.end
        bank.max_seq[i] = self.max_seq
        bank.seq_bits[i] = self.seq_bits
        bank.deep_pops[i] = self.deep_pops

    def start(self, seq: int, ts: int) -> None:
        self.started = True
        self.playing = False
        self.has_played = False
        self.read_ts = ts & _TS_MASK
        self.max_seq = seq & 0xFFFF
        self.seq_bits = 0
        self.end = 0


class JitterBank:
    """The jitter buffers of many streams in numpy arrays (see the module docstring).

    Streams are numbered from 0; `open()` gives out a free number, `close()` returns it. The
    arrays grow (doubling) as streams are opened; index them only through the methods or
    right after a call, never keep a reference across `open()`.
    """

    def __init__(
        self, capacity: int = 16, depth: int = 2, max_depth: int = 10, min_depth: int | None = None
    ) -> None:
        if min_depth is None:
            min_depth = depth
        if min_depth < 1 or depth < min_depth or max_depth < depth:
            raise ValueError("need 1 <= min_depth <= depth <= max_depth")
        self.depth = depth
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.depth_samples = depth * FRAME_BYTES
        self.max_samples = max_depth * FRAME_BYTES
        self.nframes = max_depth + 1
        self.capacity = 0
        self._free: list[int] = []
        self._retired = np.zeros(8, dtype=np.int64)  # counts of streams since reopened
        self._allocate(max(1, capacity))

    ring: npt.NDArray[np.uint8]  # (streams, nframes, 160): the payload bytes
    filled: npt.NDArray[np.int64]  # (streams, nframes): samples written per frame slot
    fill: npt.NDArray[np.uint8]  # the codec's silence byte, for partial frames
    ssrc: npt.NDArray[np.int64]  # -1: none yet
    started: npt.NDArray[np.bool_]
    playing: npt.NDArray[np.bool_]
    has_played: npt.NDArray[np.bool_]  # a frame was popped since the stream (re)started
    head: npt.NDArray[np.int64]  # ring slot of the read cursor
    read_ts: npt.NDArray[np.int64]  # RTP timestamp of the read cursor
    end: npt.NDArray[np.int64]  # samples from the cursor to the end of the furthest packet
    max_seq: npt.NDArray[np.int64]
    seq_bits: npt.NDArray[np.uint64]  # bit i set: sequence number (max_seq - i) was received
    deep_pops: npt.NDArray[np.int64]  # consecutive pops leaving more than target - 1 queued
    target: npt.NDArray[np.int64]  # the stream's target depth in frames
    clean: npt.NDArray[np.int64]  # frames played in time since the last loss or underrun
    counts: npt.NDArray[np.int64]  # (streams, 8): JitterStats counters
    pt: npt.NDArray[np.int64]  # the audio payload type the stream's packets carry (-1: none)

    _FIELDS: Final = (
        ("ring", np.uint8, 0), ("filled", np.int64, 0), ("fill", np.uint8, 0xFF),
        ("ssrc", np.int64, -1), ("started", np.bool_, 0), ("playing", np.bool_, 0),
        ("has_played", np.bool_, 0), ("head", np.int64, 0), ("read_ts", np.int64, 0),
        ("end", np.int64, 0), ("max_seq", np.int64, 0), ("seq_bits", np.uint64, 0),
        ("deep_pops", np.int64, 0), ("target", np.int64, None), ("clean", np.int64, 0),
        ("counts", np.int64, 0), ("pt", np.int64, -1),
    )

    def _allocate(self, capacity: int) -> None:
        old = self.capacity
        shapes = {"ring": (self.nframes, FRAME_BYTES), "filled": (self.nframes,), "counts": (8,)}
        for name, dtype, fill in self._FIELDS:
            value = self.depth if fill is None else fill
            new: npt.NDArray[Any] = np.full((capacity, *shapes.get(name, ())), value, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    # --- streams ----------------------------------------------------------------------------

    def open(self, fill: int = 0xFF) -> int:
        """A fresh stream (nothing buffered, zero stats) whose partial frames pad with `fill`."""
        if not self._free:
            self._allocate(self.capacity * 2)
        i = self._free.pop()
        self.fill[i] = fill
        self._retired += self.counts[i]  # a closed stream's counts, kept for totals()
        self.counts[i] = 0
        self.pt[i] = -1
        self.reset(i)
        return i

    def close(self, i: int) -> None:
        self.reset(i)
        self._free.append(i)

    def reset(self, i: int) -> None:
        """Forget everything buffered; the next packet starts a new stream (with prefill)."""
        self.filled[i] = 0
        self.head[i] = 0
        self.end[i] = 0
        self.started[i] = False
        self.playing[i] = False
        self.has_played[i] = False
        self.seq_bits[i] = 0
        self.ssrc[i] = -1
        self.deep_pops[i] = 0
        self.target[i] = self.depth
        self.clean[i] = 0

    def stats(self, i: int) -> JitterStats:
        return JitterStats(*(int(v) for v in self.counts[i]))

    def totals(self) -> JitterStats:
        """The counters summed over every stream this bank has had, closed ones included."""
        return JitterStats(*(int(v) for v in self._retired + self.counts.sum(axis=0)))

    def latest(self, i: int) -> tuple[int, int, int]:
        """Stream `i`'s SSRC (-1: none), highest sequence number, and the RTP timestamp at
        which its furthest packet ends (the cursor plus what is buffered ahead of it)."""
        return (
            int(self.ssrc[i]), int(self.max_seq[i]),
            (int(self.read_ts[i]) + int(self.end[i])) & _TS_MASK,
        )

    def buffered_frames(self, i: int) -> int:
        """Frames between the read cursor and the end of the furthest packet (rounded up)."""
        return max(0, -(-int(self.end[i]) // FRAME_BYTES))

    # --- one packet -------------------------------------------------------------------------

    def push(self, i: int, seq: int, ts: int, payload: bytes, ssrc: int | None = None) -> None:
        """Store one packet's payload of stream `i` at its timestamp position."""
        counts = self.counts[i]
        counts[_RECEIVED] += 1
        n = len(payload)
        if n == 0:
            return
        st = _State(self, i)
        if ssrc is not None and ssrc != st.ssrc:
            if st.ssrc != -1:
                counts[_RESETS] += 1
                self.reset(i)
                st = _State(self, i)
            st.ssrc = ssrc
        if not st.started:
            st.start(seq, ts)
        # Duplicate check against the sequence window.
        delta = ((seq - st.max_seq + 0x8000) & 0xFFFF) - 0x8000
        if -_SEQ_WINDOW < delta <= 0 and (st.seq_bits >> -delta) & 1:
            counts[_DUPLICATE] += 1
            st.store(self, i)
            return
        offset = ((ts - st.read_ts + 0x80000000) & _TS_MASK) - 0x80000000
        if offset > 0 and not st.playing and st.end <= 0:
            # Waiting after an underrun with nothing buffered: re-base the cursor on this packet
            # (the wait already played out as silence, so skipping ahead adds no gap).
            st.read_ts = ts & _TS_MASK
            offset = 0
        if offset > _RESYNC_SAMPLES or offset < -_RESYNC_SAMPLES:
            counts[_RESETS] += 1
            ssrc_keep = st.ssrc
            self.reset(i)
            st = _State(self, i)
            st.ssrc = ssrc_keep
            st.start(seq, ts)
            delta = 0
            offset = 0
        elif offset < 0:
            back = -(offset // FRAME_BYTES)
            if st.has_played or st.end + back * FRAME_BYTES > self.max_samples:
                counts[_LATE] += 1
                st.store(self, i)
                return
            # Reordered at the very start: move the cursor back (whole frames) to include it.
            st.head = (st.head - back) % self.nframes
            st.read_ts = (st.read_ts - back * FRAME_BYTES) & _TS_MASK
            st.end += back * FRAME_BYTES
            offset += back * FRAME_BYTES
        end = offset + n
        if end > self.max_samples:
            if n > self.max_samples:
                counts[_OVERFLOW] += 1
                st.store(self, i)
                return
            self._drop_frames(i, st, -(-(end - self.depth_samples) // FRAME_BYTES))
            offset = ((ts - st.read_ts + 0x80000000) & _TS_MASK) - 0x80000000
            end = offset + n
            if offset < 0:  # only possible when the packet itself is longer than depth
                payload = payload[-offset:]
                n = len(payload)
                offset = 0
        # Accepted: record the sequence number.
        if delta > 0:
            st.seq_bits = ((st.seq_bits << delta) | 1) & _SEQ_MASK
            st.max_seq = seq
        elif delta > -_SEQ_WINDOW:
            st.seq_bits |= 1 << -delta
        else:  # far behind: the sender restarted its sequence numbers
            st.seq_bits = 1
            st.max_seq = seq
        self._write(i, st.head, offset, payload, n)
        if end > st.end:
            st.end = end
        st.store(self, i)

    def _write(self, i: int, head: int, offset: int, payload: bytes, n: int) -> None:
        ring = self.ring[i]
        filled = self.filled[i]
        nframes = self.nframes
        data = np.frombuffer(payload, dtype=np.uint8, count=n)
        slot = (head + offset // FRAME_BYTES) % nframes
        within = offset % FRAME_BYTES
        pos = 0
        while pos < n:
            chunk = min(FRAME_BYTES - within, n - pos)
            have = int(filled[slot])
            if have == 0 and chunk < FRAME_BYTES:
                ring[slot] = self.fill[i]
            ring[slot, within : within + chunk] = data[pos : pos + chunk]
            filled[slot] = min(FRAME_BYTES, have + chunk)
            pos += chunk
            within = 0
            slot = (slot + 1) % nframes

    def _drop_frames(self, i: int, st: _State, count: int) -> None:
        """Advance the cursor by `count` frames, discarding what they hold."""
        filled = self.filled[i]
        nframes = self.nframes
        head = st.head
        for _ in range(min(count, nframes)):
            if filled[head]:
                self.counts[i, _OVERFLOW] += 1
                filled[head] = 0
            head = (head + 1) % nframes
        st.head = (st.head + count) % nframes
        st.read_ts = (st.read_ts + count * FRAME_BYTES) & _TS_MASK
        st.end = max(0, st.end - count * FRAME_BYTES)

    def pop(self, i: int) -> bytes | None:
        """Stream `i`'s next 160 bytes by timestamp position, or None (prefilling, lost, or
        empty). The same step as one row of `pop_all()`."""
        codes, ok = self.pop_all(np.array([i], dtype=np.intp))
        return codes[0].tobytes() if ok[0] else None

    # --- a batch of packets, a batch of pops ------------------------------------------------

    def push_frames(
        self,
        idx: npt.NDArray[np.intp],
        seq: IntArray,
        ts: IntArray,
        ssrc: IntArray,
        payload: npt.NDArray[np.uint8],
    ) -> npt.NDArray[np.bool_]:
        """Push 160-byte packets of distinct streams `idx` (payload: (K, 160)) where that is a
        plain in-order append; returns a mask of the packets NOT taken (push those one by one
        with `push()`, in order, after this call)."""
        delta = ((seq - self.max_seq[idx] + 0x8000) & 0xFFFF) - 0x8000
        offset = ((ts - self.read_ts[idx] + 0x80000000) & _TS_MASK) - 0x80000000
        end_now = self.end[idx]
        take = (
            self.started[idx]
            & (ssrc == self.ssrc[idx])
            & (delta >= 1)
            & (offset >= 0)
            & (offset % FRAME_BYTES == 0)
            & (offset + FRAME_BYTES <= self.max_samples)
            & ((offset == 0) | self.playing[idx] | (end_now > 0))
        )
        if not take.all():
            idx, delta, offset, end_now, payload, seq = (
                idx[take], delta[take], offset[take], end_now[take], payload[take], seq[take]
            )
        if len(idx):
            self.counts[idx, _RECEIVED] += 1
            shift = np.minimum(delta, _SEQ_WINDOW).astype(np.uint64)
            bits = np.where(
                delta < _SEQ_WINDOW,
                (self.seq_bits[idx] << np.minimum(shift, np.uint64(_SEQ_WINDOW - 1)))
                | np.uint64(1),
                np.uint64(1),
            )
            self.seq_bits[idx] = bits
            self.max_seq[idx] = seq
            slot = (self.head[idx] + offset // FRAME_BYTES) % self.nframes
            self.ring[idx, slot] = payload
            self.filled[idx, slot] = FRAME_BYTES
            self.end[idx] = np.maximum(end_now, offset + FRAME_BYTES)
        rest: npt.NDArray[np.bool_] = ~take
        return rest

    def pop_all(
        self, idx: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
        """One pop of each (distinct) stream in `idx`: (codes (K, 160), ok (K,)); row k is
        stream idx[k]'s next frame where ok[k], anything otherwise."""
        nf = self.nframes
        end = self.end[idx]
        playing = self.playing[idx]
        target = self.target[idx] * FRAME_BYTES  # in samples
        starting = ~playing & (end >= target)
        if starting.any():
            self.playing[idx[starting]] = True
            self.has_played[idx[starting]] = True
            playing = playing | starting
        empty = playing & (end <= 0)
        if empty.any():
            e = idx[empty]
            self.playing[e] = False
            self.counts[e, _UNDERRUNS] += 1
            self.target[e] = self.depth
            self.clean[e] = 0
        go = playing & (end > 0)
        head = self.head[idx]
        have = self.filled[idx, head] > 0
        codes: npt.NDArray[np.uint8] = self.ring[idx, head]
        ok = go & have
        if not go.any():
            return codes, ok
        g = idx[go]
        gh = head[go]
        new_head = (gh + 1) % nf
        new_end = end[go] - FRAME_BYTES
        new_ts = (self.read_ts[g] + FRAME_BYTES) & _TS_MASK
        deep = new_end > target[go] - FRAME_BYTES
        pops = np.where(deep, self.deep_pops[g] + 1, 0)
        shrink = pops >= _SHRINK_AFTER_POPS
        if shrink.any():
            s = g[shrink]
            self.filled[s, new_head[shrink]] = 0
            new_head[shrink] = (new_head[shrink] + 1) % nf
            new_ts[shrink] = (new_ts[shrink] + FRAME_BYTES) & _TS_MASK
            new_end[shrink] -= FRAME_BYTES
            pops[shrink] = 0
            self.counts[s, _SHRUNK] += 1
        self.deep_pops[g] = pops
        self.head[g] = new_head
        self.end[g] = new_end
        self.read_ts[g] = new_ts
        self.filled[g, gh] = 0
        lost = go & ~have
        if lost.any():
            lo = idx[lost]
            self.counts[lo, _LOST] += 1
            self.target[lo] = self.depth
            self.clean[lo] = 0
        if self.min_depth < self.depth:
            self._adapt(idx[ok])
        return codes, ok

    def _adapt(self, played: npt.NDArray[np.intp]) -> None:
        """Count frames played in time; 2 s of them lower the target by a frame."""
        clean = self.clean[played] + 1
        lower = (clean >= _LOWER_AFTER) & (self.target[played] > self.min_depth)
        if lower.any():
            self.target[played[lower]] -= 1
            clean[lower] = 0
        self.clean[played] = clean


class JitterBuffer:
    """One stream: `push()` packets as they come, `pop()` one frame per tick. A standalone
    buffer owns a bank of one; `JitterBuffer.of(bank, i)` is stream `i` of a shared bank."""

    __slots__ = ("bank", "index")

    def __init__(
        self, depth: int = 2, max_depth: int = 10, fill: int = 0xFF, min_depth: int | None = None
    ) -> None:
        """`fill`: the codec's silence byte, used for gaps inside a partially received frame."""
        self.bank = JitterBank(capacity=1, depth=depth, max_depth=max_depth, min_depth=min_depth)
        self.index = self.bank.open(fill)

    @classmethod
    def of(cls, bank: JitterBank, index: int) -> JitterBuffer:
        jb = cls.__new__(cls)
        jb.bank = bank
        jb.index = index
        return jb

    @property
    def target(self) -> int:
        """The stream's current target depth in frames (see "adaptive target")."""
        return int(self.bank.target[self.index])

    @property
    def fill(self) -> int:
        return int(self.bank.fill[self.index])

    @property
    def payload_type(self) -> int:
        """The audio payload type of the stream (for the engine's batch receive), -1: none."""
        return int(self.bank.pt[self.index])

    @payload_type.setter
    def payload_type(self, pt: int) -> None:
        self.bank.pt[self.index] = pt

    @property
    def stats(self) -> JitterStats:
        return self.bank.stats(self.index)

    @property
    def buffered_frames(self) -> int:
        return self.bank.buffered_frames(self.index)

    def reset(self, fill: int | None = None) -> None:
        """Forget everything buffered (and, given `fill`, pad partial frames with it now)."""
        if fill is not None:
            self.bank.fill[self.index] = fill
        self.bank.reset(self.index)

    def push(self, seq: int, ts: int, payload: bytes, ssrc: int | None = None) -> None:
        self.bank.push(self.index, seq, ts, payload, ssrc)

    def pop(self) -> bytes | None:
        return self.bank.pop(self.index)
