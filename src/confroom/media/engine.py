"""`MediaEngine`: the one 20 ms media clock and the RTP socket adapter.

Owns the RTP port range (one non-blocking UDP socket per session, on even ports) and the clock
task that calls `tick()` every 20 ms. `tick()` is plain synchronous code over all sessions at
once: read every socket until it is empty (no event-loop wake-up per packet: that costs twice
as much CPU as reading in the tick, and the jitter buffers are popped right after, so it adds
no latency), pop every jitter buffer, decode all frames of a codec with one table lookup, run
the mixers, gather every outbound frame, encode each codec with one lookup, send. It can be
driven by hand from tests (`add_session()` with a fake transport, then `tick(now)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from confroom.media.g711 import (
    ALAW_DECODE,
    ALAW_ENCODE,
    ALAW_SILENCE,
    ULAW_DECODE,
    ULAW_ENCODE,
    ULAW_SILENCE,
)
from confroom.media.session import MediaSession
from confroom.media.sources import FRAME_SAMPLES, Frame

__all__ = ["DatagramSender", "EngineStats", "MediaEngine", "MediaError", "Mixer"]

log = logging.getLogger(__name__)

_PLC_FRAMES: Final = 3  # a lost frame is concealed by fading repeats of the last one
_PLC_FADE_OUT: Final = np.linspace(1.0, 0.0, FRAME_SAMPLES, dtype=np.float64)
_MAX_LATE: Final = 0.1  # seconds behind schedule before the clock gives up catching up
_TIMEOUT_CHECK_EVERY: Final = 50  # ticks (1 s)
_MAX_READS: Final = 16  # datagrams read per socket per tick (a sender at 10 ms sends 2)
_MAX_DATAGRAM: Final = 2048
_RCVBUF: Final = 256 * 1024
_SILENCE_PAYLOAD: Final = {
    "PCMU": bytes([ULAW_SILENCE]) * FRAME_SAMPLES,
    "PCMA": bytes([ALAW_SILENCE]) * FRAME_SAMPLES,
}


class MediaError(Exception):
    """Media resources unavailable (e.g. no free RTP port)."""


class Mixer(Protocol):
    def mix(self, now: float) -> None:
        """Called once per tick after `inbound` is set on every session, before sending:
        read members' `.inbound`, write their `.mix_out`."""
        ...


class DatagramSender(Protocol):
    def sendto(self, data: bytes, addr: tuple[str, int], /) -> object: ...


_Outgoing = tuple[MediaSession, DatagramSender, tuple[str, int]]


@dataclass(slots=True)
class EngineStats:
    ticks: int = 0
    late_ticks: int = 0  # times the clock was more than 100 ms late and skipped ahead
    skipped_ticks: int = 0  # ticks dropped by those skips
    max_tick_duration: float = 0.0  # seconds spent inside tick(), worst case
    last_tick_duration: float = 0.0
    max_lateness: float = 0.0  # seconds a tick started after its scheduled time, worst case
    packets_sent: int = 0
    send_errors: int = 0


