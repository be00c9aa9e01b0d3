"""`MediaEngine`: the one 20 ms media clock and the RTP socket adapter.

Owns the RTP port range (one non-blocking UDP socket per session, on even ports) and the clock
task that calls `tick()` every 20 ms. `tick()` is plain synchronous code over all sessions at
once:

1. receive: an epoll of the engine's own says which sockets are readable; each round reads one
   datagram from each of them (no event-loop wake-up per packet, no failing read per socket).
   A session's socket is `connect()`ed to the address its RTP is latched to, so the kernel
   drops anybody else's packets and reads need no source address: they land straight in one
   receive buffer, and a round's plain 20 ms audio packets go into the `JitterBank` in one
   batch; anything else (DTMF, comfort noise, odd sizes) goes through the session's
   `on_datagram()`, as does every packet on a socket that is not latched yet, and every
   packet of an SRTP session (unprotected there: nothing unauthenticated is decoded), where
   the session's `SourceGuard` (media/latch.py) decides whether its source may be the call's.
   Right after `connect()` the socket's queue is drained through that path (datagrams queued
   before it may come from anyone). A latched socket that hears nothing for
   `_RELATCH_AFTER` is released (checked every `_QUIET_CHECK_EVERY` ticks), so a peer whose
   address changed (NAT re-binding) can be heard, and vetted, again; so is one whose SDP
   moved the media elsewhere. The guard's changes and rejections are logged once each
   (at most `_SOURCE_LOG_BURST` lines a second, the rest summarised);
2. pop every jitter buffer in one pass and decode each codec with one table lookup, into the
   engine's `FrameTable` (with loss concealment); wideband legs (G.722, Opus) are decoded one
   by one by their `WideStream` into 16 kHz rows, and resampled to 8 kHz in one batch for
   everything that reads 8 kHz (a G.722 loss is concealed at 8 kHz and resampled back up;
   Opus conceals with FEC and its own PLC);
3. run the mixers (they read and write `FrameTable` rows);
4. build every outgoing packet of the tick in one array (headers from `RtpSenders`, payloads
   encoded with one lookup per codec; wideband legs encode their 16 kHz mix, or their 8 kHz
   frame resampled in one batch, one by one: G.722 into the same array, Opus as packets of
   their own), then send each (an SRTP session's packets protected on the way out); sources
   (prompts) and DTMF are handled per session first.

It can be driven by hand from tests (`add_session()` with a fake transport, then `tick(now)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from confroom.histogram import Histogram
from confroom.media.codecs import CodecPolicy
from confroom.media.frames import WB_SAMPLES, FrameTable
from confroom.media.g711 import (
    ALAW_DECODE,
    ALAW_ENCODE,
    ULAW_DECODE,
    ULAW_ENCODE,
)
from confroom.media.jitter import QUIET_LEVEL, JitterBank, JitterBuffer
from confroom.media.latch import SourceEvent
from confroom.media.resample import UP_HISTORY, down2, up2
from confroom.media.rtp import RtpSenders
from confroom.media.session import MediaSession, fill_byte
from confroom.media.sources import FRAME_SAMPLES, Frame
from confroom.media.srtp import SrtpContext
from confroom.media.webrtc import WebRtcTransport

__all__ = ["DatagramSender", "EngineStats", "MediaEngine", "MediaError", "Mixer"]

log = logging.getLogger(__name__)

_MAX_LATE: Final = 0.1  # seconds behind schedule before the clock gives up catching up
_MAX_READS: Final = 16  # datagrams read per socket per tick (a sender at 10 ms sends 2)
_EPOLL_BATCH: Final = 4096  # readable sockets taken per epoll round
_RELATCH_AFTER: Final = 1.0  # seconds of silence after which a latched socket is released
_QUIET_CHECK_EVERY: Final = 10  # ticks (200 ms) between checks for quiet latched sockets
_MAX_DRAIN: Final = 256  # queued datagrams vetted per read of a just-connected socket
_SOURCE_LOG_BURST: Final = 20  # source-guard log lines per second; the rest are summarised
# The common datagram, taken in batches: RTP v2 without padding, extension or CSRCs (first
# byte 0x80) carrying 20 ms of G.711.
_FAST_LEN: Final = 12 + FRAME_SAMPLES
_HOUSEKEEPING_EVERY: Final = 50  # ticks (1 s): inactivity timeouts, log summaries
_libc = ctypes.CDLL(None, use_errno=True)
_AF_UNSPEC_ADDR: Final = bytes(16)  # a sockaddr with sa_family AF_UNSPEC
_MAX_DATAGRAM: Final = 2048
_RCVBUF: Final = 256 * 1024
# buckets (seconds) of EngineStats.lateness and .tick_duration
LATENESS_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
TICK_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1)


class MediaError(Exception):
    """Media resources unavailable (e.g. no free RTP port)."""


class Mixer(Protocol):
    def mix(self, now: float) -> None:
        """Called once per tick after `inbound` is set on every session, before sending:
        read members' `.inbound`, write their `.mix_out`."""
        ...


