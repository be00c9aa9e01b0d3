"""RFC 4733 sending: `DtmfSender` packets, the session's send queue, the engine's tick."""

from __future__ import annotations

import itertools
import struct

from confroom.media.engine import MediaEngine
from confroom.media.rtp import DtmfReceiver, DtmfSender, RtpSender, parse_rtp
from confroom.media.session import MediaSession
from confroom.media.sources import FRAME_SAMPLES


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)


def run_ticks(tx: DtmfSender, sender: RtpSender, n: int, pt: int = 101) -> list[list[bytes]]:
    out = []
    for _ in range(n):
        out.append(tx.tick_packets(sender, pt))
        sender.skip(FRAME_SAMPLES)
    return out


def test_one_digit_is_one_event_with_growing_duration_and_three_end_packets() -> None:
    tx = DtmfSender()
    assert tx.queue("5") and not tx.queue("x") and not tx.queue("55")
    sender = RtpSender()
    start_ts = sender.ts
    ticks = run_ticks(tx, sender, DtmfSender.EVENT_TICKS + DtmfSender.GAP_TICKS + 1)
    per_tick = [len(t) for t in ticks]
    assert per_tick == [1] * (DtmfSender.EVENT_TICKS - 1) + [3] + [0] * (DtmfSender.GAP_TICKS + 1)
    pkts = [parse_rtp(p) for t in ticks for p in t]
    assert all(p is not None for p in pkts)
    parsed = [p for p in pkts if p is not None]
    assert {p.timestamp for p in parsed} == {start_ts}  # every packet: the event's start
    assert {p.payload_type for p in parsed} == {101}
    assert [p.marker for p in parsed] == [True] + [False] * (len(parsed) - 1)
    seqs = [p.seq for p in parsed]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    events = [struct.unpack("!BBH", p.payload) for p in parsed]
    assert {e[0] for e in events} == {5}
    durations = [e[2] for e in events]
    assert durations == sorted(durations) and durations[-1] == 160 * DtmfSender.EVENT_TICKS
    ends = [bool(e[1] & 0x80) for e in events]
    assert ends == [False] * (DtmfSender.EVENT_TICKS - 1) + [True] * 3
    assert not tx.busy
    # a receiver reports it exactly once
    rx = DtmfReceiver()
    assert [d for p in parsed if (d := rx.feed(p))] == ["5"]


def test_two_digits_are_two_events_with_a_gap() -> None:
    tx = DtmfSender()
    tx.queue("1")
    tx.queue("#")
    sender = RtpSender()
    ticks = run_ticks(tx, sender, 2 * (DtmfSender.EVENT_TICKS + DtmfSender.GAP_TICKS))
    parsed = [p for t in ticks for raw in t if (p := parse_rtp(raw)) is not None]
    rx = DtmfReceiver()
    assert [d for p in parsed if (d := rx.feed(p))] == ["1", "#"]
    assert len({p.timestamp for p in parsed}) == 2


def test_session_send_dtmf_needs_a_negotiated_payload_type() -> None:
    s = MediaSession(40000)
    assert not s.send_dtmf("1")  # nothing negotiated
    s.update("PCMU", 0, 101, "127.0.0.1", 40002)
    assert s.send_dtmf("1") and s.dtmf_tx is not None
    assert not s.send_dtmf("?")


def test_engine_sends_events_instead_of_audio_then_resumes_audio() -> None:
    engine = MediaEngine("127.0.0.1", 40000, 40010, 0)
    s = MediaSession(40000)
    s.update("PCMU", 0, 101, "127.0.0.1", 40002)
    t = FakeTransport()
    engine.add_session(s, t)
    s.send_dtmf("9")
    total = DtmfSender.EVENT_TICKS + DtmfSender.GAP_TICKS + 2
    for i in range(total):
        engine.tick(i * 0.02)
    pkts = [p for raw in t.sent if (p := parse_rtp(raw)) is not None]
    kinds = [p.payload_type for p in pkts]
    n_events = DtmfSender.EVENT_TICKS - 1 + 3
    assert kinds == [101] * n_events + [0] * (DtmfSender.GAP_TICKS + 2)
    assert s.dtmf_tx is None  # idle again: the tick no longer looks at it
    # RTP time kept running: the first audio packet is EVENT_TICKS frames after the event
    first_audio = next(p for p in pkts if p.payload_type == 0)
    assert (first_audio.timestamp - pkts[0].timestamp) & 0xFFFFFFFF == (
        DtmfSender.EVENT_TICKS * FRAME_SAMPLES
    )
    seqs = [p.seq for p in pkts]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))


def test_received_digit_reaches_the_tap_too() -> None:
    s = MediaSession(40000)
    s.update("PCMU", 0, 101, "127.0.0.1", 40002)
    heard: list[str] = []
    tapped: list[str] = []
    s.on_dtmf = heard.append
    s.dtmf_tap = tapped.append
    sender = RtpSender()
    tx = DtmfSender()
    tx.queue("7")
    for ticks in run_ticks(tx, sender, DtmfSender.EVENT_TICKS):
        for raw in ticks:
            s.on_datagram(raw, ("127.0.0.1", 40002), 0.0)
    assert heard == ["7"] and tapped == ["7"]
