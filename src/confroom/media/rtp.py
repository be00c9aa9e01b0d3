"""RTP (RFC 3550) packets and RFC 4733 telephone-events, sans-IO.

Owns: parsing a datagram into an `RtpPacket` (CSRC list, header extension and padding handled),
building the fixed 12-byte header, the sender state of outgoing streams (`RtpSenders`: SSRC,
sequence number and timestamp of many streams in numpy arrays, so the media clock builds all
headers of a tick at once; `RtpSender`: one of those streams, for packet-by-packet use), DTMF
reception (`DtmfReceiver`: one digit per telephone-event) and DTMF sending (`DtmfSender`: a
queue of digits turned into telephone-event packets, one tick at a time). The per-packet paths
are kept to `struct.unpack_from` and slicing.
"""

from __future__ import annotations

import random
import struct
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "DTMF_EVENTS",
    "DtmfReceiver",
    "DtmfSender",
    "RtpPacket",
    "RtpSender",
    "RtpSenders",
    "build_rtp_header",
    "parse_rtp",
    "parse_telephone_event",
]

DTMF_EVENTS: Final = "0123456789*#ABCD"  # RFC 4733 event codes 0..15

_HEADER: Final = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
_EXT_LENGTH: Final = struct.Struct("!H")  # header extension length, in 32-bit words
_EVENT: Final = struct.Struct("!BBH")  # event, E/R/volume, duration

_MIN_HEADER: Final = 12
_SAMPLES_PER_FRAME: Final = 160


class RtpPacket(NamedTuple):
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    """Parse one RTP datagram; None if it is not a well-formed RTP version 2 packet."""
    size = len(data)
    if size < _MIN_HEADER:
        return None
    first, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
    if first & 0xC0 != 0x80:
        return None
    offset = _MIN_HEADER + ((first & 0x0F) << 2)
    if first & 0x10:
        if size < offset + 4:
            return None
        offset += 4 + (_EXT_LENGTH.unpack_from(data, offset + 2)[0] << 2)
    end = size
    if first & 0x20:
        padding = data[-1]
        if padding == 0:
            return None
        end -= padding
    if offset > end:
        return None
    return RtpPacket(second & 0x7F, second >= 0x80, seq, timestamp, ssrc, data[offset:end])


def build_rtp_header(pt: int, marker: bool, seq: int, ts: int, ssrc: int) -> bytes:
    """The 12-byte fixed header (version 2, no padding, no extension, no CSRCs)."""
    return _HEADER.pack(
        0x80, (pt & 0x7F) | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
    )


def parse_telephone_event(payload: bytes) -> tuple[int, bool, int, int] | None:
    """RFC 4733 event payload -> (event, end, volume, duration); None if too short."""
    if len(payload) < 4:
        return None
    event, flags, duration = _EVENT.unpack_from(payload)
    return event, flags >= 0x80, flags & 0x3F, duration


class DtmfReceiver:
    """Turns a telephone-event stream into digits, each reported exactly once.

    RFC 4733: all packets of one event share the RTP timestamp of its start (the first packet
    usually carries the marker bit), the duration grows in the repeats, and the final state is
    sent three times with the E bit. A digit is reported on the first packet seen with a new
    (SSRC, timestamp); repeats and the redundant end packets are ignored. The same digit pressed
    twice is two events (two timestamps), so it is reported twice. Stragglers of an older event
    (timestamp slightly behind the last one) are ignored too.
    """

    __slots__ = ("_last_ssrc", "_last_ts")

    # Timestamps up to this far behind the last event are stale repeats, not new events
    # (10 s at 8 kHz; a sender that restarts its timestamps further back is a new stream).
    _STALE_WINDOW: Final = 80_000

    def __init__(self) -> None:
        self._last_ssrc: int | None = None
        self._last_ts = 0

    def reset(self) -> None:
        self._last_ssrc = None

    def feed(self, pkt: RtpPacket) -> str | None:
        """The digit if `pkt` starts a new DTMF event, else None."""
        payload = pkt.payload
        if len(payload) < 4:
            return None
        ts = pkt.timestamp
        if pkt.ssrc == self._last_ssrc:
            behind = (self._last_ts - ts) & 0xFFFFFFFF
            if behind < self._STALE_WINDOW:  # 0 = same event; small = an older event's packet
                return None
        self._last_ssrc = pkt.ssrc
        self._last_ts = ts
        event = payload[0]
        return DTMF_EVENTS[event] if event < 16 else None


