"""Jitter buffer for G.711 RTP audio (one byte per sample), sans-IO.

Owns the reordering/de-jittering of one inbound stream. Packets are placed by RTP timestamp
into a byte ring of whole 160-sample frames, so any packetisation (10/20/30 ms, or odd sizes)
comes out as exactly one 20 ms frame per `pop()`. The media clock pops once per tick.

Policy:
- prefill: after (re)start, `pop()` yields nothing until `depth` frames are buffered ahead of
  the read cursor; the cursor then advances one frame per pop, a missing frame pops as None.
- underrun (nothing at all buffered): the cursor holds still and prefill starts again; the next
  packet re-bases the cursor on itself, so a talk spurt after silence suppression or a burst
  of loss does not add latency.
- late packets (behind the cursor) are dropped; duplicates (by sequence number, 64-packet
  window) are dropped; reordering inside the buffer is free.
- overflow: a packet ending more than `max_depth` frames ahead drops the oldest frames so that
  `depth` frames remain (latency cannot grow without bound).
- a new SSRC, or a timestamp more than 1 s away from the cursor, resets the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["FRAME_BYTES", "JitterBuffer", "JitterStats"]

FRAME_BYTES: Final = 160  # 20 ms of G.711 at 8 kHz
_RESYNC_SAMPLES: Final = 8000  # a timestamp this far (1 s) from the cursor restarts the stream
_SEQ_WINDOW: Final = 64
_SHRINK_AFTER_POPS: Final = 50  # 1 s of pops leaving more than the steady level queued
_SEQ_MASK: Final = (1 << _SEQ_WINDOW) - 1


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


class JitterBuffer:
    """De-jitters one G.711 stream: `push()` packets as they come, `pop()` one frame per tick."""

    __slots__ = (
        "_deep_pops",
        "_depth_samples",
        "_end",
        "_fill_frame",
        "_filled",
        "_has_played",
        "_head",
        "_max_samples",
        "_max_seq",
        "_nframes",
        "_playing",
        "_read_ts",
        "_ring",
        "_seq_bits",
        "_ssrc",
        "_started",
        "depth",
        "max_depth",
        "stats",
    )

    def __init__(self, depth: int = 2, max_depth: int = 10, fill: int = 0xFF) -> None:
        """`fill`: the codec's silence byte, used for gaps inside a partially received frame."""
        if depth < 1 or max_depth < depth:
            raise ValueError("need 1 <= depth <= max_depth")
        self.depth = depth
        self.max_depth = max_depth
        self._depth_samples = depth * FRAME_BYTES
        self._max_samples = max_depth * FRAME_BYTES
        self._nframes = max_depth + 1
        self._ring = bytearray(bytes([fill]) * (self._nframes * FRAME_BYTES))
        self._fill_frame = bytes([fill]) * FRAME_BYTES
        self._filled = [0] * self._nframes  # samples written per frame slot
        self.stats = JitterStats()
        self._ssrc: int | None = None
        self._head = 0  # ring frame slot of the read cursor
        self._read_ts = 0  # RTP timestamp of the read cursor
        self._end = 0  # samples from the cursor to the end of the furthest packet
        self._started = False
        self._playing = False
        self._has_played = False  # a frame has been popped since the stream (re)started
        self._max_seq = 0
        self._seq_bits = 0  # bit i set: sequence number (_max_seq - i) was received
        self._deep_pops = 0  # consecutive pops that left more than depth - 1 frames queued

    @property
    def fill(self) -> int:
        return self._fill_frame[0]

    @property
    def buffered_frames(self) -> int:
        """Frames between the read cursor and the end of the furthest packet (rounded up)."""
        return max(0, -(-self._end // FRAME_BYTES))

    def reset(self) -> None:
        """Forget everything buffered; the next packet starts a new stream (with prefill)."""
        self._filled = [0] * self._nframes
        self._head = 0
        self._end = 0
        self._started = False
        self._playing = False
        self._has_played = False
        self._seq_bits = 0
        self._ssrc = None
        self._deep_pops = 0

    def push(self, seq: int, ts: int, payload: bytes, ssrc: int | None = None) -> None:
        """Store one packet's payload at its timestamp position."""
        stats = self.stats
        stats.received += 1
        n = len(payload)
        if n == 0:
            return
        if ssrc is not None and ssrc != self._ssrc:
            if self._ssrc is not None:
                stats.resets += 1
                self.reset()
            self._ssrc = ssrc
        if not self._started:
            self._start(seq, ts)
        # Duplicate check against the sequence window.
        delta = ((seq - self._max_seq + 0x8000) & 0xFFFF) - 0x8000
        if -_SEQ_WINDOW < delta <= 0 and (self._seq_bits >> -delta) & 1:
            stats.duplicate += 1
            return
        offset = ((ts - self._read_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        if offset > 0 and not self._playing and self._end <= 0:
            # Waiting after an underrun with nothing buffered: re-base the cursor on this packet
            # (the wait already played out as silence, so skipping ahead adds no gap).
            self._read_ts = ts & 0xFFFFFFFF
            offset = 0
        if offset > _RESYNC_SAMPLES or offset < -_RESYNC_SAMPLES:
            stats.resets += 1
            ssrc_keep = self._ssrc
            self.reset()
            self._ssrc = ssrc_keep
            self._start(seq, ts)
            delta = 0
            offset = 0
        elif offset < 0:
            back = -(offset // FRAME_BYTES)
            if self._has_played or self._end + back * FRAME_BYTES > self._max_samples:
                stats.late += 1
                return
            # Reordered at the very start: move the cursor back (whole frames) to include it.
            self._head = (self._head - back) % self._nframes
            self._read_ts = (self._read_ts - back * FRAME_BYTES) & 0xFFFFFFFF
            self._end += back * FRAME_BYTES
            offset += back * FRAME_BYTES
        end = offset + n
        if end > self._max_samples:
            if n > self._max_samples:
                stats.dropped_overflow += 1
                return
            self._drop_frames(-(-(end - self._depth_samples) // FRAME_BYTES))
            offset = ((ts - self._read_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            end = offset + n
            if offset < 0:  # only possible when the packet itself is longer than depth
                payload = payload[-offset:]
                n = len(payload)
                offset = 0
        # Accepted: record the sequence number.
        if delta > 0:
            self._seq_bits = ((self._seq_bits << delta) | 1) & _SEQ_MASK
            self._max_seq = seq
        elif delta > -_SEQ_WINDOW:
            self._seq_bits |= 1 << -delta
        else:  # far behind: the sender restarted its sequence numbers
            self._seq_bits = 1
            self._max_seq = seq
        self._write(offset, payload, n)
        if end > self._end:
            self._end = end

    def _start(self, seq: int, ts: int) -> None:
        self._started = True
        self._playing = False
        self._has_played = False
        self._read_ts = ts & 0xFFFFFFFF
        self._max_seq = seq & 0xFFFF
        self._seq_bits = 0
        self._end = 0

    def _write(self, offset: int, payload: bytes, n: int) -> None:
        ring = self._ring
        filled = self._filled
        nframes = self._nframes
        slot = (self._head + offset // FRAME_BYTES) % nframes
        within = offset % FRAME_BYTES
        if within == 0 and n == FRAME_BYTES:  # the common case: one aligned 20 ms packet
            base = slot * FRAME_BYTES
            ring[base : base + FRAME_BYTES] = payload
            filled[slot] = FRAME_BYTES
            return
        view = memoryview(payload)
        pos = 0
        while pos < n:
            chunk = min(FRAME_BYTES - within, n - pos)
            base = slot * FRAME_BYTES
            have = filled[slot]
            if have == 0 and chunk < FRAME_BYTES:
                ring[base : base + FRAME_BYTES] = self._fill_frame
            ring[base + within : base + within + chunk] = view[pos : pos + chunk]
            filled[slot] = min(FRAME_BYTES, have + chunk)
            pos += chunk
            within = 0
            slot = (slot + 1) % nframes

    def _drop_frames(self, count: int) -> None:
        """Advance the cursor by `count` frames, discarding what they hold."""
        filled = self._filled
        nframes = self._nframes
        head = self._head
        for _ in range(min(count, nframes)):
            if filled[head]:
                self.stats.dropped_overflow += 1
                filled[head] = 0
            head = (head + 1) % nframes
        self._head = (self._head + count) % nframes
        self._read_ts = (self._read_ts + count * FRAME_BYTES) & 0xFFFFFFFF
        self._end = max(0, self._end - count * FRAME_BYTES)

    def pop(self) -> bytes | None:
        """The next 160 bytes by timestamp position, or None (prefilling, lost, or empty)."""
        if not self._playing:
            if self._end < self._depth_samples:
                return None
            self._playing = True
            self._has_played = True
        if self._end <= 0:
            self._playing = False
            self.stats.underruns += 1
            return None
        slot = self._head
        have = self._filled[slot]
        self._head = (slot + 1) % self._nframes
        self._read_ts = (self._read_ts + FRAME_BYTES) & 0xFFFFFFFF
        self._end -= FRAME_BYTES
        # Playout shrinking: a late tick or a burst leaves extra frames queued, and a steady
        # stream would keep them forever (the latency only ratchets up). After a pop the
        # steady level is depth - 1 frames; when more stay queued after every pop for a
        # whole second, skip one frame. (Ordinary jitter makes the level swing below the
        # steady one now and then, which restarts the count.)
        if self._end > self._depth_samples - FRAME_BYTES:
            self._deep_pops += 1
            if self._deep_pops >= _SHRINK_AFTER_POPS:
                self._deep_pops = 0
                self._skip_frame()
        else:
            self._deep_pops = 0
        if have:
            self._filled[slot] = 0
            base = slot * FRAME_BYTES
            return bytes(self._ring[base : base + FRAME_BYTES])
        self.stats.lost += 1
        return None

    def _skip_frame(self) -> None:
        """Discard the next frame (whatever it holds) to bring the latency down by 20 ms."""
        slot = self._head
        self._filled[slot] = 0
        self._head = (slot + 1) % self._nframes
        self._read_ts = (self._read_ts + FRAME_BYTES) & 0xFFFFFFFF
        self._end -= FRAME_BYTES
        self.stats.shrunk += 1
