"""SourceGuard: who may be a session's RTP source (sans-IO decisions, no sockets, no sleeps)."""

from __future__ import annotations

import random

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from confroom.media.latch import SourceGuard, Verdict

PHONE = ("203.0.113.5", 40000)
REBOUND = ("203.0.113.5", 41234)  # the phone's NAT mapped it to a new port
STRANGER = ("198.51.100.66", 5004)
SDP = ("10.1.1.1", 4000)  # a NATed phone: its SDP address is private
SSRC = 0x1234ABCD


def latched_guard(seq: int = 100, ts: int = 16000, at: float = 10.0) -> SourceGuard:
    g = SourceGuard(30000)
    g.expect(SDP)
    assert g.check(PHONE, SSRC, seq, ts, at) is Verdict.CHANGED
    g.events.clear()
    return g


def test_first_source_latches_and_the_sdp_address_wins() -> None:
    g = SourceGuard(30000)
    g.expect(SDP)
    nat = ("192.0.2.9", 61000)  # the NATed phone's packets do not come from its SDP address
    assert g.check(nat, 7, 1, 160, 1.0) is Verdict.CHANGED
    assert g.latched == nat and not g.events  # the first latch is no change: not reported
    assert g.check(nat, 7, 2, 320, 1.02) is Verdict.SAME
    # Whatever was latched first, the SDP's own address takes over, any SSRC.
    assert g.check(SDP, 99, 5000, 9, 1.04) is Verdict.CHANGED
    assert g.latched == SDP and g.events[-1].reason == "the SDP's address"
    assert g.events[-1].old == nat and len(g.events) == 1
    assert g.counters.rtp_source_changed == 1 and g.counters.rtp_source_rejected == 0


def test_stranger_with_random_ssrc_is_rejected_even_after_a_long_pause() -> None:
    rng = random.Random(9)
    g = latched_guard()
    for pause in (0.5, 2.5, 60.0, 3600.0):
        for _ in range(200):
            ssrc = rng.randrange(1 << 32)
            if ssrc == SSRC:
                continue
            v = g.check(STRANGER, ssrc, rng.randrange(1 << 16), rng.randrange(1 << 32),
                        10.0 + pause)
            assert v is Verdict.REJECTED
    assert g.latched == PHONE and g.counters.rtp_source_rejected == 800
    # Logged once per stranger address, however many packets.
    assert len(g.events) == 1 and not g.events[0].accepted
    assert g.events[0].old == PHONE and g.events[0].new == STRANGER
    assert "SSRC" in g.events[0].reason
    # The phone itself is never locked out.
    assert g.check(PHONE, SSRC, 101, 16160, 3700.0) is Verdict.SAME


def test_rebinding_continuing_the_stream_is_accepted() -> None:
    # The phone kept sending (20 ms packets) while its packets were dropped for 1.5 s.
    g = latched_guard()
    assert g.check(REBOUND, SSRC, 100 + 75, 16000 + 75 * 160, 11.5) is Verdict.CHANGED
    assert g.latched == REBOUND and g.events[-1].accepted
    assert g.events[-1].old == PHONE and g.events[-1].new == REBOUND
    # The old address is now a stranger unless it continues the stream again.
    assert g.check(PHONE, 555, 176, 16000 + 76 * 160, 11.52) is Verdict.REJECTED


def test_phone_resuming_after_hold_from_a_new_port_is_accepted() -> None:
    # Five minutes on hold without a packet (the NAT binding expired): the sequence number
    # goes on by one; the timestamp either followed real time or stood still.
    for ts in (16160 + 300 * 8000, 16160):
        g = latched_guard()
        assert g.check(REBOUND, SSRC, 101, ts, 310.0) is Verdict.CHANGED


def test_sequence_or_timestamp_far_away_is_rejected() -> None:
    g = latched_guard()
    # Same SSRC (an attacker that guessed it) but the sequence number jumps.
    assert g.check(STRANGER, SSRC, 100 + 5000, 16000 + 160, 11.0) is Verdict.REJECTED
    assert "sequence number" in g.events[-1].reason
    assert g.check(STRANGER, SSRC, 100 - 40, 16000, 11.0) is Verdict.REJECTED  # far behind
    other = ("198.51.100.67", 5004)
    # Sequence fine, timestamp ten minutes ahead after one second.
    assert g.check(other, SSRC, 101, 16000 + 600 * 8000, 11.0) is Verdict.REJECTED
    assert "timestamp" in g.events[-1].reason
    assert g.check(other, SSRC, 101, 16000 - 8000, 11.0) is Verdict.REJECTED  # 1 s back
    assert g.latched == PHONE and g.counters.rtp_source_rejected == 4
    assert len(g.events) == 2  # one line per stranger address