class RtpSenders:
    """Outgoing stream state of many streams: SSRC, next sequence number and timestamp, in
    int64 arrays indexed by stream number (`open()` gives one out, `close()` takes it back;
    the arrays grow by doubling)."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = 0
        self.seq = np.zeros(0, dtype=np.int64)
        self.ts = np.zeros(0, dtype=np.int64)
        self.ssrc = np.zeros(0, dtype=np.int64)
        self._free: list[int] = []
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name in ("seq", "ts", "ssrc"):
            new = np.zeros(capacity, dtype=np.int64)
            new[:old] = getattr(self, name)
            setattr(self, name, new)
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    def open(self, seq: int, ts: int, ssrc: int) -> int:
        if not self._free:
            self._grow(self.capacity * 2)
        i = self._free.pop()
        self.seq[i] = seq & 0xFFFF
        self.ts[i] = ts & 0xFFFFFFFF
        self.ssrc[i] = ssrc & 0xFFFFFFFF
        return i

    def close(self, i: int) -> None:
        self._free.append(i)

    def headers(
        self,
        idx: npt.NDArray[np.intp],
        second_byte: npt.NDArray[np.uint8],
        out: npt.NDArray[np.uint8],
    ) -> None:
        """Write the next header of each (distinct) stream in `idx` into `out[:, :12]`
        (`second_byte`: marker bit | payload type per stream) and advance each stream by one
        packet of `_SAMPLES_PER_FRAME` samples."""
        seq = self.seq[idx]
        ts = self.ts[idx]
        out[:, 0] = 0x80
        out[:, 1] = second_byte
        out[:, 2:4] = seq.astype(">u2").view(np.uint8).reshape(-1, 2)
        out[:, 4:8] = ts.astype(">u4").view(np.uint8).reshape(-1, 4)
        out[:, 8:12] = self.ssrc[idx].astype(">u4").view(np.uint8).reshape(-1, 4)
        self.seq[idx] = (seq + 1) & 0xFFFF
        self.ts[idx] = (ts + _SAMPLES_PER_FRAME) & 0xFFFFFFFF


class RtpSender:
    """One outgoing stream: random SSRC, random initial sequence number and timestamp. It
    lives in a bank of its own until `move_to()` puts it into a shared `RtpSenders`."""

    __slots__ = ("_bank", "_i", "samples_per_packet")

    def __init__(self, samples_per_packet: int = _SAMPLES_PER_FRAME) -> None:
        rng = random.SystemRandom()
        self._bank = RtpSenders()
        self._i = self._bank.open(rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32))
        self.samples_per_packet = samples_per_packet

    def move_to(self, bank: RtpSenders) -> int:
        """Continue this stream (same SSRC, sequence and time) as a stream of `bank`; returns
        its number there."""
        i = bank.open(self.seq, self.ts, self.ssrc)
        self._bank.close(self._i)
        self._bank, self._i = bank, i
        return i

    @property
    def index(self) -> int:
        return self._i

    @property
    def seq(self) -> int:
        return int(self._bank.seq[self._i])

    @seq.setter
    def seq(self, value: int) -> None:
        self._bank.seq[self._i] = value & 0xFFFF

    @property
    def ts(self) -> int:
        return int(self._bank.ts[self._i])

    @ts.setter
    def ts(self, value: int) -> None:
        self._bank.ts[self._i] = value & 0xFFFFFFFF

    @property
    def ssrc(self) -> int:
        return int(self._bank.ssrc[self._i])

    def next_header(self, pt: int, marker: bool = False) -> bytes:
        """Header for the next packet; advances seq by 1 and the timestamp by one packet."""
        ts = self.ts
        header = self.event_header(pt, marker, ts)
        self.ts = ts + self.samples_per_packet
        return header

    def event_header(self, pt: int, marker: bool, ts: int) -> bytes:
        """Header for a telephone-event packet: the event's own (start) timestamp `ts`;
        advances the sequence number only (the caller advances time with `skip`)."""
        seq = self.seq
        self.seq = seq + 1
        return _HEADER.pack(0x80, (pt & 0x7F) | (0x80 if marker else 0), seq, ts & 0xFFFFFFFF,
                            self.ssrc)

    def skip(self, samples: int) -> None:
        """Advance the timestamp without sending (time passed while nothing was sent)."""
        self.ts = self.ts + samples


class DtmfSender:
    """Digits to send as RFC 4733 telephone-events, paced by the caller's 20 ms tick.

    `queue(digit)` appends a digit. Each tick, `tick_packets(sender, pt)` returns the packets
    of this tick (empty when idle): an event lasts `EVENT_TICKS` ticks; all its packets carry
    the RTP timestamp of its first tick (the first with the marker bit), the duration field
    grows by one frame per tick, and the last tick sends the end packet three times (RFC 4733
    section 2.5.1.4). A gap of `GAP_TICKS` ticks separates two queued digits. The caller sends
    these packets instead of the audio packet of that tick and advances the stream's timestamp
    by one frame as usual.
    """

    __slots__ = ("_digits", "_gap", "_pos", "_start_ts")

    EVENT_TICKS: Final = 8  # 160 ms per digit
    GAP_TICKS: Final = 3  # 60 ms between digits
    VOLUME: Final = 10  # -10 dBm0

    def __init__(self) -> None:
        self._digits: list[int] = []
        self._pos = 0  # ticks into the current event
        self._gap = 0  # ticks of gap left before the next event may start
        self._start_ts = 0

    def queue(self, digit: str) -> bool:
        """Queue one digit (0-9 * # A-D); False (ignored) for anything else."""
        code = DTMF_EVENTS.find(digit.upper()) if len(digit) == 1 else -1
        if code < 0:
            return False
        self._digits.append(code)
        return True

    @property
    def busy(self) -> bool:
        """True while an event or a gap is in progress or digits are waiting."""
        return bool(self._digits) or self._gap > 0

    def tick_packets(self, sender: RtpSender, pt: int) -> list[bytes]:
        if self._gap > 0:
            self._gap -= 1
            return []
        if not self._digits:
            return []
        event = self._digits[0]
        pos = self._pos
        if pos == 0:
            self._start_ts = sender.ts
        self._pos = pos + 1
        duration = (pos + 1) * sender.samples_per_packet  # at the stream's RTP clock
        if self._pos < self.EVENT_TICKS:
            payload = _EVENT.pack(event, self.VOLUME, duration)
            return [sender.event_header(pt, pos == 0, self._start_ts) + payload]
        payload = _EVENT.pack(event, 0x80 | self.VOLUME, duration)
        packets = [sender.event_header(pt, False, self._start_ts) + payload for _ in range(3)]
        self._digits.pop(0)
        self._pos = 0
        self._gap = self.GAP_TICKS
        return packets