class DatagramSender(Protocol):
    def sendto(self, data: bytes, addr: tuple[str, int], /) -> object: ...


# (its transport, where to, the latched socket's send() or None: then sendto, SRTP or None)
_Outgoing = tuple[
    DatagramSender, tuple[str, int], Callable[[bytes], int] | None, SrtpContext | None
]


class _Port:
    """A session's socket as the tick uses it."""

    __slots__ = ("fast", "peer", "send", "session", "sock", "stream")

    def __init__(self, sock: socket.socket, session: MediaSession) -> None:
        self.sock = sock
        self.session = session
        self.stream = session.jitter.index
        self.peer: tuple[str, int] | None = None  # the address the socket is connected to
        # connected, and nothing queued from before connect() is left: reads need no address
        self.fast = False
        self.send = sock.send

    def connect(self, peer: tuple[str, int]) -> None:
        try:
            self.sock.connect(peer)
        except OSError as e:
            log.warning("RTP port %d: cannot latch to %s: %s", self.session.local_port, peer, e)
            return
        self.peer = peer
        self.fast = False

    def release(self) -> None:
        """Dissolve the connection (connect to AF_UNSPEC): any source is heard again."""
        self.peer = None
        self.fast = False
        if _libc.connect(self.sock.fileno(), _AF_UNSPEC_ADDR, len(_AF_UNSPEC_ADDR)) != 0:
            err = ctypes.get_errno()
            if err != errno.EAFNOSUPPORT:  # some kernels report this after dissolving
                log.warning("RTP port %d: cannot release: %s", self.session.local_port,
                            os.strerror(err))


@dataclass(slots=True)
class EngineStats:
    ticks: int = 0
    late_ticks: int = 0  # times the clock was more than 100 ms late and skipped ahead
    skipped_ticks: int = 0  # ticks dropped by those skips
    max_tick_duration: float = 0.0  # seconds spent inside tick(), worst case
    last_tick_duration: float = 0.0
    max_lateness: float = 0.0  # seconds a tick started after its scheduled time, worst case
    # worst lateness / tick duration since a reader last reset them (admission control)
    recent_lateness: float = 0.0
    recent_tick_duration: float = 0.0
    packets_sent: int = 0
    send_errors: int = 0
    # every tick's lateness and duration (seconds), for the metrics endpoint
    lateness: Histogram = field(default_factory=lambda: Histogram(LATENESS_BUCKETS))
    tick_duration: Histogram = field(default_factory=lambda: Histogram(TICK_BUCKETS))
    rtp_source_rejected: int = 0  # RTP packets dropped by the source guard (media/latch.py)
    rtp_source_changed: int = 0  # changes of a call's RTP source address it accepted


