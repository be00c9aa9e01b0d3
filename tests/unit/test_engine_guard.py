"""MediaEngine with the source guard, over real sockets and a hand-driven clock: a stranger
sending to a paused member's port is never heard and receives nothing, the member is never
locked out, a NAT re-binding that continues the stream recovers, datagrams queued before the
socket latched are vetted, and the log has one line per change or stranger address."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from test_engine import Clock, RecordingMixer, _free_even_port_range, peak_hz

from confroom.media import g711
from confroom.media.engine import MediaEngine
from confroom.media.rtp import build_rtp_header
from confroom.media.session import MediaSession
from confroom.media.sources import FRAME_SAMPLES

TONE_MEMBER = 1000.0
TONE_STRANGER = 2000.0


def tone_frame(hz: float, k: int) -> bytes:
    t = (np.arange(FRAME_SAMPLES) + k * FRAME_SAMPLES) / 8000
    pcm = (12000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return g711.encode("PCMU", pcm).tobytes()


@dataclass
class Stream:
    """An RTP sender: one SSRC, sequence numbers and timestamps going on, any socket."""

    ssrc: int
    hz: float
    seq: int = 1000
    k: int = 0
    sock: socket.socket = field(default_factory=lambda: _udp())

    def send(self, port: int) -> None:
        header = build_rtp_header(0, False, self.seq & 0xFFFF, (5000 + self.k * 160), self.ssrc)
        self.sock.sendto(header + tone_frame(self.hz, self.k), ("127.0.0.1", port))
        self.seq += 1
        self.k += 1

    def pause(self, ticks: int) -> None:
        self.k += ticks  # the RTP clock runs on while nothing is sent

    def __post_init__(self) -> None:
        self.addr: tuple[str, int] = self.sock.getsockname()[:2]

    def rebind(self) -> socket.socket:
        """Go on sending from a new port (a NAT re-binding); the old socket is returned."""
        old, self.sock = self.sock, _udp()
        self.addr = self.sock.getsockname()[:2]
        return old


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return n
        n += 1


@pytest.fixture
async def engine() -> AsyncIterator[MediaEngine]:
    base = _free_even_port_range(2)
    e = MediaEngine("127.0.0.1", base, base + 3, rtp_timeout=0)
    try:
        yield e
    finally:
        await e.stop()


async def member(engine: MediaEngine, stream: Stream) -> MediaSession:
    s = await engine.open_session()
    s.update("PCMU", 0, None, *stream.addr, "sendrecv")  # the SDP is right
    return s


def heard(mixer: RecordingMixer, k: int = 0) -> list[float]:
    """The peak frequency of each frame the mixer got from session k (None frames left out)."""
    return [peak_hz(f) for seen in mixer.seen if (f := seen[k]) is not None]


async def test_paused_member_is_not_hijacked(
    engine: MediaEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confroom.media.engine")
    phone = Stream(0xA11CE, TONE_MEMBER)
    stranger = Stream(0xBAD, TONE_STRANGER)
    try:
        a = await member(engine, phone)
        mixer = RecordingMixer([a])
        engine.mixers.append(mixer)
        clock = Clock()
        for _ in range(10):
            phone.send(a.local_port)
            clock.run(engine, 1)
        assert heard(mixer)[-1] == pytest.approx(TONE_MEMBER, abs=50)
        drain(phone.sock)
        mixer.seen.clear()
        # The phone pauses 2.5 s; a stranger sends a loud tone to its port all that time.
        for _ in range(125):
            stranger.send(a.local_port)
            phone.pause(1)
            clock.run(engine, 1)
        assert all(abs(hz - TONE_STRANGER) > 100 for hz in heard(mixer))
        assert a.remote == phone.addr
        assert drain(stranger.sock) == 0  # not one packet of the call went to the stranger
        assert drain(phone.sock) >= 120  # the phone got its stream all along
        rejected = engine.stats.rtp_source_rejected
        assert 60 <= rejected <= 125  # those sent once the socket listened again
        # The phone resumes: heard again straight away, and the batch path takes it.
        mixer.seen.clear()
        for _ in range(10):
            stranger.send(a.local_port)
            phone.send(a.local_port)
            clock.run(engine, 1)
        assert heard(mixer)[-3:] == [pytest.approx(TONE_MEMBER, abs=50)] * 3
        assert engine.stats.rtp_source_rejected <= rejected + 1  # latched: the kernel drops
        assert drain(stranger.sock) == 0 and drain(phone.sock) >= 9
        assert engine.stats.rtp_source_changed == 0  # the first latch is no change
    finally:
        phone.sock.close()
        stranger.sock.close()
    lines = [r for r in caplog.records if "RTP port" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # the stranger, once
    assert f"{stranger.addr[0]}:{stranger.addr[1]} rejected" in lines[0].getMessage()
    assert lines[0].levelno == logging.WARNING


async def test_rebinding_recovers_quickly_and_is_logged_once(
    engine: MediaEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confroom.media.engine")
    phone = Stream(0x5EED, TONE_MEMBER)
    try:
        a = await member(engine, phone)
        mixer = RecordingMixer([a])
        engine.mixers.append(mixer)
        clock = Clock()
        for _ in range(20):
            phone.send(a.local_port)
            clock.run(engine, 1)
        old = phone.rebind()  # the NAT maps the phone to a new port; its stream goes on
        ticks = 0
        while a.remote != phone.addr and ticks < 100:
            phone.send(a.local_port)
            clock.run(engine, 1)
            ticks += 1
        assert a.remote == phone.addr
        assert ticks <= 63  # 1 s of silence, a 200 ms check, the next packet
        mixer.seen.clear()
        received = a.jitter.stats.received
        drain(phone.sock)
        drain(old)
        for _ in range(10):
            phone.send(a.local_port)
            clock.run(engine, 1)
        assert a.jitter.stats.received == received + 10
        assert heard(mixer)[-3:] == [pytest.approx(TONE_MEMBER, abs=50)] * 3
        assert drain(phone.sock) >= 9 and drain(old) == 0
        assert engine.stats.rtp_source_changed == 1 and engine.stats.rtp_source_rejected == 0
        old.close()
    finally:
        phone.sock.close()
    lines = [r.getMessage() for r in caplog.records if "RTP port" in r.getMessage()]
    assert len(lines) == 1 and "continues its stream" in lines[0]
    assert f"to {phone.addr[0]}:{phone.addr[1]}" in lines[0]


async def test_datagrams_queued_before_the_latch_are_vetted(engine: MediaEngine) -> None:
    phone = Stream(0x600D, TONE_MEMBER)
    stranger = Stream(0xBAD, TONE_STRANGER)
    try:
        a = await member(engine, phone)
        clock = Clock()
        phone.send(a.local_port)
        clock.run(engine, 1)
        clock.run(engine, 70)  # quiet: released
        # In one tick's queue: the phone's packet, then the stranger's. The phone's latches
        # the socket again; the kernel lets the ones queued before through to a plain read.
        phone.send(a.local_port)
        for _ in range(5):
            stranger.send(a.local_port)
        clock.run(engine, 1)
        assert engine.jitter.latest(a.jitter.index)[0] == phone.ssrc
        assert a.jitter.stats.received == 2 and engine.stats.rtp_source_rejected == 5
        assert a.remote == phone.addr
    finally:
        phone.sock.close()
        stranger.sock.close()


async def test_source_log_is_limited_and_summarised(
    engine: MediaEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confroom.media.engine")
    phones = [Stream(0x100 + i, TONE_MEMBER) for i in range(2)]
    strangers = [Stream(0x900 + i, TONE_STRANGER) for i in range(12)]
    try:
        sessions = [await member(engine, p) for p in phones]
        clock = Clock()
        for p, s in zip(phones, sessions, strict=True):
            p.send(s.local_port)
        clock.run(engine, 70)  # latched, then released
        caplog.clear()
        for st in strangers:
            for s in sessions:
                st.send(s.local_port)
        clock.run(engine, 50)
        lines = [r.getMessage() for r in caplog.records]
        rejected = [m for m in lines if "rejected, source stays" in m]
        assert len(rejected) == 20  # 24 stranger addresses in a second: 20 lines, a summary
        assert any("4 more source changes/rejections not logged" in m for m in lines)
        assert engine.stats.rtp_source_rejected == 24
    finally:
        for st in [*phones, *strangers]:
            st.sock.close()