class MediaEngine:
    """All sessions, one clock. See the module docstring."""

    def __init__(
        self, host: str, port_min: int, port_max: int, rtp_timeout: float, ptime_ms: int = 20
    ) -> None:
        if ptime_ms != 20:
            raise ValueError("only ptime 20 ms is supported (one 160-sample frame per tick)")
        first = port_min + (port_min & 1)
        if first > port_max or port_min < 1 or port_max > 65535:
            raise ValueError(f"RTP port range {port_min}-{port_max} holds no even port")
        self.host = host
        self.port_min = first
        self.port_max = port_max
        self.rtp_timeout = rtp_timeout
        self.ptime_ms = ptime_ms
        self.period = ptime_ms / 1000.0
        self.mixers: list[Mixer] = []
        self.stats = EngineStats()
        self.sessions: dict[int, MediaSession] = {}  # by local port
        self._entries: list[tuple[MediaSession, DatagramSender]] = []  # rebuilt on change
        self._transports: dict[int, DatagramSender] = {}
        # sockets read at the start of each tick: (socket, its session's on_datagram)
        self._readers: list[tuple[socket.socket, Callable[[bytes, Any, float], None]]] = []
        self._cursor = first
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._clock(), name="media-clock")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in list(self.sessions.values()):
            self.close_session(session)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- sessions ---------------------------------------------------------------------------

    def _port_count(self) -> int:
        return (self.port_max - self.port_min) // 2 + 1

    def _next_port(self) -> int:
        port = self._cursor
        self._cursor = port + 2 if port + 2 <= self.port_max else self.port_min
        return port

    async def open_session(self) -> MediaSession:
        """A new session bound to a free even port of the range (round robin)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        now = asyncio.get_running_loop().time()
        for _ in range(self._port_count()):
            port = self._next_port()
            if port in self.sessions:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
                sock.bind((self.host, port))
            except OSError:
                sock.close()
                continue  # busy (another process) or not bindable: try the next one
            session = MediaSession(port, now=now)
            self.add_session(session, sock)
            self._readers = [*self._readers, (sock, session.on_datagram)]
            return session
        raise MediaError(f"no free RTP port in {self.port_min}-{self.port_max} on {self.host}")

    def add_session(self, session: MediaSession, transport: DatagramSender) -> None:
        """Register a session with its sending transport (used by tests and benchmarks too)."""
        port = session.local_port
        if port in self.sessions:
            raise MediaError(f"port {port} already has a session")
        self.sessions[port] = session
        self._transports[port] = transport
        self._entries = [*self._entries, (session, transport)]

    def close_session(self, s: MediaSession) -> None:
        """Stop the session and close its socket; the port becomes free again."""
        port = s.local_port
        if self.sessions.get(port) is not s:
            s.close()
            return
        del self.sessions[port]
        transport = self._transports.pop(port)
        self._entries = [e for e in self._entries if e[0] is not s]
        self._readers = [r for r in self._readers if r[1] != s.on_datagram]
        s.close()
        close = getattr(transport, "close", None)
        if close is not None:
            close()

    # --- the clock --------------------------------------------------------------------------

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.period
        stats = self.stats
        start = loop.time()
        k = 0
        while True:
            target = start + k * period
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # behind schedule: still let I/O run between ticks
            now = loop.time()
            late = now - target
            if late > stats.max_lateness:
                stats.max_lateness = late
            if late > _MAX_LATE:
                skip = int(late // period)
                k += skip
                stats.late_ticks += 1
                stats.skipped_ticks += skip
            try:
                self.tick(now)
            except Exception:
                log.exception("media tick failed")
            k += 1

    def tick(self, now: float) -> None:
        """One 20 ms step over every session: inbound, mixers, outbound, timeouts."""
        t0 = time.perf_counter()
        entries = self._entries
        stats = self.stats

        # (0) receive: drain every socket (bounded, so a flood on one port cannot stall us).
        for sock, on_datagram in self._readers:
            recv = sock.recvfrom
            for _ in range(_MAX_READS):
                try:
                    data, addr = recv(_MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError as e:  # e.g. an ICMP error queued on the socket
                    log.debug("RTP socket error: %s", e)
                    break
                on_datagram(data, addr, now)

        # (1) inbound: pop every jitter buffer, decode each codec's frames in one lookup.
        ulaw_sessions: list[MediaSession] = []
        ulaw_payloads: list[bytes] = []
        alaw_sessions: list[MediaSession] = []
        alaw_payloads: list[bytes] = []
        for s, _ in entries:
            payload = s.jitter.pop()
            if payload is not None:
                if s.codec == "PCMU":
                    ulaw_sessions.append(s)
                    ulaw_payloads.append(payload)
                else:
                    alaw_sessions.append(s)
                    alaw_payloads.append(payload)
            elif s._plc_left:
                s.inbound = s._last_in = _conceal(s)
            else:
                s.inbound = s._last_in = None
        if ulaw_sessions:
            _assign_decoded(ulaw_sessions, ulaw_payloads, ULAW_DECODE)
        if alaw_sessions:
            _assign_decoded(alaw_sessions, alaw_payloads, ALAW_DECODE)

        # (2) mixers.
        for mixer in self.mixers:
            try:
                mixer.mix(now)
            except Exception:
                log.exception("mixer %r failed", mixer)

        # (3) outbound: source frame, else the mix, else silence; one encode per codec.
        ulaw_out: list[_Outgoing] = []
        ulaw_frames: list[Frame] = []
        alaw_out: list[_Outgoing] = []
        alaw_frames: list[Frame] = []
        sent = 0
        for s, transport in entries:
            frame: Frame | None = None
            if s.source is not None:
                frame = _read_source(s)
            if frame is None:
                frame = s.mix_out
            s.mix_out = None
            remote = s.remote
            if not s.send_enabled or remote is None or s.closed:
                s.sender.skip(FRAME_SAMPLES)  # keep RTP time running while we are silent
                continue
            if s.dtmf_tx is not None:
                n_dtmf = _send_dtmf(s, transport, remote, stats)
                if n_dtmf is not None:  # this tick's packets were telephone-events, not audio
                    sent += n_dtmf
                    continue
            if frame is None:  # plain silence: a prebuilt payload, no encoding
                marker = s.marker_pending
                s.marker_pending = False
                header = s.sender.next_header(s.payload_type, marker)
                try:
                    transport.sendto(header + _SILENCE_PAYLOAD[s.codec], remote)
                    sent += 1
                except OSError:
                    stats.send_errors += 1
            elif s.codec == "PCMU":
                ulaw_out.append((s, transport, remote))
                ulaw_frames.append(frame)
            else:
                alaw_out.append((s, transport, remote))
                alaw_frames.append(frame)
        if ulaw_out:
            sent += _encode_and_send(ulaw_out, ulaw_frames, ULAW_ENCODE, stats)
        if alaw_out:
            sent += _encode_and_send(alaw_out, alaw_frames, ALAW_ENCODE, stats)
        stats.packets_sent += sent

        # (4) RTP inactivity, once per second.
        stats.ticks += 1
        if self.rtp_timeout > 0 and stats.ticks % _TIMEOUT_CHECK_EVERY == 0:
            self._check_timeouts(now)

        elapsed = time.perf_counter() - t0
        stats.last_tick_duration = elapsed
        if elapsed > stats.max_tick_duration:
            stats.max_tick_duration = elapsed

    def _check_timeouts(self, now: float) -> None:
        timeout = self.rtp_timeout
        for s, _ in self._entries:
            if s.check_timeout(now, timeout) and s.on_timeout is not None:
                try:
                    s.on_timeout()
                except Exception:
                    log.exception("on_timeout callback failed for %r", s)


def _conceal(s: MediaSession) -> Frame | None:
    """Packet-loss concealment: repeat the last frame at half the level each time, the last
    repeat fading out to zero (so the stream ends without a click)."""
    last = s._last_in
    left = s._plc_left
    s._plc_left = left - 1
    if last is None:
        return None
    frame: Frame = last >> 1
    if left == 1:
        frame = (frame * _PLC_FADE_OUT).astype(np.int16)
    return frame


def _assign_decoded(
    sessions: list[MediaSession], payloads: list[bytes], table: npt.NDArray[np.int16]
) -> None:
    codes = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(payloads), FRAME_SAMPLES)
    pcm = table[codes]
    for s, row in zip(sessions, pcm, strict=True):
        s.inbound = s._last_in = row
        s._plc_left = _PLC_FRAMES


def _read_source(s: MediaSession) -> Frame | None:
    """The current source's next frame; on its end, `on_play_done(True)` and, if that callback
    started another source, that source's first frame (no gap between prompts)."""
    for _ in range(2):
        source = s.source
        if source is None:
            return None
        frame = source.read()
        if frame is not None:
            return frame
        s.source = None
        callback = s.on_play_done
        if callback is not None:
            try:
                callback(True)
            except Exception:
                log.exception("on_play_done callback failed for %r", s)
    return None


