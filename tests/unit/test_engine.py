"""MediaEngine: the tick driven by hand (fake transports), and one real-socket round trip."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import uvloop

from confroom.media import g711
from confroom.media.engine import MediaEngine, MediaError
from confroom.media.rtp import RtpPacket, build_rtp_header, parse_rtp
from confroom.media.session import MediaSession
from confroom.media.sources import FRAME_SAMPLES, Frame, PcmSource, ToneSource

TICK = 0.02


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True

    def packets(self) -> list[RtpPacket]:
        out = []
        for data, _ in self.sent:
            pkt = parse_rtp(data)
            assert pkt is not None
            out.append(pkt)
        return out


class RecordingMixer:
    def __init__(self, sessions: list[MediaSession]) -> None:
        self.sessions = sessions
        self.seen: list[list[Frame | None]] = []

    def mix(self, now: float) -> None:
        self.seen.append([s.inbound for s in self.sessions])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def run(self, engine: MediaEngine, ticks: int) -> None:
        for _ in range(ticks):
            engine.tick(self.now)
            self.now += TICK


def new_session(
    engine: MediaEngine,
    port: int,
    codec: str = "PCMU",
    direction: str = "sendrecv",
) -> tuple[MediaSession, FakeTransport]:
    s = MediaSession(port)
    s.update(codec, 0 if codec == "PCMU" else 8, 101, "10.0.0.9", port + 1000, direction)
    transport = FakeTransport()
    engine.add_session(s, transport)
    return s, transport


def decoded_payloads(transport: FakeTransport, codec: str) -> npt.NDArray[np.int16]:
    payload = b"".join(p.payload for p in transport.packets())
    return g711.decode(codec, np.frombuffer(payload, np.uint8))


def peak_hz(x: npt.NDArray[np.int16]) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / 8000)[int(np.argmax(spectrum))])


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_tone_is_sent_encoded(codec: str) -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    s, transport = new_session(engine, 20000, codec)
    s.play(ToneSource([1000.0], 0.5))
    Clock().run(engine, 25)
    packets = transport.packets()
    assert len(packets) == 25
    assert all(len(p.payload) == 160 for p in packets)
    assert all(p.payload_type == (0 if codec == "PCMU" else 8) for p in packets)
    assert [p.marker for p in packets] == [True] + [False] * 24
    seqs = [p.seq for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    stamps = [p.timestamp for p in packets]
    assert all((b - a) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(stamps))
    assert {addr for _, addr in transport.sent} == {("10.0.0.9", 21000)}
    pcm = decoded_payloads(transport, codec)
    assert peak_hz(pcm) == pytest.approx(1000, abs=5)
    assert np.abs(pcm).max() == pytest.approx(0.3 * 32767, rel=0.05)


def test_play_done_and_silence_after() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    s, transport = new_session(engine, 20000)
    done: list[bool] = []
    s.on_play_done = done.append
    s.play(PcmSource(np.full(320, 1000, np.int16)))
    clock = Clock()
    clock.run(engine, 2)
    assert done == []
    clock.run(engine, 1)
    assert done == [True] and not s.playing
    clock.run(engine, 2)
    payloads = [p.payload for p in transport.packets()]
    assert payloads[2:] == [b"\xff" * 160] * 3  # μ-law silence
    assert done == [True]


def test_prompts_chained_from_the_callback_have_no_gap() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    s, transport = new_session(engine, 20000)
    queue = [PcmSource(np.full(160, 2000, np.int16)), PcmSource(np.full(160, -2000, np.int16))]

    def next_prompt(finished: bool) -> None:
        if finished and queue:
            s.play(queue.pop(0))

    s.on_play_done = next_prompt
    s.play(PcmSource(np.full(160, 1000, np.int16)))
    Clock().run(engine, 4)
    levels = [int(f[0]) for f in decoded_payloads(transport, "PCMU").reshape(-1, 160)]
    expected = g711.decode("PCMU", g711.encode("PCMU", np.array([1000, 2000, -2000], np.int16)))
    assert levels[:3] == expected.tolist()
    assert levels[3] == 0


def test_no_sending_when_disabled_but_sources_advance() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    s, transport = new_session(engine, 20000, direction="sendonly")
    done: list[bool] = []
    s.on_play_done = done.append
    s.play(ToneSource([440.0], 0.1))
    Clock().run(engine, 6)
    assert transport.sent == []
    assert done == [True]
    ts_before = s.sender.ts
    engine.tick(200.0)
    assert (s.sender.ts - ts_before) & 0xFFFFFFFF == 160  # RTP time keeps running


def test_mixer_sees_decoded_inbound_and_mix_out_is_sent() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    a, _ta = new_session(engine, 20000, "PCMU")
    b, _tb = new_session(engine, 20002, "PCMA")
    c, tc = new_session(engine, 20004, "PCMU")
    mixer = RecordingMixer([a, b, c])
    engine.mixers.append(mixer)
    tone = g711.encode("PCMU", (np.arange(160) * 50 - 4000).astype(np.int16)).tobytes()
    alaw = g711.encode("PCMA", np.full(160, -1234, np.int16)).tobytes()
    clock = Clock()
    for i in range(4):
        a.on_datagram(build_rtp_header(0, False, i, i * 160, 1) + tone, ("10.0.0.9", 21000), 1.0)
        b.on_datagram(build_rtp_header(8, False, i, i * 160, 2) + alaw, ("10.0.0.9", 21002), 1.0)
    clock.run(engine, 1)
    seen = mixer.seen[-1]
    assert seen[2] is None
    assert seen[0] is not None and seen[1] is not None
    np.testing.assert_array_equal(seen[0], g711.decode("PCMU", np.frombuffer(tone, np.uint8)))
    np.testing.assert_array_equal(seen[1], g711.decode("PCMA", np.frombuffer(alaw, np.uint8)))

    class Echo:
        def mix(self, now: float) -> None:
            c.mix_out = a.inbound  # c hears a

    engine.mixers.append(Echo())
    clock.run(engine, 1)
    np.testing.assert_array_equal(
        decoded_payloads(tc, "PCMU")[-160:], g711.decode("PCMU", np.frombuffer(tone, np.uint8))
    )
    assert c.mix_out is None  # reset after sending
    engine.mixers.pop()
    clock.run(engine, 1)
    assert tc.packets()[-1].payload == b"\xff" * 160


def test_loss_concealment_fades_out() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    s, _ = new_session(engine, 20000)
    mixer = RecordingMixer([s])
    engine.mixers.append(mixer)
    code = g711.encode("PCMU", np.full(160, 8000, np.int16)).tobytes()
    for i in range(3):
        s.on_datagram(build_rtp_header(0, False, i, i * 160, 1) + code, ("10.0.0.9", 21000), 1.0)
    Clock().run(engine, 8)
    frames = [seen[0] for seen in mixer.seen]
    level = int(g711.ULAW_DECODE[code[0]])
    # Depth 2 is already buffered at the first tick: 3 real frames, then 3 concealment frames
    # (the signal continued at full level for 10 ms, then falling 20 % per 10 ms to silence
    # 60 ms into the loss), then nothing.
    assert [None if f is None else int(f[0]) for f in frames[:3]] == [level] * 3
    concealed = [f for f in frames[3:6] if f is not None]
    assert len(concealed) == 3
    assert np.all(concealed[0][:80] == level)
    env = np.concatenate(concealed).astype(np.int64)
    assert np.all(np.diff(env) <= 0) and abs(int(env[-1])) < level // 100
    assert frames[6] is None and frames[7] is None


def test_inactivity_timeout_fires_once() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=2.0)
    s, _ = new_session(engine, 20000)
    held, _held_t = new_session(engine, 20002, direction="sendonly")
    fired: list[float] = []
    held_fired: list[float] = []
    clock = Clock()
    s.on_timeout = lambda: fired.append(clock.now)
    held.on_timeout = lambda: held_fired.append(clock.now)
    start = clock.now
    clock.run(engine, 50 * 10)  # 10 s without RTP
    assert len(fired) == 1
    assert 2.0 < fired[0] - start <= 4.0
    assert held_fired == []
    # RTP comes back, then stops again: a second timeout.
    s.on_datagram(build_rtp_header(0, False, 1, 160, 5) + b"\xff" * 160, ("1.1.1.1", 9), clock.now)
    clock.run(engine, 50 * 5)
    assert len(fired) == 2


def test_timeout_disabled_with_zero() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    s, _ = new_session(engine, 20000)
    fired: list[int] = []
    s.on_timeout = lambda: fired.append(1)
    Clock().run(engine, 50 * 10)
    assert fired == []


def test_close_session_during_a_callback() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    a, ta = new_session(engine, 20000)
    b, tb = new_session(engine, 20002)
    a.on_play_done = lambda finished: engine.close_session(b)
    a.play(PcmSource(np.zeros(10, np.int16)))
    clock = Clock()
    clock.run(engine, 3)
    assert b.closed and tb.closed and 20002 not in engine.sessions
    sent_b = len(tb.sent)
    clock.run(engine, 2)
    assert len(tb.sent) == sent_b
    assert len(ta.sent) == 5


def test_stats() -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    new_session(engine, 20000)
    Clock().run(engine, 10)
    assert engine.stats.ticks == 10 and engine.stats.packets_sent == 10
    assert engine.stats.max_tick_duration > 0


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        MediaEngine("127.0.0.1", 20001, 20001, rtp_timeout=0)  # no even port
    with pytest.raises(ValueError):
        MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0, ptime_ms=30)


# --- real sockets ----------------------------------------------------------------------------


def _free_even_port_range(count: int) -> int:
    """A start port such that `count` even ports from it were free a moment ago."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1]) & ~1
        if base + 2 * count > 65535:
            continue
        socks = []
        try:
            for i in range(count):
                sk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sk)
                sk.bind(("127.0.0.1", base + 2 * i))
            return base
        except OSError:
            continue
        finally:
            for sk in socks:
                sk.close()
    raise RuntimeError("no free port range")


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))


