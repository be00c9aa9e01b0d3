"""`WideStream`: one wideband call leg's codec state (G.722 or Opus), sans-IO.

Owns the leg's decoder and encoder (media/codecs) and, for Opus, its packet buffer
(`OpusJitter`). The engine calls `decode_tick()` once per tick (G.722: with the 160-byte
frame its jitter stream popped, or None when it lost one; Opus: the leg's own buffer is
popped) and `encode()` once per packet it sends.

Opus packets vary in size, so they do not go into the engine's byte-ring jitter bank:
`OpusJitter` orders them by RTP timestamp (960 per 20 ms) and plays one frame per tick, with
the policy of media/jitter.py in small: a target depth from an RFC 3550 jitter estimate
(`depth` frames plus enough for 3 J beyond half a frame, at most 6; never below `depth`, 2
by default, so that the packet after a lost one is usually here for its FEC data),
a prefill to the target before playing, and depth changes only in pauses (the decoded frame
and the one before it quiet): below the target for 100 ms a quiet tick is held (nothing
played, the cursor stays), above it for 500 ms a quiet frame is skipped. A missing frame
hands the decoder the next packet when it is already here (in-band FEC), else nothing
(libopus's PLC). After `_COAST` missing frames in a row with nothing buffered it stops and
re-bases on the next packet (a pause, DTX, or a burst of loss adds no latency). A new SSRC or
a timestamp more than 1 s away restarts it; late and duplicate packets are dropped.
"""

from __future__ import annotations

import logging
from typing import Final

import numpy as np
import numpy.typing as npt

from confroom.media.codecs import Decoder, Encoder, OpusConfig, make_decoder, make_encoder

__all__ = ["OpusJitter", "WideStream"]

log = logging.getLogger(__name__)

_OPUS_TS: Final = 960  # RTP time per 20 ms at 48 kHz
_TS_MASK: Final = 0xFFFFFFFF
_RESYNC: Final = 48000  # 1 s
_COAST: Final = 3  # missing frames concealed before an underrun (60 ms)
_MAX_FRAMES: Final = 10  # buffered beyond this: the oldest are dropped (200 ms)
_MAX_TARGET: Final = 6  # frames
_GROW_AFTER: Final = 5  # pops below the target before a quiet tick is held (100 ms)
_SHRINK_AFTER: Final = 25  # pops above the target before a quiet frame is skipped (500 ms)
QUIET_LEVEL: Final = 100  # mean |sample| of a quiet frame (about -50 dBFS), as media/jitter.py


def _delta(a: int, b: int) -> int:
    """a - b in RTP time, signed (mod 2**32)."""
    return ((a - b + 0x80000000) & _TS_MASK) - 0x80000000


