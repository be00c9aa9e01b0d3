"""MediaSession: negotiation flags, symmetric RTP latching, DTMF, playback callbacks."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from confroom.media.rtp import build_rtp_header
from confroom.media.session import MediaSession
from confroom.media.sources import SilenceSource, ToneSource


def rtp(pt: int, seq: int, ts: int, payload: bytes, ssrc: int = 77, marker: bool = False) -> bytes:
    return build_rtp_header(pt, marker, seq, ts, ssrc) + payload


def negotiated(direction: str = "sendrecv", codec: str = "PCMU", pt: int = 0) -> MediaSession:
    s = MediaSession(20000)
    s.update(codec, pt, 101, "10.0.0.1", 4000, direction)
    return s


def sending(s: MediaSession) -> bool:
    return s.send_enabled


def test_defaults_before_negotiation() -> None:
    s = MediaSession(20000, now=5.0)
    assert s.local_port == 20000 and s.remote is None
    assert not s.send_enabled and not s.receive_expected
    assert s.last_rx == 5.0 and s.inbound is None and s.mix_out is None and not s.closed


@pytest.mark.parametrize(
    ("direction", "send", "expect"),
    [
        ("sendrecv", True, True),
        ("sendonly", False, False),  # the remote holds us: we must not send
        ("recvonly", True, False),  # the remote only listens: no inactivity timeout
        ("inactive", False, False),
    ],
)
def test_remote_direction(direction: str, send: bool, expect: bool) -> None:
    s = negotiated(direction)
    assert (s.send_enabled, s.receive_expected) == (send, expect)
    assert s.remote == ("10.0.0.1", 4000)


def test_hold_by_zero_address_or_port() -> None:
    s = MediaSession(20000)
    s.update("PCMU", 0, None, "0.0.0.0", 4000, "sendrecv")
    assert not sending(s)
    s.update("PCMU", 0, None, "10.0.0.1", 0, "sendrecv")
    assert not sending(s)
    s.update("PCMU", 0, None, "10.0.0.1", 4000, "sendrecv")
    assert sending(s) and s.marker_pending


def test_update_rejects_bad_values() -> None:
    s = MediaSession(20000)
    with pytest.raises(ValueError):
        s.update("G729", 18, None, "10.0.0.1", 4000, "sendrecv")
    with pytest.raises(ValueError):
        s.update("PCMU", 0, None, "10.0.0.1", 4000, "sendreceive")


def test_codec_change_resets_the_jitter_buffer_fill() -> None:
    s = negotiated()
    assert s.jitter.fill == 0xFF
    s.update("PCMA", 8, 101, "10.0.0.1", 4000, "sendrecv")
    assert s.jitter.fill == 0xD5 and s.codec == "PCMA" and s.payload_type == 8


def test_audio_goes_to_the_jitter_buffer() -> None:
    s = negotiated()
    s.on_datagram(rtp(0, 1, 160, b"\x11" * 160), ("10.0.0.1", 4000), now=1.5)
    s.on_datagram(rtp(0, 2, 320, b"\x22" * 160), ("10.0.0.1", 4000), now=1.52)
    assert s.jitter.stats.received == 2
    assert s.last_rx == 1.52
    assert s.jitter.pop() == b"\x11" * 160


def test_symmetric_rtp_latching() -> None:
    s = negotiated()
    s.on_datagram(rtp(0, 1, 160, b"\xff" * 160), ("192.168.1.5", 5555), now=1.0)
    assert s.remote == ("192.168.1.5", 5555)  # NAT: answer where it really comes from
    s.on_datagram(rtp(0, 2, 320, b"\xff" * 160), ("192.168.1.5", 6666), now=1.02)
    assert s.remote == ("192.168.1.5", 6666)  # the same stream from a new port: re-latched
    # Garbage and unknown payload types never move the remote.
    s.on_datagram(b"\x00" * 40, ("6.6.6.6", 1), now=1.03)
    s.on_datagram(rtp(96, 3, 480, b"x" * 10), ("6.6.6.6", 2), now=1.04)
    assert s.remote == ("192.168.1.5", 6666)
    assert s.last_rx == 1.02
    # Comfort noise is a valid keepalive (latches, refreshes last_rx, not played).
    s.on_datagram(rtp(13, 4, 640, b"\x40"), ("192.168.1.5", 7777), now=1.1)
    assert s.remote == ("192.168.1.5", 7777) and s.last_rx == 1.1
    assert s.jitter.stats.received == 2


def test_stranger_is_dropped_unread() -> None:
    s = negotiated()
    heard: list[str] = []
    s.on_dtmf = heard.append
    assert s.on_datagram(rtp(0, 1, 160, b"\x11" * 160), ("192.168.1.5", 5555), now=1.0)
    stranger = ("6.6.6.6", 4000)
    # Audio and DTMF from another address with another SSRC, after a long pause.
    assert not s.on_datagram(rtp(0, 2, 320, b"\x22" * 160, ssrc=9), stranger, now=9.0)
    for i in range(4):
        event = struct.pack("!BBH", 5, 0x80 | 10, 160 * (i + 1))
        assert not s.on_datagram(rtp(101, 3 + i, 480, event, ssrc=9), stranger, now=9.0)
    assert s.remote == ("192.168.1.5", 5555) and s.last_rx == 1.0
    assert s.jitter.stats.received == 1 and heard == [] and s.dtmf_digits == []
    assert s.guard.counters.rtp_source_rejected == 5
    assert [e.new for e in s.guard.events if not e.accepted] == [stranger]


def test_sdp_address_change_reopens_the_latch_and_the_same_one_keeps_it() -> None:
    s = negotiated()  # SDP: 10.0.0.1:4000
    s.on_datagram(rtp(0, 1, 160, b"\xff" * 160), ("192.168.1.5", 5555), now=1.0)
    s.update("PCMU", 0, 101, "10.0.0.1", 4000, "sendonly")  # hold, same SDP address
    assert s.remote == ("192.168.1.5", 5555)  # still where its RTP comes from
    s.update("PCMU", 0, 101, "10.0.0.2", 4002, "sendrecv")  # moved
    assert s.remote == ("10.0.0.2", 4002) and s.marker_pending
    assert s.on_datagram(rtp(0, 7, 9, b"\xff" * 160, ssrc=1234), ("10.0.0.2", 4002), now=2.0)
    assert s.remote == ("10.0.0.2", 4002) and s.guard.latched == ("10.0.0.2", 4002)


def test_dtmf_digits_and_callback() -> None:
    s = negotiated()
    heard: list[str] = []
    s.on_dtmf = heard.append
    seq = 0
    for digit_event, ts in ((1, 8000), (1, 9600), (11, 12000)):
        for i in range(6):
            end = i >= 3
            payload = struct.pack("!BBH", digit_event, (0x80 if end else 0) | 10, 160 * (i + 1))
            s.on_datagram(rtp(101, seq, ts, payload, marker=i == 0), ("10.0.0.1", 4000), 2.0)
            seq += 1
    assert heard == ["1", "1", "#"]
    assert s.dtmf_digits == ["1", "1", "#"]
    assert s.jitter.stats.received == 0  # DTMF never reaches the audio path


def test_play_replace_and_stop_callbacks() -> None:
    s = negotiated()
    done: list[bool] = []
    s.on_play_done = done.append
    first = SilenceSource(1.0)
    s.play(first)
    assert s.playing and id(s.source) == id(first) and done == []
    s.play(ToneSource([440.0], 1.0))
    assert done == [False]
    s.stop()
    assert done == [False, False]
    assert s.source is None
    s.stop()  # nothing playing: no callback
    assert done == [False, False]


def test_close_ignores_everything_after() -> None:
    s = negotiated()
    done: list[bool] = []
    s.on_play_done = done.append
    s.play(SilenceSource(None))
    s.close()
    assert s.closed and done == [False] and not s.send_enabled
    s.on_datagram(rtp(0, 1, 160, b"\xff" * 160), ("1.2.3.4", 5), now=3.0)
    assert s.jitter.stats.received == 0 and s.remote == ("10.0.0.1", 4000)


def test_timeout_check_once_per_silence() -> None:
    s = negotiated()
    assert not s.check_timeout(0.0, 5.0)  # first check arms the timer at 0.0
    assert not s.check_timeout(4.9, 5.0)
    assert s.check_timeout(5.1, 5.0)
    assert not s.check_timeout(9.0, 5.0)  # only once
    s.on_datagram(rtp(0, 1, 160, b"\xff" * 160), ("10.0.0.1", 4000), now=10.0)
    assert not s.check_timeout(14.0, 5.0)
    assert s.check_timeout(15.5, 5.0)  # a new silence, a new timeout


def test_no_timeout_while_not_expecting_rtp() -> None:
    s = negotiated("sendonly")
    for t in np.arange(0.0, 100.0, 1.0):
        assert not s.check_timeout(float(t), 5.0)
