"""RTP parsing/building, RFC 4733 telephone-events and the DTMF receiver."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from confroom.media.rtp import (
    DTMF_EVENTS,
    DtmfReceiver,
    RtpPacket,
    RtpSender,
    RtpSenders,
    build_rtp_header,
    parse_rtp,
    parse_telephone_event,
)


def test_build_and_parse_round_trip() -> None:
    header = build_rtp_header(0, True, 65535, 0xFFFFFFFF, 0xDEADBEEF)
    assert len(header) == 12
    assert header[0] == 0x80 and header[1] == 0x80
    pkt = parse_rtp(header + b"\x01\x02\x03")
    assert pkt == RtpPacket(0, True, 65535, 0xFFFFFFFF, 0xDEADBEEF, b"\x01\x02\x03")
    pkt = parse_rtp(build_rtp_header(101, False, 7, 8, 9))
    assert pkt == RtpPacket(101, False, 7, 8, 9, b"")


def test_csrc_list_is_skipped() -> None:
    header = bytes([0x82]) + build_rtp_header(8, False, 1, 2, 3)[1:]
    data = header + struct.pack("!II", 111, 222) + b"audio"
    pkt = parse_rtp(data)
    assert pkt is not None and pkt.payload == b"audio" and pkt.payload_type == 8


def test_extension_is_skipped() -> None:
    header = bytes([0x90]) + build_rtp_header(0, False, 1, 2, 3)[1:]
    ext = struct.pack("!HH", 0xBEDE, 2) + b"\x10\xaa\x00\x00" + b"\x00" * 4
    pkt = parse_rtp(header + ext + b"payload")
    assert pkt is not None and pkt.payload == b"payload"


def test_csrc_and_extension_and_padding_together() -> None:
    header = bytes([0xB1]) + build_rtp_header(0, False, 1, 2, 3)[1:]  # P, X, CC=1
    data = header + b"CSRC" + struct.pack("!HH", 1, 1) + b"EXT!" + b"abc" + b"\x00\x00\x03"
    pkt = parse_rtp(data)
    assert pkt is not None and pkt.payload == b"abc"


def test_padding_is_removed() -> None:
    header = bytes([0xA0]) + build_rtp_header(0, False, 1, 2, 3)[1:]
    pkt = parse_rtp(header + b"xyz" + b"\x00\x00\x00\x04")
    assert pkt is not None and pkt.payload == b"xyz"
    pkt = parse_rtp(header + b"\x00\x00\x00\x04")  # padding only
    assert pkt is not None and pkt.payload == b""


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00\x00",
        b"\x80" + b"\x00" * 10,  # 11 bytes
        b"\x40" + b"\x00" * 11 + b"payload",  # version 1
        b"\x00" + b"\x00" * 11,  # version 0
        b"\xc0" + b"\x00" * 11,  # version 3
        b"\x83" + b"\x00" * 11 + b"\x00" * 8,  # 3 CSRCs announced, 2 present
        b"\x90" + b"\x00" * 11 + b"\xbe\xde",  # extension header cut short
        b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x05" + b"\x00" * 8,  # extension length too big
        b"\xa0" + b"\x00" * 11 + b"ab\x00",  # padding count 0
        b"\xa0" + b"\x00" * 11 + b"ab\x09",  # padding longer than the packet body
    ],
)
def test_malformed_is_none(data: bytes) -> None:
    assert parse_rtp(data) is None


def test_parse_telephone_event() -> None:
    assert parse_telephone_event(bytes([5, 0x8A, 0x03, 0x20])) == (5, True, 10, 800)
    assert parse_telephone_event(bytes([11, 0x0A, 0x00, 0xA0])) == (11, False, 10, 160)
    assert parse_telephone_event(b"\x01\x02\x03") is None
    assert DTMF_EVENTS[10] == "*" and DTMF_EVENTS[11] == "#" and DTMF_EVENTS[15] == "D"


def _event_packets(
    event: int, start_seq: int, ts: int, ssrc: int = 42, repeats: int = 5
) -> list[RtpPacket]:
    """A realistic RFC 4733 event: marker start, growing duration, three end packets."""
    packets = []
    seq = start_seq
    for i in range(repeats):
        payload = struct.pack("!BBH", event, 10, 160 * (i + 1))
        packets.append(RtpPacket(101, i == 0, seq & 0xFFFF, ts, ssrc, payload))
        seq += 1
    for _ in range(3):
        payload = struct.pack("!BBH", event, 0x80 | 10, 160 * repeats)
        packets.append(RtpPacket(101, False, seq & 0xFFFF, ts, ssrc, payload))
        seq += 1
    return packets


def test_dtmf_one_digit_per_event() -> None:
    rx = DtmfReceiver()
    digits = [rx.feed(p) for p in _event_packets(1, 100, 16000)]
    assert digits == ["1"] + [None] * 7


def test_dtmf_same_digit_twice_is_two_events() -> None:
    rx = DtmfReceiver()
    packets = _event_packets(5, 100, 16000) + _event_packets(5, 108, 16000 + 2400)
    assert [d for d in (rx.feed(p) for p in packets) if d is not None] == ["5", "5"]


def test_dtmf_sequence_of_digits_with_loss_and_stragglers() -> None:
    rx = DtmfReceiver()
    first = _event_packets(11, 0, 4_294_966_000)  # '#' just before the timestamp wraps
    second = _event_packets(0, 8, 1000)  # '0' after the wrap
    third = _event_packets(10, 16, 5000)[2:]  # '*' whose first two packets were lost
    got = [rx.feed(p) for p in first + second]
    got.append(rx.feed(first[-1]))  # a late end packet of the first event
    got += [rx.feed(p) for p in third]
    assert [d for d in got if d is not None] == ["#", "0", "*"]


def test_dtmf_new_ssrc_is_a_new_event() -> None:
    rx = DtmfReceiver()
    assert rx.feed(_event_packets(3, 0, 800, ssrc=1)[0]) == "3"
    assert rx.feed(_event_packets(3, 0, 800, ssrc=2)[0]) == "3"


def test_dtmf_ignores_short_and_unknown_events() -> None:
    rx = DtmfReceiver()
    assert rx.feed(RtpPacket(101, True, 1, 160, 9, b"\x01")) is None
    assert rx.feed(RtpPacket(101, True, 2, 320, 9, struct.pack("!BBH", 70, 10, 160))) is None


def test_sender_advances_seq_and_ts_with_wrap() -> None:
    sender = RtpSender()
    assert 0 <= sender.ssrc < 2**32
    sender.seq = 65535
    sender.ts = 2**32 - 100
    first = parse_rtp(sender.next_header(0, marker=True))
    second = parse_rtp(sender.next_header(0))
    assert first is not None and second is not None
    assert (first.seq, first.timestamp, first.marker) == (65535, 2**32 - 100, True)
    assert (second.seq, second.timestamp, second.marker) == (0, 60, False)
    assert first.ssrc == second.ssrc == sender.ssrc
    sender.skip(160)
    third = parse_rtp(sender.next_header(8))
    assert third is not None and third.timestamp == 60 + 320 and third.payload_type == 8


def test_senders_start_randomly() -> None:
    starts = {(s.ssrc, s.seq, s.ts) for s in (RtpSender() for _ in range(5))}
    assert len(starts) == 5


def test_bank_headers_equal_next_header_and_continue_the_stream() -> None:
    """The tick builds headers for many streams at once: byte for byte what `next_header`
    gives, wrapping the same way, and a stream moved into the bank keeps its numbering."""
    bank = RtpSenders(capacity=1)
    singles = [RtpSender() for _ in range(5)]
    twins = [RtpSender() for _ in range(5)]
    for a, b in zip(singles, twins, strict=True):
        b.seq, b.ts = a.seq, a.ts
        b._bank.ssrc[b.index] = a.ssrc
        b.move_to(bank)
    singles[0].seq, twins[0].seq = 65535, 65535
    singles[1].ts, twins[1].ts = 2**32 - 100, 2**32 - 100
    idx = np.array([t.index for t in twins], dtype=np.intp)
    for k in range(3):
        second = np.array([0x80 | 8 if k == 0 else 0] * 5, dtype=np.uint8)
        out = np.zeros((5, 12), dtype=np.uint8)
        bank.headers(idx, second, out)
        want = [s.next_header(8 if k == 0 else 0, marker=k == 0) for s in singles]
        assert [bytes(row) for row in out] == want
    assert [t.seq for t in twins] == [s.seq for s in singles]
    assert [t.ts for t in twins] == [s.ts for s in singles]