def _send_dtmf(
    s: MediaSession, transport: DatagramSender, remote: tuple[str, int], stats: EngineStats
) -> int | None:
    """Send this tick's telephone-event packets of `s`: how many went out, or None when it
    has none this tick (then the tick sends audio as usual)."""
    tx = s.dtmf_tx
    pt = s.dtmf_payload_type
    if tx is None or pt is None:
        s.dtmf_tx = None
        return None
    packets = tx.tick_packets(s.sender, pt)
    if not tx.busy:
        s.dtmf_tx = None
    if not packets:
        return None
    sent = 0
    for pkt in packets:
        try:
            transport.sendto(pkt, remote)
            sent += 1
        except OSError:
            stats.send_errors += 1
    s.sender.skip(FRAME_SAMPLES)
    return sent


def _encode_and_send(
    out: list[_Outgoing],
    frames: list[Frame],
    table: npt.NDArray[np.uint8],
    stats: EngineStats,
) -> int:
    pcm = np.stack(frames)
    if pcm.dtype != np.int16:
        pcm = pcm.astype(np.int16)
    payloads = table[pcm.view(np.uint16)].tobytes()
    sent = 0
    pos = 0
    for s, transport, remote in out:
        marker = s.marker_pending
        s.marker_pending = False
        header = s.sender.next_header(s.payload_type, marker)
        try:
            transport.sendto(header + payloads[pos : pos + FRAME_SAMPLES], remote)
            sent += 1
        except OSError:
            stats.send_errors += 1
        pos += FRAME_SAMPLES
    return sent