class OpusJitter:
    """Opus packets by timestamp, one 20 ms frame per pop (see the module docstring)."""

    __slots__ = ("_buf", "_clock", "_deep", "_jit", "_misses", "_next", "_playing",
                 "_shallow", "_ssrc", "_transit", "depth", "dropped", "grown", "quiet",
                 "received", "shrunk")

    def __init__(self, depth: int = 2) -> None:
        self.depth = max(1, depth)
        self._buf: dict[int, bytes] = {}
        self._next: int | None = None  # timestamp of the next frame to play
        self._playing = False
        self._misses = 0
        self._ssrc = -1
        self._clock = 0  # pops so far: the arrival clock of the jitter estimate
        self._transit: int | None = None
        self._jit = self._start_jitter()  # RFC 3550 J, in 48 kHz units
        self._shallow = 0  # pops in a row below the target
        self._deep = 0  # pops in a row above the target
        self.quiet = False  # the last two decoded frames were quiet (set by the decoder side)
        self.received = 0
        self.dropped = 0  # late, duplicate or overflowing packets
        self.grown = 0  # quiet ticks held to deepen the buffer
        self.shrunk = 0  # quiet frames skipped to make it shallower

    def _start_jitter(self) -> float:
        """J of a new stream: its target is `depth` (a clean one's J decays from there)."""
        return _OPUS_TS / 12

    @property
    def target(self) -> int:
        extra = -(-(3 * self._jit - _OPUS_TS / 2) // _OPUS_TS)
        return int(min(_MAX_TARGET, max(self.depth, self.depth + extra)))

    def reset(self) -> None:
        self._buf.clear()
        self._next = None
        self._playing = False
        self._misses = 0
        self._transit = None
        self._jit = self._start_jitter()

    def push(self, ts: int, payload: bytes, ssrc: int) -> None:
        self.received += 1
        if not payload:
            return
        if ssrc != self._ssrc:
            self.reset()
            self._ssrc = ssrc
        ts &= _TS_MASK
        transit = (self._clock * _OPUS_TS - ts) & _TS_MASK
        if self._transit is not None:
            self._jit += (abs(_delta(transit, self._transit)) - self._jit) / 16
        self._transit = transit
        if self._next is None:
            self._next = ts
        offset = _delta(ts, self._next)
        if abs(offset) > _RESYNC:
            self.reset()
            self._next = ts
            offset = 0
        if offset < 0:
            if self._playing:
                self.dropped += 1  # late: its frame was played (or concealed) already
                return
            self._next = ts  # not playing yet: start earlier
        if ts in self._buf:
            self.dropped += 1
            return
        self._buf[ts] = payload
        if len(self._buf) > _MAX_FRAMES:  # latency bound: drop from the front
            for old in sorted(self._buf, key=lambda t: _delta(t, ts))[: len(self._buf)
                                                                         - _MAX_FRAMES]:
                del self._buf[old]
                self.dropped += 1
            self._next = min(self._buf, key=lambda t: _delta(t, ts))

    def pop(self) -> tuple[bytes | None, bytes | None] | None:
        """This tick's frame: (payload, None), or (None, next payload or None) for a lost
        frame to conceal, or None when nothing is to be played."""
        self._clock += 1
        if self._next is None:
            return None
        target = self.target
        if not self._playing:
            if len(self._buf) < target:
                return None
            self._playing = True
            self._shallow = self._deep = 0
            self._next = min(self._buf, key=lambda t: _delta(t, self._next or 0))
        ahead = len(self._buf)
        self._shallow = self._shallow + 1 if ahead < target else 0
        self._deep = self._deep + 1 if ahead > target else 0
        if self.quiet and self._shallow >= _GROW_AFTER:
            self._shallow = 0
            self.grown += 1
            return None  # a quiet tick held: the buffer gains a frame, in a pause
        if self.quiet and self._deep >= _SHRINK_AFTER and self._next in self._buf:
            self._deep = 0
            self.shrunk += 1
            del self._buf[self._next]  # a quiet frame skipped, in a pause
            self._next = (self._next + _OPUS_TS) & _TS_MASK
        ts = self._next
        self._next = (ts + _OPUS_TS) & _TS_MASK
        payload = self._buf.pop(ts, None)
        if payload is not None:
            self._misses = 0
            return payload, None
        self._misses += 1
        if self._misses > _COAST and not self._buf:
            self._playing = False  # underrun: wait for the next packet and re-base on it
            self._next = None
            self._jit += _OPUS_TS / 3  # an underrun raises the target by a frame
            return None
        return None, self._buf.get(self._next)


class WideStream:
    """A wideband leg's codec state (see the module docstring)."""

    __slots__ = ("_was_quiet", "codec", "decode_errors", "decoder", "encoder", "opus_jitter")

    def __init__(self, codec: str, opus: OpusConfig | None = None, depth: int = 2) -> None:
        self.codec = codec
        self.decoder: Decoder = make_decoder(codec)
        self.encoder: Encoder = make_encoder(codec, opus)
        self.opus_jitter = OpusJitter(depth) if codec == "OPUS" else None
        self.decode_errors = 0
        self._was_quiet = False

    def decode_tick(self, frame: bytes | None) -> npt.NDArray[np.int16] | None:
        """This tick's 16 kHz frame, or None (nothing to play: the engine conceals)."""
        jitter = self.opus_jitter
        try:
            if jitter is None:
                return self.decoder.decode(frame)
            popped = jitter.pop()
            if popped is None:
                return None
            pcm = self.decoder.decode(*popped)
            if pcm is not None:  # the buffer changes its depth only in pauses
                quiet = bool(np.abs(pcm).mean() < QUIET_LEVEL)
                jitter.quiet = quiet and self._was_quiet
                self._was_quiet = quiet
            return pcm
        except (RuntimeError, ValueError) as e:
            self.decode_errors += 1
            if self.decode_errors in (1, 100, 10000):
                log.warning("%s decode error (%d so far): %s", self.codec, self.decode_errors, e)
            return None

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        return self.encoder.encode(pcm)