def test_wrap_around_of_sequence_and_timestamp() -> None:
    g = latched_guard(seq=65530, ts=0xFFFFFF00, at=5.0)
    assert g.check(REBOUND, SSRC, 4, 0x100, 6.2) is Verdict.CHANGED  # both wrapped


def test_reordering_across_the_change() -> None:
    g = latched_guard(seq=500, ts=80000)
    # The first packet seen from the new port is a slightly older one: still the stream.
    assert g.check(REBOUND, SSRC, 498, 80000 - 320, 11.2) is Verdict.CHANGED
    assert g.seq == 500  # the reference keeps the newest packet
    assert g.check(REBOUND, SSRC, 501, 80160, 11.22) is Verdict.SAME and g.seq == 501


def test_sdp_move_reopens_the_latch_to_the_new_address() -> None:
    g = latched_guard()
    moved = ("198.51.100.20", 7000)
    assert g.check(moved, 0xBEEF, 1, 1, 12.0) is Verdict.REJECTED  # not yet signalled
    g.expect(moved)  # a re-INVITE moved the media there
    assert g.check(moved, 0xBEEF, 2, 161, 12.1) is Verdict.CHANGED
    assert g.latched == moved and g.ssrc == 0xBEEF
    assert g.check(STRANGER, 0xBEEF + 1, 3, 321, 12.2) is Verdict.REJECTED


def test_new_ssrc_from_the_latched_address_is_the_same_peer() -> None:
    g = latched_guard()
    assert g.check(PHONE, 0x5555, 9000, 777, 11.0) is Verdict.SAME
    assert g.ssrc == 0x5555 and g.seq == 9000
    assert not g.events  # not a change of source
    # The old stream is gone: continuing it from elsewhere proves nothing any more.
    assert g.check(REBOUND, SSRC, 101, 16160, 11.5) is Verdict.REJECTED
    assert g.check(REBOUND, 0x5555, 9001, 937, 11.5) is Verdict.CHANGED


def test_note_from_the_batch_path_moves_the_reference() -> None:
    g = latched_guard(seq=100, ts=16000, at=10.0)
    g.note(SSRC, 600, 16000 + 500 * 160, 20.0)  # 10 s of batched packets the guard never saw
    assert g.check(REBOUND, SSRC, 601, 16000 + 501 * 160, 21.0) is Verdict.CHANGED
    g.note(SSRC, 50, 0, 5.0)  # older than the reference: ignored
    assert g.seq == 601


def test_nothing_latched_yet_and_many_stranger_addresses() -> None:
    g = SourceGuard(30000)
    g.expect(SDP)
    assert g.check(SDP, SSRC, 1, 160, 1.0) is Verdict.CHANGED
    g.events.clear()
    for k in range(40):
        for _ in range(3):
            assert g.check(("198.51.100.1", 1000 + k), k, 1, 1, 2.0) is Verdict.REJECTED
    assert g.counters.rtp_source_rejected == 120
    assert len(g.events) == 17  # 16 addresses one by one, then one note that more are not
    assert "not reported" in g.events[-1].reason


# Properties over many streams (Hypothesis): what a stranger without the SSRC sends is never
# accepted; a stream that goes on from a new address is, after any pause.

_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)


@settings(max_examples=300, deadline=None)
@given(ssrc=_u32, seq=_u16, ts=_u32, other=_u32, seq2=_u16, ts2=_u32,
       pause=st.floats(0.0, 7200.0))
def test_property_other_ssrc_is_never_accepted(
    ssrc: int, seq: int, ts: int, other: int, seq2: int, ts2: int, pause: float
) -> None:
    assume(other != ssrc)
    g = SourceGuard(30000)
    g.expect(SDP)
    g.check(PHONE, ssrc, seq, ts, 1.0)
    assert g.check(STRANGER, other, seq2, ts2, 1.0 + pause) is Verdict.REJECTED
    assert g.latched == PHONE


@settings(max_examples=300, deadline=None)
@given(ssrc=_u32, seq=_u16, ts=_u32, sent=st.integers(1, 200), pause=st.floats(0.0, 600.0),
       clock_ran=st.booleans())
def test_property_continuing_stream_is_accepted(
    ssrc: int, seq: int, ts: int, sent: int, pause: float, clock_ran: bool
) -> None:
    """`sent` packets of 20 ms were lost to the old binding, then a pause of `pause` seconds
    (the RTP clock running on through it, or standing still as some phones do on hold)."""
    g = SourceGuard(30000)
    g.check(PHONE, ssrc, seq, ts, 1.0)
    elapsed = sent * 0.02 + pause
    advance = int(elapsed * 8000) if clock_ran else sent * 160
    verdict = g.check(REBOUND, ssrc, (seq + sent) & 0xFFFF, (ts + advance) & 0xFFFFFFFF,
                      1.0 + elapsed)
    assert verdict is Verdict.CHANGED
