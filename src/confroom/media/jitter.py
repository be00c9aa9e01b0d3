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
- target that follows the jitter: every packet updates the stream's inter-arrival jitter
  estimate J (RFC 3550 section 6.4.1, in samples, arrival measured on the stream's own pop
  clock: 160 samples per pop). The target is `min_depth` plus enough frames to cover 3 J beyond
  the half frame the 20 ms tick itself quantises (`ceil((3 J - 80) / 160)` frames), capped at
  `max(depth, max_depth - 4)`. (With `min_depth == depth` the target stays at `depth`.) A
  stream starts with J set so that its target is `depth`; a clean stream's J decays and its
  target falls to `min_depth`, while 0..80 ms of uniform jitter gives 5-6 frames (100-120
  ms). An underrun adds a frame's worth to J.
- the depth moves towards the target only where it cannot be heard: below the target for
  100 ms of pops (`_GROW_AFTER_POPS`), a pop whose frame and the frame before it are both
  quiet (mean |sample| < `QUIET_LEVEL`) holds the cursor and yields None instead (the
  engine's concealment of a quiet frame: one 20 ms frame of pause inserted, `grown`); above
  it (see shrinking) a quiet frame after a quiet one is skipped. Never a frame of speech:
  while a talker talks, the depth stays as it is. A stream whose bytes are not G.711 (G.722)
  has a `pause_hint` instead: its caller says whether the last two frames it decoded were
  quiet.
- nothing buffered at a pop (a lost or late packet): for up to 3 pops (`_COAST_FRAMES`, the
  span of the engine's concealment) the cursor runs on and the frames pop as lost, so a lost
  packet costs no latency and no pause; a packet arriving after its frame was passed is late
  (dropped; its transit raises J).
- underrun (still nothing after that): the cursor holds still and prefill starts again; the
  next packet re-bases the cursor on itself, so a talk spurt after silence suppression or a
  burst of loss does not add latency.
- late packets (behind the cursor) are dropped; duplicates (by sequence number, 64-packet
  window) are dropped; reordering inside the buffer is free.
- overflow: a packet ending more than `max_depth` frames ahead drops the oldest frames so that
  `depth` frames remain (latency cannot grow without bound).
- shrinking: when more than the steady `target - 1` frames stay queued after every pop for
  half a second (a burst left them, or the target fell), one frame is skipped to give
  latency back, at the first pop where the frame played and the one skipped are both quiet;
  then one every 100 ms while that lasts.
- a new SSRC, or a timestamp more than 1 s away from the cursor, resets the stream.
- a stream's target can be capped (`cap_target`): a cluster's node-to-node leg is capped at
  one frame, so a listener on another node is at most about one frame later than one on the
  talker's node (a late packet there is concealed rather than waited for).

`push_frames()` takes only the packets whose effect is simple (same SSRC, the next sequence
numbers, 160 bytes at a frame boundary inside the buffer, no re-base) and hands the others
back for `push()`; tests check that both paths leave identical state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from confroom.media.g711 import ALAW_DECODE, ALAW_SILENCE, ULAW_DECODE

__all__ = ["FRAME_BYTES", "QUIET_LEVEL", "JitterBank", "JitterBuffer", "JitterStats"]

FRAME_BYTES: Final = 160  # 20 ms of G.711 at 8 kHz
_RESYNC_SAMPLES: Final = 8000  # a timestamp this far (1 s) from the cursor restarts the stream
_SEQ_WINDOW: Final = 64
_SHRINK_AFTER_POPS: Final = 25  # 0.5 s of pops leaving more than the steady level queued
_COAST_FRAMES: Final = 3  # empty pops played as lost frames before an underrun (60 ms)
_GROW_AFTER_POPS: Final = 5  # 100 ms of pops finding fewer frames than the target
_SHRINK_AGAIN: Final = 5  # after a skip, 100 ms more of that skip the next frame
QUIET_LEVEL: Final = 100  # mean |sample| of a frame this low (about -50 dBFS) is a pause
_NO_CAP: Final = 1 << 30  # a stream's target cap when none was set
_JITTER_K: Final = 3  # the target covers this many times the jitter estimate
_TICK_SLACK: Final = FRAME_BYTES // 2  # jitter the 20 ms tick's quantisation explains
_UNDERRUN_JITTER: Final = 16 * FRAME_BYTES // _JITTER_K  # J16 added by an underrun (a frame)
_ABS_LEVEL: Final = (  # mean-|sample| tables, indexed [alaw][code]
    np.stack([np.abs(ULAW_DECODE.astype(np.int64)), np.abs(ALAW_DECODE.astype(np.int64))])
)
_SEQ_MASK: Final = (1 << _SEQ_WINDOW) - 1
_TS_MASK: Final = 0xFFFFFFFF

# columns of JitterBank.counts, in JitterStats field order
_RECEIVED, _LOST, _LATE, _DUPLICATE, _OVERFLOW, _UNDERRUNS, _RESETS, _SHRUNK, _GROWN = range(9)
_NCOUNTS: Final = 9

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
    shrunk: int = 0  # quiet frames skipped because the buffer stayed too deep
    grown: int = 0  # quiet pops held back (a pause lengthened) to deepen the buffer


class _State:
    """One stream's cursor state as Python ints, for the per-packet paths."""

    __slots__ = (
        "deep_pops", "end", "has_played", "has_transit", "head", "jit16", "max_seq", "playing",
        "read_ts", "seq_bits", "ssrc", "started", "transit",
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
        self.jit16 = int(bank.jit16[i])
        self.transit = int(bank.transit[i])
        self.has_transit = bool(bank.has_transit[i])

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
        bank.jit16[i] = self.jit16
        bank.transit[i] = self.transit
        bank.has_transit[i] = self.has_transit

    def observe(self, clock: int, ts: int) -> None:
        """RFC 3550's jitter estimate (scaled by 16), one packet's transit at a time."""
        transit = (clock * FRAME_BYTES - ts) & _TS_MASK
        if self.has_transit:
            d = ((transit - self.transit + 0x80000000) & _TS_MASK) - 0x80000000
            self.jit16 += abs(d) - ((self.jit16 + 8) >> 4)
        self.transit = transit
        self.has_transit = True

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
        # adaptive only with room below `depth`; otherwise the target stays at `depth`
        self.max_target = max(depth, max_depth - 4) if min_depth < depth else depth
        # J (x16) whose target is `depth`, half a frame inside that target's range:
        # 3 J - 80 = (depth - min_depth) frames - 80
        self.jit16_start = 16 * (depth - min_depth) * FRAME_BYTES // _JITTER_K
        self.depth_samples = depth * FRAME_BYTES
        self.max_samples = max_depth * FRAME_BYTES
        self.nframes = max_depth + 1
        self.capacity = 0
        self._free: list[int] = []
        self._retired = np.zeros(_NCOUNTS, dtype=np.int64)  # counts of streams since reopened
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
    shallow_pops: npt.NDArray[np.int64]  # consecutive pops finding fewer than target queued
    starved: npt.NDArray[np.int64]  # consecutive pops that found nothing buffered (coasting)
    target: npt.NDArray[np.int64]  # the stream's target depth in frames
    cap: npt.NDArray[np.int64]  # the stream's highest target (`cap_target`)
    jit16: npt.NDArray[np.int64]  # RFC 3550 jitter estimate in samples, times 16
    transit: npt.NDArray[np.int64]  # the last packet's transit (pop clock - RTP timestamp)
    has_transit: npt.NDArray[np.bool_]
    clock: npt.NDArray[np.int64]  # pops of the stream so far (its arrival clock)
    counts: npt.NDArray[np.int64]  # (streams, 9): JitterStats counters
    pt: npt.NDArray[np.int64]  # the audio payload type the stream's packets carry (-1: none)
    # pause hint of a stream whose bytes are not G.711 (G.722): 1 = the caller says its last
    # decoded frames were quiet, 0 = not; -1 (G.711) = read the levels from the codes
    pause_hint: npt.NDArray[np.int8]

    _FIELDS: Final = (
        ("ring", np.uint8, 0), ("filled", np.int64, 0), ("fill", np.uint8, 0xFF),
        ("ssrc", np.int64, -1), ("started", np.bool_, 0), ("playing", np.bool_, 0),
        ("has_played", np.bool_, 0), ("head", np.int64, 0), ("read_ts", np.int64, 0),
        ("end", np.int64, 0), ("max_seq", np.int64, 0), ("seq_bits", np.uint64, 0),
        ("deep_pops", np.int64, 0), ("target", np.int64, None), ("jit16", np.int64, 0),
        ("shallow_pops", np.int64, 0), ("starved", np.int64, 0),
        ("transit", np.int64, 0), ("has_transit", np.bool_, 0), ("clock", np.int64, 0),
        ("counts", np.int64, 0), ("pt", np.int64, -1), ("pause_hint", np.int8, -1),
        ("cap", np.int64, _NO_CAP),
    )

    def _allocate(self, capacity: int) -> None:
        old = self.capacity
        shapes = {
            "ring": (self.nframes, FRAME_BYTES), "filled": (self.nframes,), "counts": (_NCOUNTS,)
        }
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
        self.pause_hint[i] = -1
        self.cap[i] = _NO_CAP
        self.reset(i)
        return i

    def cap_target(self, i: int, frames: int) -> None:
        """Never let stream `i`'s target exceed `frames` (>= 1)."""
        self.cap[i] = max(1, frames)
        self.target[i] = min(int(self.target[i]), int(self.cap[i]))

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
        self.shallow_pops[i] = 0
        self.starved[i] = 0
        self.target[i] = min(self.depth, int(self.cap[i]))
        self.jit16[i] = self.jit16_start
        self.has_transit[i] = False

    def stats(self, i: int) -> JitterStats:
        return JitterStats(*(int(v) for v in self.counts[i]))

    def totals(self) -> JitterStats:
        """The counters summed over every stream this bank has had, closed ones included."""
        return JitterStats(*(int(v) for v in self._retired + self.counts.sum(axis=0)))

    def jitter(self, i: int) -> float:
        """Stream `i`'s inter-arrival jitter estimate in milliseconds."""
        return int(self.jit16[i]) / 16 / 8

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
        st.observe(int(self.clock[i]), ts)
        if offset < 0:
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
            idx, delta, offset, end_now, payload, seq, ts = (
                idx[take], delta[take], offset[take], end_now[take], payload[take], seq[take],
                ts[take],
            )
        if len(idx):
            self.counts[idx, _RECEIVED] += 1
            transit = (self.clock[idx] * FRAME_BYTES - ts) & _TS_MASK
            had = self.has_transit[idx]
            d = ((transit - self.transit[idx] + 0x80000000) & _TS_MASK) - 0x80000000
            jit = self.jit16[idx]
            self.jit16[idx] = np.where(had, jit + np.abs(d) - ((jit + 8) >> 4), jit)
            self.transit[idx] = transit
            self.has_transit[idx] = True
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
        self.clock[idx] += 1
        self._retarget(idx)
        end = self.end[idx]
        playing = self.playing[idx]
        target = self.target[idx] * FRAME_BYTES  # in samples
        starting = ~playing & (end >= target)
        if starting.any():
            self.playing[idx[starting]] = True
            self.has_played[idx[starting]] = True
            playing = playing | starting
        empty = playing & (end <= 0)
        go = playing & (end > 0)
        if empty.any():
            # Nothing buffered: a lost (or late) packet. For up to `_COAST_FRAMES` pops the
            # cursor runs on (the frame pops as lost and is concealed, the latency stays);
            # after that it is an underrun: the cursor stops and prefill starts again.
            starved = self.starved[idx]
            coast = empty & (starved < _COAST_FRAMES)
            self.starved[idx[empty]] = starved[empty] + 1
            stop = idx[empty & ~coast]
            if len(stop):
                self.playing[stop] = False
                self.counts[stop, _UNDERRUNS] += 1
                self.jit16[stop] += _UNDERRUN_JITTER
            go = go | coast
        head = self.head[idx]
        have = self.filled[idx, head] > 0
        codes: npt.NDArray[np.uint8] = self.ring[idx, head]
        # Below the target in a pause (this frame and the one played before it quiet): hold
        # the cursor for one pop, a frame of pause more (the caller conceals a quiet frame).
        low = go & (end < target)
        shallow = np.where(low, self.shallow_pops[idx] + 1, 0)
        self.shallow_pops[idx] = shallow
        grow = go & have & ~starting & (shallow >= _GROW_AFTER_POPS)
        if grow.any():
            k = np.flatnonzero(grow)
            hold = self._quiet(idx[k], head[k]) & self._quiet(idx[k], (head[k] - 1) % nf)
            if hold.any():
                held = np.zeros_like(go)
                held[k[hold]] = True
                self.counts[idx[held], _GROWN] += 1
                self.shallow_pops[idx[held]] = 0
                go = go & ~held
        ok = go & have
        if not go.any():
            return codes, ok
        g = idx[go]
        gh = head[go]
        new_head = (gh + 1) % nf
        new_end = np.maximum(end[go] - FRAME_BYTES, 0)
        new_ts = (self.read_ts[g] + FRAME_BYTES) & _TS_MASK
        deep = new_end > target[go] - FRAME_BYTES
        pops = np.where(deep, self.deep_pops[g] + 1, 0)
        ready = (pops >= _SHRINK_AFTER_POPS) & (new_end > 0)
        if ready.any():
            k = np.flatnonzero(ready)
            quiet = self._quiet(g[k], gh[k]) & self._quiet(g[k], new_head[k])
            shrink = np.zeros_like(ready)
            shrink[k[quiet]] = True
            if shrink.any():
                s = g[shrink]
                self.filled[s, new_head[shrink]] = 0
                new_head[shrink] = (new_head[shrink] + 1) % nf
                new_ts[shrink] = (new_ts[shrink] + FRAME_BYTES) & _TS_MASK
                new_end[shrink] -= FRAME_BYTES
                pops[shrink] = _SHRINK_AFTER_POPS - _SHRINK_AGAIN  # the excess is known
                self.counts[s, _SHRUNK] += 1
        self.deep_pops[g] = pops
        self.head[g] = new_head
        self.end[g] = new_end
        self.read_ts[g] = new_ts
        self.filled[g, gh] = 0
        self.starved[idx[go & (end > 0)]] = 0
        lost = go & ~have
        if lost.any():
            self.counts[idx[lost], _LOST] += 1
        return codes, ok

    def _quiet(self, streams: npt.NDArray[np.intp], slots: IntArray) -> npt.NDArray[np.bool_]:
        """Whether the frames in ring `slots` of `streams` are a pause (an unfilled slot is:
        it plays as concealment of the quiet frame before it, or as silence)."""
        alaw = (self.fill[streams] == ALAW_SILENCE).astype(np.intp)
        codes = self.ring[streams, slots]
        level = _ABS_LEVEL[alaw[:, None], codes].sum(axis=1)
        quiet: npt.NDArray[np.bool_] = (level < QUIET_LEVEL * FRAME_BYTES) | (
            self.filled[streams, slots] == 0
        )
        hint = self.pause_hint[streams]
        if (hint >= 0).any():  # not G.711: the caller's word on the frames it decoded last
            quiet = np.where(hint >= 0, (hint == 1) | (self.filled[streams, slots] == 0), quiet)
        return quiet

    def _retarget(self, idx: npt.NDArray[np.intp]) -> None:
        """Each stream's target from its jitter estimate (see the module docstring)."""
        extra = -((_TICK_SLACK * 16 - _JITTER_K * self.jit16[idx]) // (16 * FRAME_BYTES))
        self.target[idx] = np.minimum(
            np.clip(self.min_depth + extra, self.min_depth, self.max_target), self.cap[idx])


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
    def jitter(self) -> float:
        """The stream's inter-arrival jitter estimate in milliseconds."""
        return self.bank.jitter(self.index)

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