async def _round_trip() -> None:
    base = _free_even_port_range(3)
    engine = MediaEngine("127.0.0.1", base, base + 3, rtp_timeout=5.0)  # ports base, base+2
    await engine.start()
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, local_addr=("127.0.0.1", 0))
    try:
        session = await engine.open_session()
        assert session.local_port in (base, base + 2)
        mixer = RecordingMixer([session])
        engine.mixers.append(mixer)
        # The SDP says a dead address; symmetric RTP must latch onto the client instead.
        session.update("PCMU", 0, 101, "127.0.0.1", 9, "sendrecv")
        session.play(ToneSource([1000.0], None))
        client_addr = transport.get_extra_info("sockname")[:2]
        payload = g711.encode("PCMU", np.full(160, 3000, np.int16)).tobytes()
        received: list[RtpPacket] = []
        for i in range(15):
            header = build_rtp_header(0, i == 0, i, 1000 + i * 160, 0xABCD)
            transport.sendto(header + payload, ("127.0.0.1", session.local_port))
            data, addr = await asyncio.wait_for(client.queue.get(), timeout=2.0)
            assert addr == ("127.0.0.1", session.local_port)
            pkt = parse_rtp(data)
            assert pkt is not None and pkt.payload_type == 0 and len(pkt.payload) == 160
            received.append(pkt)
        assert session.remote == client_addr
        assert session.jitter.stats.received == 15
        inbound = [seen[0] for seen in mixer.seen if seen[0] is not None]
        assert inbound and int(inbound[-1][0]) == int(g711.ULAW_DECODE[payload[0]])
        pcm = g711.decode("PCMU", np.frombuffer(b"".join(p.payload for p in received), np.uint8))
        assert peak_hz(pcm[-8 * FRAME_SAMPLES :]) == pytest.approx(1000, abs=30)
        assert engine.stats.ticks >= 10
        # Port exhaustion and reuse.
        second = await engine.open_session()
        with pytest.raises(MediaError):
            await engine.open_session()
        engine.close_session(second)
        third = await engine.open_session()
        assert third.local_port == second.local_port
    finally:
        transport.close()
        await engine.stop()
    assert not engine.sessions and not engine.running


@pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_real_socket_round_trip(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_with_timeout(_round_trip(), 10.0))


async def _with_timeout(coro: Coroutine[Any, Any, None], seconds: float) -> None:
    await asyncio.wait_for(coro, seconds)


async def test_busy_port_is_skipped() -> None:
    base = _free_even_port_range(2)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", base))
    engine = MediaEngine("127.0.0.1", base, base + 2, rtp_timeout=0)
    try:
        s = await engine.open_session()
        assert s.local_port == base + 2
        with pytest.raises(MediaError):
            await engine.open_session()
    finally:
        blocker.close()
        await engine.stop()


async def test_sockets_are_read_in_rounds_with_audio_batched() -> None:
    """The tick reads one datagram per readable socket per round: the plain 20 ms audio from
    the latched address goes into the jitter bank in one batch per round, everything else
    (the first packet from a new address, DTMF) through `on_datagram`; batched packets still
    count for the inactivity timer."""
    base = _free_even_port_range(2)
    engine = MediaEngine("127.0.0.1", base, base + 3, rtp_timeout=1.0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    here = client.getsockname()
    try:
        a = await engine.open_session()
        b = await engine.open_session()
        a.update("PCMU", 0, 101, here[0], here[1], "sendrecv")  # SDP already right: batched
        b.update("PCMA", 8, 101, "127.0.0.1", 9, "sendrecv")  # SDP wrong: latches first
        ulaw = g711.encode("PCMU", np.full(160, 1000, np.int16)).tobytes()
        alaw = g711.encode("PCMA", np.full(160, -2000, np.int16)).tobytes()

        def send(s: MediaSession, pt: int, seq: int, payload: bytes) -> None:
            header = build_rtp_header(pt, False, seq, 8000 + seq * 160, 0x1234 + pt)
            client.sendto(header + payload, ("127.0.0.1", s.local_port))

        # Two frames of `a` queued in one tick (two rounds), one of `b`, DTMF for `a`.
        send(a, 0, 0, ulaw)
        send(a, 0, 1, ulaw)
        send(b, 8, 0, alaw)
        for i in range(4):
            dtmf = struct.pack("!BBH", 5, (0x80 if i >= 2 else 0) | 10, 160 * (i + 1))
            client.sendto(build_rtp_header(101, i == 0, 100 + i, 4000, 0x99) + dtmf,
                          ("127.0.0.1", a.local_port))
        clock = Clock()
        clock.run(engine, 1)
        assert a.jitter.stats.received == 2 and b.jitter.stats.received == 1
        assert a.dtmf_digits == ["5"] and b.remote == here
        assert a.inbound is not None and int(a.inbound[0]) == int(g711.ULAW_DECODE[ulaw[0]])
        assert b.inbound is None  # prefilling: one frame of two
        sent_at = clock.now - TICK
        send(b, 8, 1, alaw)  # now from the latched address: batched
        clock.run(engine, 1)
        assert b.jitter.stats.received == 2
        assert b.inbound is not None and int(b.inbound[0]) == int(g711.ALAW_DECODE[alaw[0]])
        # The timer sees the batched packets: no timeout at 1 s after them, one at ~1.2 s.
        timeouts: list[MediaSession] = []
        a.on_timeout = lambda: timeouts.append(a)
        b.on_timeout = lambda: timeouts.append(b)
        clock.run(engine, 48)
        assert a.last_rx == sent_at and b.last_rx == sent_at + TICK and not timeouts
        clock.run(engine, 50)
        assert timeouts == [a, b]
    finally:
        client.close()
        await engine.stop()


async def test_latched_socket_ignores_others_and_is_released_after_silence() -> None:
    """Latched: the kernel drops other sources. After 1 s of silence the socket hears them
    again, but only a source continuing the stream (a NAT re-binding) or the SDP's new
    address is accepted; a stranger's packets are dropped (see test_engine_guard.py)."""
    base = _free_even_port_range(1)
    engine = MediaEngine("127.0.0.1", base, base + 1, rtp_timeout=0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    payload = g711.encode("PCMU", np.full(160, 500, np.int16)).tobytes()
    try:
        s = await engine.open_session()
        s.update("PCMU", 0, None, "127.0.0.1", 9, "sendrecv")
        clock = Clock()
        seq = 0

        def send(sock: socket.socket, ssrc: int = 7) -> None:
            nonlocal seq
            sock.sendto(build_rtp_header(0, False, seq, seq * 160, ssrc) + payload,
                        ("127.0.0.1", s.local_port))
            seq += 1

        send(peer)
        clock.run(engine, 1)
        assert s.remote == peer.getsockname()
        send(other)  # somebody else, while the peer is latched: the kernel drops it
        send(peer)
        clock.run(engine, 1)
        assert s.remote == peer.getsockname() and s.jitter.stats.received == 2
        # Our RTP goes to the peer through the connected socket.
        peer.settimeout(1.0)
        data, addr = peer.recvfrom(2048)
        assert addr == ("127.0.0.1", s.local_port) and len(data) == 172
        clock.run(engine, 100)  # 2 s of silence: the latch is released
        send(other, ssrc=8)  # a stranger: heard by the socket now, rejected by the guard
        clock.run(engine, 1)
        assert s.remote == peer.getsockname() and s.jitter.stats.received == 2
        assert engine.stats.rtp_source_rejected == 1
        send(other)  # the peer's stream from a new address (its NAT mapping changed)
        clock.run(engine, 1)
        assert s.remote == other.getsockname() and s.jitter.stats.received == 3
        assert engine.stats.rtp_source_changed == 1  # this one (the first latch is none)
        # An SDP moving the media elsewhere releases the latch as well: the new address is
        # accepted whatever its stream.
        s.update("PCMU", 0, None, *peer.getsockname(), "sendrecv")
        clock.run(engine, 1)
        send(peer, ssrc=1000)
        clock.run(engine, 1)
        assert s.remote == peer.getsockname() and s.jitter.stats.received == 4
    finally:
        peer.close()
        other.close()
        await engine.stop()


def test_audio_tap_gets_each_ticks_inbound_and_a_failing_tap_is_removed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = MediaEngine("127.0.0.1", 20000, 20100, rtp_timeout=0)
    a, _ta = new_session(engine, 20000, "PCMU")
    b, _tb = new_session(engine, 20002, "PCMU")
    got: list[npt.NDArray[np.int16] | None] = []
    a.audio_tap = got.append
    tone = g711.encode("PCMU", np.full(160, 2000, np.int16)).tobytes()
    for i in range(3):
        a.on_datagram(build_rtp_header(0, False, i, i * 160, 1) + tone, ("10.0.0.9", 21000), 1.0)
    clock = Clock()
    clock.run(engine, 3)
    assert len(got) == 3 and all(f is not None and f.shape == (160,) for f in got)
    np.testing.assert_array_equal(got[0], g711.decode("PCMU", np.frombuffer(tone, np.uint8)))
    clock.run(engine, 10)
    assert len(got) == 13 and got[-1] is None  # nothing arrives: None once concealment ends

    def broken(frame: npt.NDArray[np.int16] | None) -> None:
        raise RuntimeError("tap bug")

    b.audio_tap = broken
    with caplog.at_level(logging.ERROR):
        clock.run(engine, 5)
    assert b.audio_tap is None
    assert caplog.text.count("audio tap failed") == 1
    a.close()
    assert a.audio_tap is None
