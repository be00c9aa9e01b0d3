"""`WideStream`: one wideband call leg's codec state (G.722 or Opus), sans-IO.

Owns the leg's decoder and encoder (media/codecs) and, for Opus, its packet buffer
(`OpusJitter`). The engine calls `decode_tick()` once per tick (G.722: with the 160-byte
frame its jitter stream popped, or None when it lost one; Opus: the leg's own buffer is
popped) and `encode()` once per packet it sends.

Opus packets vary in size, so they do not go into the engine's byte-ring jitter bank:
`OpusJitter` orders them by RTP timestamp (960 per 20 ms), waits for `depth` packets before
playing, plays one frame per tick, and on a missing frame hands the decoder the next packet
when it is already here (in-band FEC), else nothing (libopus's PLC). After `_COAST` missing
frames in a row with nothing buffered it stops and re-bases on the next packet (a pause, DTX,
or a burst of loss adds no latency). A new SSRC or a timestamp more than 1 s away restarts it;
late and duplicate packets are dropped. Its depth is fixed (config jitter depth); the
adaptive policy of media/jitter.py applies to G.711 and G.722 only.
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


def _delta(a: int, b: int) -> int:
    """a - b in RTP time, signed (mod 2**32)."""
    return ((a - b + 0x80000000) & _TS_MASK) - 0x80000000


class OpusJitter:
    """Opus packets by timestamp, one 20 ms frame per pop (see the module docstring)."""

    __slots__ = ("_buf", "_misses", "_next", "_playing", "_ssrc", "depth", "dropped",
                 "received")

    def __init__(self, depth: int = 2) -> None:
        self.depth = max(1, depth)
        self._buf: dict[int, bytes] = {}
        self._next: int | None = None  # timestamp of the next frame to play
        self._playing = False
        self._misses = 0
        self._ssrc = -1
        self.received = 0
        self.dropped = 0  # late, duplicate or overflowing packets

    def reset(self) -> None:
        self._buf.clear()
        self._next = None
        self._playing = False
        self._misses = 0

    def push(self, ts: int, payload: bytes, ssrc: int) -> None:
        self.received += 1
        if not payload:
            return
        if ssrc != self._ssrc:
            self.reset()
            self._ssrc = ssrc
        ts &= _TS_MASK
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
        if self._next is None:
            return None
        if not self._playing:
            if len(self._buf) < self.depth:
                return None
            self._playing = True
            self._next = min(self._buf, key=lambda t: _delta(t, self._next or 0))
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
            return None
        return None, self._buf.get(self._next)


class WideStream:
    """A wideband leg's codec state (see the module docstring)."""

    __slots__ = ("codec", "decode_errors", "decoder", "encoder", "opus_jitter")

    def __init__(self, codec: str, opus: OpusConfig | None = None, depth: int = 2) -> None:
        self.codec = codec
        self.decoder: Decoder = make_decoder(codec)
        self.encoder: Encoder = make_encoder(codec, opus)
        self.opus_jitter = OpusJitter(depth) if codec == "OPUS" else None
        self.decode_errors = 0

    def decode_tick(self, frame: bytes | None) -> npt.NDArray[np.int16] | None:
        """This tick's 16 kHz frame, or None (nothing to play: the engine conceals)."""
        jitter = self.opus_jitter
        try:
            if jitter is None:
                return self.decoder.decode(frame)
            popped = jitter.pop()
            if popped is None:
                return None
            return self.decoder.decode(*popped)
        except (RuntimeError, ValueError) as e:
            self.decode_errors += 1
            if self.decode_errors in (1, 100, 10000):
                log.warning("%s decode error (%d so far): %s", self.codec, self.decode_errors, e)
            return None

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        return self.encoder.encode(pcm)
