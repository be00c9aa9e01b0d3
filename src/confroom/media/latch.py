"""`SourceGuard`: who may be a call's RTP source, sans-IO.

Owns the decision, per received RTP packet of one session, whether the address it came from
may send the call's audio (and so become where the call's RTP goes). It is fed the source
address, the packet's SSRC, sequence number and timestamp and the time, and answers `SAME`
(the latched source), `CHANGED` (a new source, accepted) or `REJECTED` (drop the packet). The
rule:

- until a first packet is accepted, the first source latches (symmetric RTP: a phone behind
  NAT sends from an address its SDP does not know), and a packet from the SDP's address
  always wins, at any time (`expect()` is told the SDP address);
- once latched, a packet from the latched address is always accepted (a new SSRC from it is
  the same peer restarting its stream); another address is accepted only with proof that an
  off-path stranger cannot fake: the SSRC of the latched stream and a sequence number and a
  timestamp that continue plausibly from the last accepted packet given the time since (a
  genuine NAT re-binding: the phone keeps its stream, only the address changes);
- an SDP that moves the remote address (`expect()`) re-opens the latch to that address;
- a pinned guard (`pin()`, node-to-node legs of a cluster) accepts only the one address it
  was pinned to: no first-source latch, no re-binding.

Every accepted change of address (not the first latch) and the first rejection of each
stranger address are appended to `events` (an engine shares one list among its sessions and
logs them); packets rejected and changes accepted are counted in `counters` (the engine's
`EngineStats`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple, Protocol

__all__ = ["GuardCounters", "SourceCounters", "SourceEvent", "SourceGuard", "Verdict"]

Addr = tuple[str, int]

# How far a genuine stream can have moved on since its last accepted packet:
_SEQ_BACK: Final = 32  # packets behind the last one (reordering across the address change)
_SEQ_AHEAD: Final = 64  # packets ahead, plus _PACKET_RATE per second since then
_PACKET_RATE: Final = 100  # packets per second at most (10 ms packets)
_SEQ_MAX_AHEAD: Final = 0x4000  # never more than a quarter of the sequence space
_CLOCK_RATE: Final = 8000  # RTP timestamp units per second at `clock_scale` 1 (G.711, G.722)
_TS_BACK: Final = 1600  # timestamp units behind (200 ms: reordering, our estimate of the last)
_TS_SLACK: Final = 8000  # units ahead beyond the elapsed time (1 s: jitter, packet size)
_TS_DRIFT: Final = 1.05  # a sender's clock may run this much faster than ours
_MAX_REPORTED: Final = 16  # stranger addresses reported one by one per session


class Verdict(IntEnum):
    SAME = 0  # from the latched source
    CHANGED = 1  # from a new source, accepted: it is the latched source from now on
    REJECTED = 2  # drop the packet


class SourceEvent(NamedTuple):
    """An accepted change of source, or the first rejected packet of a stranger address."""

    port: int  # the session's local RTP port
    old: Addr | None  # the latched address before
    new: Addr  # where the packet came from
    accepted: bool
    reason: str


class SourceCounters(Protocol):
    rtp_source_rejected: int  # packets rejected
    rtp_source_changed: int  # changes of source accepted


@dataclass(slots=True)
class GuardCounters:
    """The counters of a guard that is not part of an engine."""

    rtp_source_rejected: int = 0
    rtp_source_changed: int = 0


class SourceGuard:
    """The source rule of one session (see the module docstring)."""

    __slots__ = (
        "_reported", "at", "clock_scale", "counters", "events", "expected", "latched", "pinned",
        "port", "seq", "ssrc", "ts",
    )

    def __init__(self, port: int) -> None:
        self.port = port
        self.latched: Addr | None = None  # the accepted source
        self.expected: Addr | None = None  # the SDP's address
        # The last accepted packet (by sequence number) of the latched stream; ssrc -1: none.
        self.ssrc = -1
        self.seq = 0
        self.ts = 0
        self.at = 0.0
        self.clock_scale = 1  # the stream's RTP clock / 8000 (6 for Opus)
        self.events: list[SourceEvent] = []
        self.counters: SourceCounters = GuardCounters()
        self._reported: set[Addr] = set()
        self.pinned = False

    def pin(self, addr: Addr | None) -> None:
        """Accept packets from `addr` only (None: from nobody), whatever they carry."""
        self.pinned = True
        self.expected = addr
        self.latched = None

    def expect(self, addr: Addr | None) -> None:
        """The SDP says the remote's RTP address is `addr` (None: none usable). A new address
        re-opens the latch to it: its packets are accepted whatever their SSRC."""
        self.expected = addr

    def check(self, addr: Addr, ssrc: int, seq: int, ts: int, now: float) -> Verdict:
        """May this packet (from `addr`, a 2-tuple) be the session's audio? Accepted packets
        become the reference for the next decision."""
        latched = self.latched
        if addr == latched:
            self._note(ssrc, seq, ts, now)
            return Verdict.SAME
        if addr == self.expected:
            reason = "the SDP's address"
        elif self.pinned:
            self.counters.rtp_source_rejected += 1
            # (pinned to nobody yet: the peer's port is not known yet, nothing to report)
            if (self.expected is not None and addr not in self._reported
                    and len(self._reported) < _MAX_REPORTED):
                self._reported.add(addr)
                self.events.append(SourceEvent(self.port, self.expected, addr, False,
                                               "not the cluster node this leg is pinned to"))
            return Verdict.REJECTED
        elif latched is None:
            reason = "first source"
        else:
            reason = self._continuity(ssrc, seq, ts, now)
            if reason:
                self.counters.rtp_source_rejected += 1
                if addr not in self._reported and len(self._reported) <= _MAX_REPORTED:
                    self._reported.add(addr)
                    if len(self._reported) > _MAX_REPORTED:
                        reason += "; further stranger addresses are not reported for this call"
                    self.events.append(SourceEvent(self.port, latched, addr, False, reason))
                return Verdict.REJECTED
            reason = "continues its stream (same SSRC, sequence and timestamp)"
        self.latched = addr
        self._note(ssrc, seq, ts, now)
        if latched is not None:  # the first latch of a call is no change (and not logged)
            self.counters.rtp_source_changed += 1
            self.events.append(SourceEvent(self.port, latched, addr, True, reason))
        return Verdict.CHANGED

    def note(self, ssrc: int, seq: int, ts: int, at: float) -> None:
        """A packet of the latched source accepted elsewhere (the engine's batch path tells
        the guard the latest one before it lets other sources be heard again)."""
        if at >= self.at:
            self._note(ssrc, seq, ts, at)

    def _note(self, ssrc: int, seq: int, ts: int, now: float) -> None:
        if ssrc == self.ssrc and ((seq - self.seq) & 0xFFFF) >= 0x8000:
            return  # older than the reference (reordered): keep the newest
        self.ssrc = ssrc
        self.seq = seq
        self.ts = ts
        self.at = now

    def _continuity(self, ssrc: int, seq: int, ts: int, now: float) -> str:
        """Why the packet does not continue the latched stream ("" when it does)."""
        if self.ssrc < 0:
            return "nothing to continue (no packet of the latched source seen)"
        if ssrc != self.ssrc:
            return f"SSRC {ssrc:#010x} is not the latched stream's"
        elapsed = max(0.0, now - self.at)
        dseq = ((seq - self.seq + 0x8000) & 0xFFFF) - 0x8000
        ahead = min(_SEQ_MAX_AHEAD, _SEQ_AHEAD + int(elapsed * _PACKET_RATE))
        if not -_SEQ_BACK <= dseq <= ahead:
            return f"sequence number {seq} does not continue {self.seq} after {elapsed:.1f} s"
        dts = ((ts - self.ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        k = self.clock_scale
        if not -_TS_BACK * k <= dts <= (elapsed * _CLOCK_RATE * _TS_DRIFT + _TS_SLACK) * k:
            return f"timestamp {ts} does not continue {self.ts} after {elapsed:.1f} s"
        return ""