class MediaEngine:
    """All sessions, one clock. See the module docstring."""

    def __init__(
        self, host: str, port_min: int, port_max: int, rtp_timeout: float, ptime_ms: int = 20,
        codec_policy: CodecPolicy | None = None,
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
        self.codec_policy = codec_policy or CodecPolicy()
        self.ptime_ms = ptime_ms
        self.period = ptime_ms / 1000.0
        self.mixers: list[Mixer] = []
        self.stats = EngineStats()
        self.sessions: dict[int, MediaSession] = {}  # by local port
        self._entries: list[tuple[MediaSession, DatagramSender]] = []  # rebuilt on change
        self._transports: dict[int, DatagramSender] = {}
        # sockets read at the start of each tick, by fd, and by the session's local port
        self._readers: dict[int, _Port] = {}
        self._ports: dict[int, _Port] = {}
        self._rx_buf = np.zeros((0, _MAX_DATAGRAM), dtype=np.uint8)  # a row per readable socket
        self._rx_rows: list[memoryview] = []
        self._poller = select.epoll()
        # every session's jitter buffer is a stream of this bank: popped in one pass per tick
        self.jitter = JitterBank(capacity=64, depth=2, min_depth=1)
        self._streams = np.zeros(0, dtype=np.intp)  # the jitter stream of each entry
        # every session's inbound / mix_out frames are rows of this table
        self.frames = FrameTable(capacity=64)
        self._rows = np.zeros(0, dtype=np.intp)  # the frame row of each entry
        # every session's outgoing RTP stream (SSRC, sequence, time): all headers in one go
        self.senders = RtpSenders(capacity=64)
        self._rx_at = np.zeros(self.jitter.capacity)  # last accepted packet per stream
        self._latched = np.zeros(self.jitter.capacity, dtype=np.bool_)  # socket connected
        self._stream_ports: dict[int, _Port] = {}
        self._source_events: list[SourceEvent] = []  # every session guard's, logged per tick
        self._source_logged = 0  # lines logged this second
        self._source_unlogged = 0  # events over the limit this second
        # jitter streams of SRTP sessions: never batched (see set_srtp); checked only when
        # there is at least one
        self._srtp_streams = np.zeros(self.jitter.capacity, dtype=bool)
        self._srtp_count = 0
        self._webrtc_count = 0  # sessions of WebRTC members (ICE/DTLS handled per tick)
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
        self._poller.close()

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
            if self._poller.closed:
                self._poller = select.epoll()
            self._poller.register(sock.fileno(), select.EPOLLIN)
            p = _Port(sock, session)
            self._readers[sock.fileno()] = p
            self._ports[port] = p
            self._stream_ports[p.stream] = p
            if len(self._readers) > len(self._rx_rows):
                rows = max(64, 2 * len(self._readers))
                self._rx_buf = np.zeros((rows, _MAX_DATAGRAM), dtype=np.uint8)
                self._rx_rows = [memoryview(row) for row in self._rx_buf]  # type: ignore[arg-type]
            return session
        raise MediaError(f"no free RTP port in {self.port_min}-{self.port_max} on {self.host}")

    def add_session(self, session: MediaSession, transport: DatagramSender) -> None:
        """Register a session with its sending transport (used by tests and benchmarks too)."""
        port = session.local_port
        if port in self.sessions:
            raise MediaError(f"port {port} already has a session")
        bank = self.jitter
        stream = bank.open(fill_byte(session.codec))
        bank.pt[stream] = session.jitter.payload_type  # with its "never batched" bit
        bank.pause_hint[stream] = session.jitter.bank.pause_hint[session.jitter.index]
        session.codec_policy = self.codec_policy
        if bank.capacity > len(self._rx_at):
            self._rx_at = np.resize(self._rx_at, bank.capacity)
            grown = np.zeros(bank.capacity, dtype=np.bool_)
            grown[: len(self._latched)] = self._latched
            self._latched = grown
        if bank.capacity > len(self._srtp_streams):
            self._srtp_streams = np.resize(self._srtp_streams, bank.capacity)
        self._rx_at[stream] = 0.0
        self._srtp_streams[stream] = False
        self._latched[stream] = False
        session.guard.events = self._source_events
        session.guard.counters = self.stats
        session.jitter = JitterBuffer.of(bank, stream)
        session.adopt_frames(self.frames)
        session.sender.move_to(self.senders)
        self.sessions[port] = session
        self._transports[port] = transport
        if session.srtp is not None:
            self.set_srtp(session, session.srtp)
        self._set_entries([*self._entries, (session, transport)])

    def _set_entries(self, entries: list[tuple[MediaSession, DatagramSender]]) -> None:
        self._entries = entries
        self._streams = np.array([s.jitter.index for s, _ in entries], dtype=np.intp)
        self._rows = np.array([s.frame_row for s, _ in entries], dtype=np.intp)
        self._senders = np.array([s.sender.index for s, _ in entries], dtype=np.intp)

    def close_session(self, s: MediaSession) -> None:
        """Stop the session and close its socket; the port becomes free again."""
        port = s.local_port
        if self.sessions.get(port) is not s:
            s.close()
            return
        if self._srtp_streams[s.jitter.index]:
            self._srtp_streams[s.jitter.index] = False
            self._srtp_count -= 1
        if s.webrtc is not None:
            self._webrtc_count -= 1
        del self.sessions[port]
        transport = self._transports.pop(port)
        self._set_entries([e for e in self._entries if e[0] is not s])
        self.jitter.close(s.jitter.index)
        s.adopt_frames(FrameTable())  # the row goes back to the engine's table
        s.sender.move_to(RtpSenders())
        self._ports.pop(port, None)
        self._stream_ports.pop(s.jitter.index, None)
        self._latched[s.jitter.index] = False
        if isinstance(transport, socket.socket) and transport.fileno() in self._readers:
            del self._readers[transport.fileno()]
            with contextlib.suppress(OSError, ValueError):
                self._poller.unregister(transport.fileno())
        s.close()
        close = getattr(transport, "close", None)
        if close is not None:
            close()

    def set_srtp(self, s: MediaSession, srtp: SrtpContext | None) -> None:
        """Make `s` an SRTP session (or a plain one again with None). Its packets then skip
        the batched receive path (they go through `on_datagram()`, which unprotects them)."""
        if self.sessions.get(s.local_port) is s:
            stream = s.jitter.index
            was = bool(self._srtp_streams[stream])
            now_srtp = srtp is not None or s.webrtc is not None  # WebRTC: always SRTP
            self._srtp_streams[stream] = now_srtp
            self._srtp_count += int(now_srtp) - int(was)
        s.srtp = srtp

    def set_webrtc(self, s: MediaSession, rtc: WebRtcTransport) -> None:
        """Make `s` a WebRTC member's session: ICE and DTLS on its port, SRTP once DTLS is
        done, nothing sent before."""
        if s.webrtc is None and self.sessions.get(s.local_port) is s:
            self._webrtc_count += 1
        s.webrtc = rtc
        self.set_srtp(s, s.srtp)

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
            stats.lateness.observe(late)
            if late > stats.max_lateness:
                stats.max_lateness = late
            if late > stats.recent_lateness:
                stats.recent_lateness = late
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

        # (0) receive: one datagram from each readable socket per round, until none is
        # readable (bounded, so a flood on one port cannot stall the clock).
        if self._readers:
            self._receive(now)
            if self._source_events:
                self._log_sources()

        # (0b) WebRTC members: STUN answers, DTLS flights and retransmissions, deadlines.
        if self._webrtc_count:
            self._webrtc_io(now)

        # (1) inbound: pop every jitter buffer in one pass, decode in one lookup per codec.
        if entries:
            self._inbound()

        # (2) mixers.
        for mixer in self.mixers:
            try:
                mixer.mix(now)
            except Exception:
                log.exception("mixer %r failed", mixer)

        # (3) outbound: source frame, else the mix, else silence; all packets built at once.
        frames = self.frames
        out: list[_Outgoing] = []
        out_entries: list[int] = []  # the entry index of each of `out`
        marked: list[int] = []  # positions in `out` whose packet carries the marker bit
        sent = 0
        ports = self._ports
        for k, (s, transport) in enumerate(entries):
            if s.audio_tap is not None:
                _feed_tap(s)
            if s.source is not None:
                frame = _read_source(s)
                if frame is not None:  # a prompt plays over the conference
                    s.mix_out = frame
            remote = s.remote
            send: Callable[[bytes], int] | None = None
            p = ports.get(s.local_port)
            if p is not None and p.peer is not None:
                if p.peer == remote:
                    send = p.send
                else:  # the SDP moved the media: hear other sources (vetted) again
                    self._release(p)
            if not s.send_enabled or remote is None or s.closed or (
                    s.webrtc is not None and s.srtp is None):  # WebRTC: not before DTLS
                s.sender.skip(s.sender.samples_per_packet)  # keep RTP time running
                continue
            if s.dtmf_tx is not None:
                n_dtmf = _send_dtmf(s, transport, remote, stats)
                if n_dtmf is not None:  # this tick's packets were telephone-events, not audio
                    sent += n_dtmf
                    continue
            if s.marker_pending:
                s.marker_pending = False
                marked.append(len(out))
            out.append((transport, remote, send, s.srtp))
            out_entries.append(k)
        if out:
            sent += self._encode_and_send(out, np.array(out_entries, dtype=np.intp), marked)
        frames.has_outbound[:] = False  # every frame of this tick is spent
        if frames.n_wide:
            frames.has_outbound_wb[:] = False
        stats.packets_sent += sent

        # (4) quiet latched sockets, five times a second; RTP inactivity, once per second.
        stats.ticks += 1
        if stats.ticks % _QUIET_CHECK_EVERY == 0:
            self._release_quiet(now)
        if stats.ticks % _HOUSEKEEPING_EVERY == 0:
            self._housekeeping(now)

        elapsed = time.perf_counter() - t0
        stats.last_tick_duration = elapsed
        stats.tick_duration.observe(elapsed)
        if elapsed > stats.recent_tick_duration:
            stats.recent_tick_duration = elapsed
        if elapsed > stats.max_tick_duration:
            stats.max_tick_duration = elapsed

    def _webrtc_io(self, now: float) -> None:
        """Send what the WebRTC members' ICE/DTLS produced; end a call whose DTLS failed
        or did not complete in time (one clear log line per call)."""
        for s, transport in self._entries:
            rtc = s.webrtc
            if rtc is None:
                continue
            rtc.poll(now)
            if rtc.outbox:
                out, rtc.outbox = rtc.outbox, []
                for data, addr in out:
                    try:
                        transport.sendto(data, addr)
                    except OSError as e:
                        log.debug("WebRTC send to %s failed: %s", _fmt(addr), e)
            if rtc.error is not None and not rtc.failure_reported:
                rtc.failure_reported = True
                log.warning("WebRTC media on port %d: %s (ICE checks answered %d, refused "
                            "%d); ending the call", s.local_port, rtc.error, rtc.ice.answered,
                            rtc.ice.rejected)
                if s.on_timeout is not None:
                    try:
                        s.on_timeout()
                    except Exception:
                        log.exception("on_timeout callback failed for %r", s)

    def _receive(self, now: float) -> None:
        """Rounds of one datagram per readable socket (see the module docstring)."""
        readers = self._readers
        poll = self._poller.poll
        rows = self._rx_rows
        trunc = socket.MSG_TRUNC
        for _ in range(_MAX_READS):
            ready = poll(0, _EPOLL_BATCH)
            if not ready:
                return
            got: list[_Port] = []
            lens: list[int] = []
            streams: list[int] = []
            k = 0
            for fd, _events in ready:
                p = readers.get(fd)
                if p is None:
                    continue
                try:
                    if p.fast:  # latched: straight into the round's buffer
                        lens.append(p.sock.recv_into(rows[k], _MAX_DATAGRAM, trunc))
                        got.append(p)
                        streams.append(p.stream)
                        k += 1
                        continue
                    if p.peer is not None:  # connected, but older datagrams are queued
                        self._drain(p, now)
                        continue
                    data, addr = p.sock.recvfrom(_MAX_DATAGRAM)
                except BlockingIOError:
                    continue
                except OSError as e:  # e.g. an ICMP error queued on the socket
                    log.debug("RTP socket error: %s", e)
                    continue
                if self._take(p, data, addr, now):  # latched: vet what was queued before
                    self._drain(p, now)
            if got:
                self._push_round(got, lens, streams, now)

    def _push_round(
        self, got: list[_Port], lens: list[int], stream_list: list[int], now: float
    ) -> None:
        """One round of datagrams from latched sockets (row k of the receive buffer is
        `got[k]`'s): plain 20 ms audio into the jitter bank in one batch, the rest one by one."""
        n = len(got)
        buf = self._rx_buf[:n]
        size = np.array(lens, dtype=np.intp)
        streams = np.array(stream_list, dtype=np.intp)
        pts = self.jitter.pt[streams]
        fast = (size == _FAST_LEN) & (buf[:, 0] == 0x80) & ((buf[:, 1] & 0x7F) == pts)
        if self._srtp_count:  # SRTP packets are authenticated one by one in on_datagram()
            fast &= ~self._srtp_streams[streams]
        single = np.flatnonzero(~fast).tolist()
        if len(single) < n:
            rows = buf[fast]
            fields = np.ascontiguousarray(rows[:, 2:12])
            seq = fields[:, :2].view(">u2")[:, 0].astype(np.int64)
            ts_ssrc = fields[:, 2:].view(">u4").astype(np.int64)
            taken = streams[fast]
            rest = self.jitter.push_frames(
                taken, seq, ts_ssrc[:, 0], ts_ssrc[:, 1], rows[:, 12:_FAST_LEN]
            )
            self._rx_at[taken] = now
            if rest.any():
                single = sorted(single + np.flatnonzero(fast)[rest].tolist())
        for k in single:
            p = got[k]
            if lens[k] > _MAX_DATAGRAM:
                log.debug("RTP port %d: %d-byte datagram dropped", p.session.local_port, lens[k])
                continue
            assert p.peer is not None
            if p.session.on_datagram(buf[k, : lens[k]].tobytes(), p.peer, now):
                self._rx_at[p.stream] = now

    def _take(self, p: _Port, data: bytes, addr: tuple[str, int], now: float) -> bool:
        """One datagram read with its source address: to the session (whose guard vets the
        source); an accepted source the socket is not connected to is latched (True)."""
        s = p.session
        if s.on_datagram(data, addr, now) and not s.closed:
            self._rx_at[p.stream] = now
            remote = s.remote
            if remote is not None and remote != p.peer:
                p.connect(remote)
                self._latched[p.stream] = latched = p.peer is not None
                return latched
        return False

    def _drain(self, p: _Port, now: float) -> None:
        """Read a just-connected socket's queue with source addresses: datagrams queued
        before `connect()` may come from anyone (the kernel does not filter those), so each
        goes through `_take()`. Once the queue is empty, reads take the fast path."""
        for _ in range(_MAX_DRAIN):
            try:
                data, addr = p.sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                p.fast = p.peer is not None
                return
            except OSError as e:
                log.debug("RTP socket error: %s", e)
                continue
            self._take(p, data, addr, now)

    def _release(self, p: _Port) -> None:
        """Let the socket hear every source again (each vetted by the session's guard), after
        telling the guard the latest packet the batch path took from the latched one."""
        i = p.stream
        ssrc, seq, end_ts = self.jitter.latest(i)
        if ssrc >= 0:
            p.session.guard.note(ssrc, seq, (end_ts - FRAME_SAMPLES) & 0xFFFFFFFF,
                                 float(self._rx_at[i]))
        p.release()
        self._latched[i] = False

    def _release_quiet(self, now: float) -> None:
        """Release the latched sockets that heard nothing for `_RELATCH_AFTER`: a peer whose
        NAT binding changed sends from elsewhere, which the kernel would drop unseen."""
        quiet = np.flatnonzero(self._latched & (self._rx_at < now - _RELATCH_AFTER))
        if len(quiet):
            ports = self._stream_ports
            for i in quiet.tolist():
                p = ports.get(i)
                if p is not None:
                    self._release(p)
                else:
                    self._latched[i] = False

    def _log_sources(self) -> None:
        """Log the guards' events (see media/latch.py), at most `_SOURCE_LOG_BURST` a second;
        `_housekeeping` summarises the rest."""
        for e in self._source_events:
            if self._source_logged >= _SOURCE_LOG_BURST:
                self._source_unlogged += 1
                continue
            self._source_logged += 1
            if e.accepted:
                log.info("RTP port %d: source changed from %s to %s (%s)",
                         e.port, _fmt(e.old), _fmt(e.new), e.reason)
            else:
                log.warning("RTP port %d: packets from %s rejected, source stays %s (%s)",
                            e.port, _fmt(e.new), _fmt(e.old), e.reason)
        self._source_events.clear()

    def _inbound(self) -> None:
        codes, ok = self.jitter.pop_all(self._streams)
        pcm = ULAW_DECODE[codes]
        frames = self.frames
        alaw = frames.alaw[self._rows]
        if alaw.any():
            pcm[alaw] = ALAW_DECODE[codes[alaw]]
        if not frames.n_wide:
            frames.take_inbound(self._rows, pcm, ok)
            return
        wide = np.flatnonzero(frames.wide[self._rows])
        if not len(wide):
            frames.take_inbound(self._rows, pcm, ok)
            return
        # wideband legs: decode one by one, then 16 -> 8 kHz in one batch
        rows = self._rows[wide]
        pcm16 = np.zeros((len(wide), WB_SAMPLES), dtype=np.int16)
        got = np.zeros(len(wide), dtype=bool)
        entries = self._entries
        for j, k in enumerate(wide.tolist()):
            stream = entries[k][0].wide
            if stream is None:
                continue
            frame = stream.decode_tick(codes[k].tobytes() if ok[k] else None)
            if frame is not None:
                pcm16[j] = frame
                got[j] = True
        pcm[wide], frames.in_down_hist[rows] = down2(pcm16, frames.in_down_hist[rows])
        ok[wide] = got
        # pauses for the jitter buffer of streams whose bytes it cannot read (G.722)
        quiet = np.abs(pcm16).mean(axis=1) < QUIET_LEVEL
        decoded = got & (self.jitter.pause_hint[self._streams[wide]] >= 0)
        if decoded.any():
            streams = self._streams[wide[decoded]]
            both = quiet[decoded] & frames.quiet_wb[rows[decoded]]
            self.jitter.pause_hint[streams] = both
            frames.quiet_wb[rows[decoded]] = quiet[decoded]
        frames.take_inbound(self._rows, pcm, ok)
        frames.inbound_wb[rows] = pcm16
        frames.has_inbound_wb[rows] = frames.has_inbound[rows]
        concealed = rows[~got & frames.has_inbound[rows]]
        if len(concealed):  # 8 kHz concealment (G.722), back to 16 kHz
            history = frames.prev[concealed][:, FRAME_SAMPLES - UP_HISTORY:]
            frames.inbound_wb[concealed] = up2(frames.inbound[concealed], history)[0]

    def _encode_and_send(
        self, out: list[_Outgoing], entries: npt.NDArray[np.intp], marked: list[int]
    ) -> int:
        """Build every packet of this tick in one array, then send each: headers from the
        senders' arrays (payload type per stream, marker where `marked`), payloads = the
        entries' outbound rows encoded with one table lookup per codec (silence where a row
        holds no frame)."""
        frames = self.frames
        rows = self._rows[entries]
        second = (self.jitter.pt[self._streams[entries]] & 0x7F).astype(np.uint8)
        if marked:
            second[marked] |= 0x80
        packets = np.empty((len(out), _FAST_LEN), dtype=np.uint8)
        senders = self._senders[entries]
        self.senders.headers(senders, second, packets)
        pcm = frames.outbound[rows]
        pcm[~frames.has_outbound[rows]] = 0
        codes = pcm.view(np.uint16)
        packets[:, 12:] = ULAW_ENCODE[codes]
        alaw = frames.alaw[rows]
        if alaw.any():
            packets[alaw, 12:] = ALAW_ENCODE[codes[alaw]]
        own = self._encode_wide(entries, rows, senders, pcm, packets) if frames.n_wide else None
        if own is None:
            return _send_all(out, packets.tobytes(), self.stats)
        keep = np.ones(len(out), dtype=bool)
        keep[list(own)] = False  # Opus packets (any size) go out on their own
        sent = _send_all([o for o, k in zip(out, keep.tolist(), strict=True) if k],
                         packets[keep].tobytes(), self.stats)
        return sent + _send_each([(out[k], packet) for k, packet in own.items()], self.stats)

    def _encode_wide(
        self, entries: npt.NDArray[np.intp], rows: npt.NDArray[np.intp],
        senders: npt.NDArray[np.intp], pcm: npt.NDArray[np.int16],
        packets: npt.NDArray[np.uint8],
    ) -> dict[int, bytes] | None:
        """Encode the wideband legs among this tick's packets: their 16 kHz mix where they
        have one, else their 8 kHz frame resampled (one batch). G.722 payloads go into
        `packets`; Opus packets (any size) are returned by position, headers advanced to
        960 RTP units per frame."""
        frames = self.frames
        wide = np.flatnonzero(frames.wide[rows])
        if not len(wide):
            return None
        wrows = rows[wide]
        up = frames.outbound_wb[wrows]  # the 16 kHz mix where there is one ...
        alone = np.flatnonzero(~frames.has_outbound_wb[wrows])
        if len(alone):  # ... else the 8 kHz frame (a prompt, silence) resampled
            hist = frames.out_up_hist[wrows[alone]]
            up[alone], frames.out_up_hist[wrows[alone]] = up2(pcm[wide[alone]], hist)
        own: dict[int, bytes] = {}
        table = self._entries
        for j, k in enumerate(wide.tolist()):
            s = table[int(entries[k])][0]
            stream = s.wide
            if stream is None:
                continue
            payload = stream.encode(up[j])
            if stream.opus_jitter is None:
                packets[k, 12:] = np.frombuffer(payload, dtype=np.uint8)
            else:
                own[k] = packets[k, :12].tobytes() + payload
                self.senders.ts[senders[k]] += s.sender.samples_per_packet - FRAME_SAMPLES
        return own or None

    def _housekeeping(self, now: float) -> None:
        """Once a second: batched packets refresh the sessions' `last_rx`; sessions silent for
        longer than `rtp_timeout` time out; the source-guard lines over the limit are
        summarised."""
        timeout = self.rtp_timeout
        rx_at = self._rx_at.tolist()
        if self._source_unlogged:
            log.warning("RTP source guard: %d more source changes/rejections not logged "
                        "one by one (totals: %d packets rejected, %d changes accepted)",
                        self._source_unlogged, self.stats.rtp_source_rejected,
                        self.stats.rtp_source_changed)
            self._source_unlogged = 0
        self._source_logged = 0
        for (s, _), stream in zip(self._entries, self._streams.tolist(), strict=True):
            if rx_at[stream] > s.last_rx:
                s.received(rx_at[stream])
            if timeout > 0 and s.check_timeout(now, timeout) and s.on_timeout is not None:
                try:
                    s.on_timeout()
                except Exception:
                    log.exception("on_timeout callback failed for %r", s)


def _fmt(addr: tuple[str, int] | None) -> str:
    if addr is None:
        return "none"
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _feed_tap(s: MediaSession) -> None:
    """Hand this tick's inbound frame to the session's audio tap; a tap that raises is
    removed (logged once), so a broken listener cannot log on every tick."""
    tap = s.audio_tap
    assert tap is not None
    try:
        tap(s.inbound)
    except Exception:
        s.audio_tap = None
        log.exception("audio tap failed for %r: removed", s)


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
    srtp = s.srtp
    for pkt in packets:
        if srtp is not None:
            protected = srtp.protect(pkt)
            if protected is None:
                stats.send_errors += 1
                continue
            pkt = protected
        try:
            transport.sendto(pkt, remote)
            sent += 1
        except OSError:
            stats.send_errors += 1
    s.sender.skip(s.sender.samples_per_packet)
    return sent


def _send_each(packets: list[tuple[_Outgoing, bytes]], stats: EngineStats) -> int:
    """Send packets of any size, each as its `_Outgoing` says."""
    sent = 0
    for (transport, remote, send, srtp), packet in packets:
        if srtp is not None:
            protected = srtp.protect(packet)
            if protected is None:
                stats.send_errors += 1
                continue
            packet = protected
        try:
            if send is None:
                transport.sendto(packet, remote)
            else:
                send(packet)
            sent += 1
        except OSError:
            stats.send_errors += 1
    return sent


def _send_all(out: list[_Outgoing], data: bytes, stats: EngineStats) -> int:
    """Send packet k of `data` (all `_FAST_LEN` bytes long) as `out[k]` says."""
    sent = 0
    pos = 0
    for transport, remote, send, srtp in out:
        packet = data[pos : pos + _FAST_LEN]
        pos += _FAST_LEN
        if srtp is not None:
            protected = srtp.protect(packet)
            if protected is None:
                stats.send_errors += 1
                continue
            packet = protected
        try:
            if send is None:
                transport.sendto(packet, remote)
            else:
                send(packet)
            sent += 1
        except OSError:
            stats.send_errors += 1
    return sent
