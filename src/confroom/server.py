"""`Server`: wires the SIP core, the transports, the media engine and the calls together.

This is the asyncio side of confroom: it feeds received SIP bytes to the sans-IO `SipCore`,
sends what the core wants sent, keeps one timer armed at the core's next deadline, creates a
`Call` (with its media session and verb runner) for each new INVITE, serves the REST API
(`confroom.api`) when an HTTP port is configured, and on shutdown ends every call cleanly (BYE
to answered calls, 503 to the others).

Admission: every new INVITE is put to the sans-IO `Admission` (confroom.admission) by the SIP
core before any dialog state, webhook or RTP socket exists; a shed INVITE gets `503` +
`Retry-After` and is counted in `rejected` and in the interval summary of `ShedLog`. The
measurements it decides on (media clock lateness and tick duration, process CPU, free RTP
ports, descriptors) are sampled here every `_SAMPLE_EVERY` seconds.

Draining (`drain()`, SIGTERM): new calls are shed with 503 at once; calls may finish for
`drain_time`; then conferences end (members continue with their actionHook) for at most
`_END_GRACE`, and `stop()` BYEs what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import ssl
import tempfile
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any, Final

from confroom.admission import NO_PORTS, Admission, Admit, Headroom, ShedLog
from confroom.api import ApiServer
from confroom.api.metrics import metrics_registry, open_fds
from confroom.app.control import CallInfo
from confroom.app.hooks import WebhookClient
from confroom.app.payload import call_fields
from confroom.app.session import CallSession, notify_call_status
from confroom.app.verbs import parse_verb_list
from confroom.app.wsclient import WsClient, WsSettings
from confroom.app.wsproto import Command
from confroom.call import Call, log_call_end
from confroom.callupdate import ControlError, UpdateError, apply_update, command_update
from confroom.cluster.forward import WorkerChannel
from confroom.conference.audio import TalkGate
from confroom.conference.service import ConferenceService
from confroom.conference.verb import verb_table
from confroom.config import Config
from confroom.connlimits import Limits, default_caps
from confroom.dial import dial_verb
from confroom.fdlimit import fd_limit, is_resource_error, raise_fd_limit
from confroom.media.bridge import Bridges
from confroom.media.codecs import CodecPolicy, OpusConfig
from confroom.media.codecs.opus import available as opus_available
from confroom.media.dtls import DtlsIdentity
from confroom.media.engine import MediaEngine, MediaError
from confroom.media.srtp import SrtpContext, new_key
from confroom.media.webrtc import WebRtcTransport
from confroom.ordered import KeyedSerial
from confroom.outcall import OutboundCalls
from confroom.security import SRTP_REQUIRED_WARNING, check_transport, insecure_keys
from confroom.sip.core import (
    ByeDone,
    CallAckTimeout,
    CallCancelled,
    CallConfirmed,
    CallEnded,
    DtmfInfo,
    IncomingCall,
    Leg,
    OutboundAnswered,
    OutboundFailed,
    OutboundProgress,
    ReInvite,
    SipCore,
)
from confroom.sip.message import Request, SipParseError, parse_name_addr, set_owner_mark
from confroom.sip.ownership import worker_mark
from confroom.sip.peer import Peer
from confroom.sip.sdp import NoCommonCodec, SdpError, SrtpRequired, negotiate, parse_sdp
from confroom.sip.transaction import ServerTransaction
from confroom.sip.transport import SipTransports
from confroom.sip.webrtc_sdp import WebRtcOffer, split_webrtc
from confroom.sip.websocket import SipWebSocket
from confroom.tls import client_context, server_context

log = logging.getLogger("confroom.server")

RETRY_AFTER = 5  # seconds, in the 503s sent when descriptors or memory run out
_SAMPLE_EVERY: Final = 0.25  # s between headroom samples for admission
_CPU_OVER: Final = 1.0  # s over which process CPU is measured
_FD_SAMPLE_EVERY: Final = 1.0  # s between counts of open descriptors
_END_GRACE: Final = 10.0  # s the calls of ended conferences get for their actionHooks


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _user_of(header_value: str | None) -> str:
    """The user part of a From/To header's URI (the whole URI when it has none)."""
    if not header_value:
        return ""
    try:
        uri = parse_name_addr(header_value).uri
    except SipParseError:
        return header_value
    return uri.user or uri.host


def _display_of(header_value: str | None) -> str:
    if not header_value:
        return ""
    try:
        na = parse_name_addr(header_value)
    except SipParseError:
        return ""
    return na.display or (na.uri.user or "")


def _invite_as_dict(req: Request) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, value in req.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return {
        "method": req.method,
        "uri": req.uri,
        "headers": headers,
        "body": req.body.decode("utf-8", errors="replace"),
    }


def codec_policy(config: Config) -> CodecPolicy:
    """The engine's codec policy from the config; Opus is left out (logged) without libopus."""
    codecs = config.codecs
    if "OPUS" in codecs and not opus_available():
        log.warning("libopus not found (Debian package libopus0): Opus is not offered or "
                    "accepted")
        codecs = tuple(c for c in codecs if c != "OPUS") or ("PCMU", "PCMA")
    return CodecPolicy(codecs, config.codec_priority == "server",
                       OpusConfig(config.opus_bitrate, config.opus_complexity))


class Server:
    """One confroom node. `await start()`, then `await stop()` (or `run_until_stopped`)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.core: SipCore | None = None
        self.transports = SipTransports(self._on_sip_bytes, udp_rcvbuf=config.sip_udp_rcvbuf)
        # RTP listens where SIP listens (every interface for a wildcard); the SDP advertises
        # config.contact_host, which may be a NAT's public address and need not be local.
        self.engine = MediaEngine(
            config.sip_host or "0.0.0.0", config.rtp_port_min, config.rtp_port_max,
            config.rtp_timeout, codec_policy=codec_policy(config),
        )
        # one client TLS context (the [webhooks] ca_file) for https hooks and wss app sockets
        client_tls = client_context(config.webhook_ca_file)
        self.hooks = WebhookClient(timeout=config.webhook_timeout,
                                   max_body=config.webhook_max_body, ssl_context=client_tls)
        self.ws = WsClient(WsSettings(
            ack_timeout=config.ws_ack_timeout, max_payload=config.ws_max_payload,
            max_reconnects=config.ws_max_reconnects,
            handshake_timeout=config.ws_handshake_timeout), user_agent=config.user_agent,
            ssl_context=client_tls)
        self.conferences = ConferenceService(
            self.engine, self.hooks, self._spawn, media_dir=config.media_dir,
            gate=TalkGate(config.talk_gate, config.talk_gate_hang_ms,
                          config.talk_gate_level_dbfs),
        )
        self.verbs = verb_table(self.conferences)  # what each verb name runs
        self.cluster: Any = None  # a ClusterNode when [cluster] redis is set
        if config.cluster_redis:
            from confroom.cluster.node import ClusterNode  # the only path that imports Redis

            self.cluster = ClusterNode(config, self.conferences, self.engine, self._spawn)
            self.cluster.find_call = lambda sid: self.calls.get(sid)
        self.calls: dict[str, Call] = {}  # call_sid -> call
        self._by_leg: dict[int, Call] = {}  # id(leg) -> call
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._flushing = False
        self._bye_waiters: dict[int, asyncio.Future[None]] = {}
        self._ordered = KeyedSerial(self._spawn)
        self.api: ApiServer | None = None  # the REST API, when http_port > 0
        self.forwarder: WorkerChannel | None = None  # --workers: the channel to the others
        self._dtls_identity: DtlsIdentity | None = None  # see dtls_identity()
        # INVITEs refused, by the reason logged with them (the metrics read this)
        self.rejected: Counter[str] = Counter()
        # calls that reached each call_status (ringing = set up; the metrics read this)
        self.call_statuses: Counter[str] = Counter()
        self._fd_refusals = 0  # calls answered 503 for lack of descriptors since the warning
        self._fd_warned_at = float("-inf")
        self.admission = Admission(config.limits, now=0.0, period=self.engine.period)
        self.shed_log = ShedLog(config.shed_log_interval, now=0.0)
        self._in_setup: dict[int, str] = {}  # id(leg) -> source address, admitted calls
        self._sampler: asyncio.TimerHandle | None = None
        # (loop time, process CPU seconds) of the samples of the last _CPU_OVER seconds
        self._cpu_at: deque[tuple[float, float]] = deque()
        self._fds = (0.0, 0)  # (loop time, open descriptors) of the last count
        self.outbound = OutboundCalls(self)  # REST create-call (and dial) place calls here
        self.bridges = Bridges(self.engine.frames)  # dial's two-party audio bridges
        self.engine.mixers.append(self.bridges)
        self.verbs = {**self.verbs, "dial": dial_verb(self.outbound, self.bridges)}

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        cfg.media_dir.mkdir(parents=True, exist_ok=True)
        cfg.media_cache_dir.mkdir(parents=True, exist_ok=True)
        sip_limits, http_limits = self._connection_limits()
        # The first verb list validated builds the JSON-schema validators (~0.3 s of CPU):
        # done now, not in the event loop while the first calls' media runs.
        parse_verb_list([{"verb": "answer"}])
        await self.engine.start()
        if self.cluster is not None:
            await self.cluster.start()
        self.dtls_identity()  # made (or loaded) now: the log line comes at start
        tls = None
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            tls = server_context(cfg.tls_cert, cfg.tls_key)
        self.transports.configure(sip_limits, cfg.sip_max_message_bytes)
        if cfg.worker_index >= 0:  # one of --workers N: SIP messages go to their owner
            set_owner_mark(worker_mark(cfg.worker_index))
            self.forwarder = WorkerChannel(cfg.worker_index, cfg.worker_count, cfg.worker_dir,
                                           self._on_forwarded_sip, self.transports.send_relayed)
            self.transports.relay = self.forwarder.relay
        await self.transports.start(cfg.sip_host, cfg.sip_port, cfg.sip_transports,
                                    cfg.sip_tls_port, tls, reuse_port=cfg.reuse_port)
        self.core = SipCore(cfg.contact_host, self.transports.port,
                            tls_port=self.transports.tls_port, user_agent=cfg.user_agent)
        if self.forwarder is not None:
            self.forwarder.start()
        self.core.gate = self._gate
        now = self._now()
        self.admission = Admission(cfg.limits, now=now, period=self.engine.period)
        self.shed_log = ShedLog(cfg.shed_log_interval, now=now)
        self._cpu_at.append((now, time.process_time()))
        self._sample()
        if cfg.http_port > 0:
            sip_ws = SipWebSocket(self._on_sip_bytes, secure=cfg.https,
                                  max_message_bytes=cfg.sip_max_message_bytes)
            self.transports.websocket = sip_ws
            self.api = ApiServer(self, cfg.http_host, cfg.http_port, cfg.api_token,
                                 metrics=metrics_registry(self),
                                 ssl_context=self._self_signed_context() if
                                 cfg.http_self_signed else (tls if cfg.https else None),
                                 limits=http_limits, body_timeout=cfg.http_body_timeout,
                                 server_header=cfg.user_agent, sip_websocket=sip_ws.handle)
            self.api.reuse_port = cfg.reuse_port
            await self.api.start()
            self.core.ws_port = self.api.port
            if cfg.tls_configured and not cfg.https:
                log.warning("REST API over plain HTTP although [tls] is configured ([http] tls "
                            "= false): its bearer token travels in clear")
        listening = [f"{'+'.join(cfg.sip_transports)} on {cfg.sip_host}:{self.transports.port}"
                     ] if cfg.sip_transports else []
        if self.transports.tls_port:
            listening.append(f"tls on {cfg.sip_host}:{self.transports.tls_port}")
        if self.api is not None:
            listening.append(f"{'wss' if cfg.https else 'ws'} on {cfg.http_host}:"
                             f"{self.api.port}/sip")
        log.info(
            "confroom ready: sip %s, rtp %d-%d, apps: %s",
            ", ".join(listening), cfg.rtp_port_min, cfg.rtp_port_max,
            ", ".join(a.name for a in cfg.apps),
        )

    def _connection_limits(self) -> tuple[Limits, Limits]:
        """Raise the descriptor limit and size the connection caps left at 0 from it."""
        cfg = self.config
        soft, hard = raise_fd_limit()
        sip_total, sip_per_source, http_total, http_per_source = default_caps(fd_limit())
        sip = Limits(
            max_total=cfg.sip_tcp_max_connections or sip_total,
            max_per_source=cfg.sip_tcp_max_per_source or sip_per_source,
            message_timeout=cfg.sip_tcp_message_timeout,
            idle_timeout=cfg.sip_tcp_idle_timeout,
        )
        http = Limits(
            max_total=cfg.http_max_connections or http_total,
            max_per_source=cfg.http_max_per_source or http_per_source,
            message_timeout=cfg.http_header_timeout,
            idle_timeout=cfg.http_keepalive_timeout,
        )
        log.info("file descriptors: limit %d (hard %s); sip tcp connections: %d in total, %d "
                 "per source; http connections: %d in total, %d per source", soft,
                 "unlimited" if hard == resource.RLIM_INFINITY else hard, sip.max_total,
                 sip.max_per_source, http.max_total, http.max_per_source)
        return sip, http
    async def drain(self, drain_time: float, abort: asyncio.Event | None = None) -> None:
        """Stop taking calls (503 + Retry-After), let calls finish for up to `drain_time`
        seconds, then end every conference and give its members' actionHooks up to
        `_END_GRACE`; `abort` being set cuts either wait short. `stop()` does the rest."""
        self.admission.draining = True
        if self.core is not None:  # OPTIONS probes of a front door get 503 too
            self.core.draining_retry_after = self.admission.limits.drain_retry_after
        log.info("draining: new calls get 503; %d call(s) may finish for up to %gs",
                 len(self.calls), drain_time)
        if await self._wait_calls_gone(drain_time, abort):
            return
        if self.conferences.registry.all():
            log.info("drain time over: ending conferences, %d call(s) left", len(self.calls))
            self.conferences.end_all()
            await self._wait_calls_gone(_END_GRACE, abort)

    async def _wait_calls_gone(self, timeout: float, abort: asyncio.Event | None) -> bool:
        """Wait until no call is left (True), `timeout` passes or `abort` is set."""
        deadline = self._now() + timeout
        while self.calls and self._now() < deadline:
            if abort is not None and abort.is_set():
                return False
            await asyncio.sleep(min(0.1, max(0.0, deadline - self._now())))
        return not self.calls

    async def stop(self, grace: float = 3.0) -> None:
        """End every call (BYE / 503), wait for the BYEs to complete, close everything."""
        self._stopping = True
        self.admission.draining = True
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
            line = self.shed_log.summary(self._now(), force=True)
            if line is not None:
                log.warning("%s", line)
        if self.api is not None:  # no new connection; browsers' `/sip` ones get their BYE
            await self.api.stop_listening()
        self.conferences.end_all()
        self.outbound.cancel_all()
        waiters: list[asyncio.Future[None]] = []
        for call in list(self.calls.values()):
            if call.answered and not call.ended:
                fut = asyncio.get_running_loop().create_future()
                self._bye_waiters[id(call.leg)] = fut
                waiters.append(fut)
                self.sip_bye(call.leg, [])
                call.finish("completed", "server shutdown")
            elif not call.ended:
                self.sip_reject(call.leg, 503, "Service Unavailable", [])
                call.finish("failed", "server shutdown", sip_status=503)
        if waiters:
            await asyncio.wait(waiters, timeout=grace)
        if self.transports.websocket is not None:
            await self.transports.websocket.close()
        if self.api is not None:
            await self.api.stop()
            self.api = None
        # Let verb runners wind down and status hooks go out, then cancel what is left.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        if self.cluster is not None:
            await self.cluster.stop()
        if self._timer is not None:
            self._timer.cancel()
        await self.transports.close()
        if self.forwarder is not None:
            self.forwarder.close()
        await self.engine.stop()
        await self.hooks.close()
        await self.ws.close()

    # ---- SIP plumbing -------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_sip_bytes(self, data: bytes, peer: Peer) -> None:
        core = self.core
        if core is None:
            return
        if self.forwarder is not None and self.forwarder.divert(data, peer):
            return  # another worker's (--workers)
        core.receive_datagram(data, peer, self._now())
        self._flush()

    def _on_forwarded_sip(self, data: bytes, peer: Peer) -> None:
        """A SIP message another worker read from `peer` and found to be ours."""
        if self.core is None:
            return
        self.core.receive_datagram(data, peer, self._now())
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is not None:
            self.core.handle_timer(self._now())
            self._flush()

    def _flush(self) -> None:
        """Send what the core queued, dispatch its events, re-arm the timer.

        Not re-entrant: an event handler acting on the core (a BYE after an ACK timeout)
        calls back here, and the outer loop picks its work up; recursing instead went one
        level deeper per queued event (RecursionError after a mass of ACK timeouts)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            self._flush_once()
        finally:
            self._flushing = False

    def _flush_once(self) -> None:
        core = self.core
        assert core is not None
        while True:
            for peer, data in core.datagrams_to_send():
                self.transports.send(peer, data)
            ev = core.next_event()
            if ev is None:
                break
            try:
                self._dispatch(ev)
            except Exception:
                log.exception("error handling SIP event %s", type(ev).__name__)
        deadline = core.get_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = deadline
            if deadline is not None:
                assert self._loop is not None
                self._timer = self._loop.call_at(deadline, self._on_timer)

    def _gate(self, req: Request, peer: Peer, now: float) -> int | None:
        """Admission of a new INVITE (asked by the core): None admits, else Retry-After."""
        verdict = self.admission.decide(peer.host, now)
        if isinstance(verdict, Admit):
            return None
        self.rejected[verdict.reason] += 1
        self.shed_log.record(verdict.reason, peer.host)
        return verdict.retry_after

    def _setup_over(self, leg: Leg) -> None:
        """An admitted call was answered or ended: it no longer counts as in setup."""
        source = self._in_setup.pop(id(leg), None)
        if source is not None:
            self.admission.setup_done(source)

    def _sample(self) -> None:
        """Feed the admission its measurements; log the shed summary when one is due."""
        assert self._loop is not None
        now = self._now()
        stats = self.engine.stats
        cpu_now = time.process_time()
        history = self._cpu_at
        while len(history) > 1 and now - history[1][0] >= _CPU_OVER:
            history.popleft()
        at, cpu_then = history[0] if history else (now, cpu_now)
        cpu = (cpu_now - cpu_then) / (now - at) if now - at >= _CPU_OVER / 2 else 0.0
        history.append((now, cpu_now))
        if now - self._fds[0] >= _FD_SAMPLE_EVERY:
            self._fds = (now, _open_fds())
        ports = (self.engine.port_max - self.engine.port_min) // 2 + 1
        headroom = Headroom(
            clock_lateness=stats.recent_lateness,
            tick_duration=stats.recent_tick_duration,
            cpu=cpu,
            free_ports=ports - len(self.engine.sessions),
            open_fds=self._fds[1],
            fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        was = self.admission.overloaded
        self.admission.update(headroom, now)
        if self.admission.overloaded != was:  # one line per change, not per call
            if self.admission.overloaded is None:
                log.warning("overload over: taking new calls again")
            else:
                log.warning("%s: new calls get 503 (media clock late %.0f ms, tick %.1f ms, "
                            "cpu %.0f%%)", self.admission.overloaded,
                            headroom.clock_lateness * 1e3, headroom.tick_duration * 1e3,
                            headroom.cpu * 100)
        stats.recent_lateness = 0.0
        stats.recent_tick_duration = 0.0
        line = self.shed_log.summary(now)
        if line is not None:
            log.warning("%s", line)
        self._sampler = self._loop.call_later(_SAMPLE_EVERY, self._sample)

    def _dispatch(self, ev: object) -> None:
        if isinstance(ev, IncomingCall):
            self._in_setup[id(ev.leg)] = ev.leg.peer.host
            self.admission.setup_started(ev.leg.peer.host)
            self._spawn(self._call_task(ev.leg, ev.request))
            return
        if isinstance(ev, OutboundProgress | OutboundAnswered | OutboundFailed):
            self.outbound.on_event(ev)
            return
        if isinstance(ev, ByeDone):
            fut = self._bye_waiters.pop(id(ev.leg), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        leg = getattr(ev, "leg", None)
        call = self._by_leg.get(id(leg)) if leg is not None else None
        if call is None:
            if isinstance(ev, ReInvite):
                assert self.core is not None
                self.core.respond_reinvite(ev.leg, ev.tx, 481, self._now())
            return
        if isinstance(ev, CallCancelled):
            call.on_cancelled()
        elif isinstance(ev, CallEnded):
            call.on_remote_bye()
        elif isinstance(ev, CallConfirmed):
            pass
        elif isinstance(ev, CallAckTimeout):
            call.on_ack_timeout()
        elif isinstance(ev, ReInvite):
            call.on_reinvite(ev.tx, ev.request.body)
        elif isinstance(ev, DtmfInfo):
            call.on_info_dtmf(ev.digit)

    # Signalling (used by Call) ----------------------------------------------------------------

    def sip_ring(self, leg: Leg) -> None:
        assert self.core is not None
        self.core.ring(leg, self._now())
        self._flush()

    def sip_answer(self, leg: Leg, sdp: bytes) -> bool:
        assert self.core is not None
        ok = self.core.answer(leg, sdp, self._now())
        self._flush()
        return ok

    def sip_reject(self, leg: Leg, status: int, reason: str | None,
                   headers: list[tuple[str, str]]) -> bool:
        assert self.core is not None
        ok = self.core.reject(leg, status, self._now(), reason, headers)
        self._flush()
        return ok

    def sip_bye(self, leg: Leg, headers: list[tuple[str, str]]) -> bool:
        assert self.core is not None
        ok = self.core.bye(leg, self._now(), headers)
        self._flush()
        return ok

    def sip_request(self, leg: Leg, method: str, headers: list[tuple[str, str]],
                    body: bytes) -> bool:
        assert self.core is not None
        ok = self.core.request(leg, self._now(), method, headers, body)
        self._flush()
        return ok

    def sip_respond_reinvite(self, leg: Leg, tx: ServerTransaction, status: int,
                             sdp: bytes | None) -> None:
        assert self.core is not None
        self.core.respond_reinvite(leg, tx, status, self._now(), sdp)
        self._flush()

    def call_finished(self, call: Call) -> None:
        call.session_kill = None  # the verb runner points back at the call: no cycle left
        call.session = None
        self._setup_over(call.leg)
        self.calls.pop(call.info.call_sid, None)
        if self._by_leg.pop(id(call.leg), None) is not None:
            self.transports.release(call.leg.peer)
        self.engine.close_session(call.media)
        self.outbound.finished(call)
        if self.core is not None:
            self.core.release(call.leg)

    # ---- calls --------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call_task(self, leg: Leg, req: Request) -> None:
        """The whole life of one admitted call; whatever happens, its setup is over after."""
        try:
            await self._answer_start(leg, req)
        finally:
            self._setup_over(leg)

    async def _start_call(self, leg: Leg, req: Request) -> None:
        assert self.core is not None
        to_user = _user_of(req.headers.get("To"))
        app = self.config.app_for_number(to_user)
        info = CallInfo(
            call_sid=str(uuid.uuid4()),
            call_id=req.call_id,
            from_user=_user_of(req.headers.get("From")),
            to_user=to_user,
            caller_name=_display_of(req.headers.get("From")),
            originating_sip_ip=leg.peer.host,
            originating_sip_port=leg.peer.port,
            local_sip_address=f"{self.core.local_host}:{self.core.port_for(leg.peer)}",
            account_sid=app.account_sid,
            application_sid=app.application_sid,
            sip=_invite_as_dict(req),
        )
        log.info("call start call_sid=%s call_id=%s from=%s to=%s transport=%s app=%s",
                 info.call_sid, info.call_id, info.from_user, info.to_user,
                 leg.peer.transport, app.name)

        def refuse(status: int, reason: str | None, why: str,
                   headers: list[tuple[str, str]] | None = None) -> None:
            self._setup_over(leg)
            self.sip_reject(leg, status, reason, headers or [])
            self.rejected[why] += 1
            log_call_end(info.call_sid, "failed", why, 0.0)

        if self._stopping:
            refuse(503, "Service Unavailable", "server shutting down")
            return
        denied = check_transport(leg.peer.transport, req.uri, self.config.tls_policy(app))
        if denied is not None:
            log.warning("call_sid=%s: refused (%s) from %s over %s", info.call_sid, denied.why,
                        leg.peer.host, leg.peer.transport)
            refuse(denied.status, denied.reason, denied.why, [("Warning", denied.warning)])
            return
        if not req.body.strip():
            log.warning("call_sid=%s: INVITE without an SDP offer (late offer is not "
                        "supported)", info.call_sid)
            refuse(488, "SDP Offer Required", "no SDP offer")
            return
        rtc_offer: WebRtcOffer | None = None
        try:
            policy = self.engine.codec_policy
            offer, rtc_offer = split_webrtc(parse_sdp(req.body))
            negotiated = negotiate(offer, supported=policy.codecs, require_srtp=(
                rtc_offer is None and self.config.srtp_policy(app) == "required"),
                prefer_ours=policy.prefer_ours)
        except SrtpRequired as e:
            log.warning("call_sid=%s: refused: %s", info.call_sid, e)
            refuse(488, None, "srtp required", [("Warning", SRTP_REQUIRED_WARNING)])
            return
        except NoCommonCodec as e:
            log.warning("call_sid=%s: no common codec (%s)", info.call_sid, e)
            refuse(488, None, "no common codec",
                   [("Warning", '304 confroom "Media type not available"')])
            return
        except SdpError as e:
            log.warning("call_sid=%s: malformed SDP: %s", info.call_sid, e)
            refuse(400, "Malformed SDP", "malformed SDP")
            return
        try:
            media = await self.engine.open_session()
        except MediaError:
            # counted in the shed summary line, not one log line per call
            self.shed_log.record(NO_PORTS, leg.peer.host)
            refuse(503, "Service Unavailable", NO_PORTS,
                   [("Retry-After", str(self.config.limits.retry_after))])
            return
        except OSError as e:
            if not is_resource_error(e):
                raise
            self._out_of_descriptors(info.call_sid, e)
            refuse(503, "Service Unavailable", "out of descriptors",
                   [("Retry-After", str(RETRY_AFTER))])
            return
        if leg.state == "terminated":  # cancelled while we were allocating
            self._setup_over(leg)
            self.engine.close_session(media)
            log_call_end(info.call_sid, "no-answer", "cancelled", 0.0)
            return
        srtp_key = None
        if negotiated.crypto is not None:
            srtp_key = new_key()
            self.engine.set_srtp(media, SrtpContext(
                negotiated.crypto.suite, srtp_key, negotiated.crypto.key,
                label=f"call_sid={info.call_sid}"))
            clear = insecure_keys(leg.peer.transport)
            log.info("call_sid=%s: srtp %s, keys exchanged over %s%s", info.call_sid,
                     negotiated.crypto.suite, leg.peer.transport,
                     " (in clear: visible to whoever sees the signalling)" if clear else "")
        if rtc_offer is not None:
            self.engine.set_webrtc(media, WebRtcTransport(
                self.dtls_identity(), rtc_offer.fingerprint, rtc_offer.ufrag, self._now()))
            log.info("call_sid=%s: WebRTC media (ICE-lite, DTLS-SRTP) over %s",
                     info.call_sid, leg.peer.transport)
        call = Call(
            info=info, app=app, leg=leg, media=media, negotiated=negotiated, signalling=self,
            local_media_host=self.config.contact_host, on_status=self._status_changed,
            srtp_key=srtp_key, webrtc_offer=rtc_offer,
        )
        log.info("call_sid=%s codec=%s pt=%d telephone-event=%s", info.call_sid,
                 negotiated.codec, negotiated.payload_type, negotiated.dtmf_payload_type)
        self.calls[info.call_sid] = call
        self._by_leg[id(leg)] = call
        self.transports.hold(leg.peer)  # a TCP connection stays open while the call uses it
        call.ring()
        await self.run_verbs(call)

    def _self_signed_context(self) -> ssl.SSLContext:
        """The HTTPS context of `[http] tls = "self-signed"`: the generated DTLS certificate
        (written to a private temporary directory, which `server_context` loads)."""
        identity = self.dtls_identity()
        folder = Path(tempfile.mkdtemp(prefix="confroom-tls-"))
        cert, key = identity.write_pem(folder)
        log.warning("HTTPS and wss with a self-signed certificate generated at start (browsers "
                    "will ask to trust it; for local use only), fingerprint %s",
                    identity.fingerprint)
        return server_context(cert, key)

    def dtls_identity(self) -> DtlsIdentity:
        """The DTLS certificate of WebRTC calls: `[tls]`'s, else one generated on first use
        (self-signed P-256, logged with its fingerprint)."""
        identity = self._dtls_identity
        if identity is None:
            cfg = self.config
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                identity = DtlsIdentity.load(cfg.tls_cert, cfg.tls_key)
                log.info("WebRTC: DTLS certificate %s, fingerprint %s", identity.origin,
                         identity.fingerprint)
            else:
                identity = DtlsIdentity.generate()
                log.info("WebRTC: no [tls] certificate; DTLS uses a self-signed certificate "
                         "generated at start, fingerprint %s", identity.fingerprint)
            self._dtls_identity = identity
        return identity

    async def run_verbs(self, call: Call) -> None:
        """Run the call's application (its verb list) to the end, inbound or outbound; a
        failure of the verb runner itself hangs the call up."""
        session = CallSession(call, self.hooks, self.config, verbs=self.verbs, ws=self.ws,
                              commands=self._ws_command)
        call.session_kill = session.kill
        call.session = session
        try:
            await session.run()
        except Exception:
            log.exception("call_sid=%s: verb runner failed", call.info.call_sid)
            if not call.ended:
                await call.hangup()

    async def _ws_command(self, session: CallSession, cmd: Command) -> str | None:
        """Carry out a WebSocket app's command on its call (or on the other leg it names, in
        the same account) exactly as the REST call update does; what was wrong, else None."""
        call: Call | None = self.calls.get(session.call_sid)
        if cmd.call_sid is not None:
            call = self.calls.get(cmd.call_sid)
            if call is None or call.info.account_sid != session.call.info.account_sid:
                return f"no call {cmd.call_sid}"
        if call is None:
            return "the call has ended"
        try:
            upd = command_update(cmd.name, cmd.data, cmd.queue)
            await apply_update(self.conferences, call, upd)
        except (ControlError, UpdateError) as e:
            return str(e)
        log.info("call_sid=%s: ws command %s done", call.info.call_sid, cmd.name)
        return None

    async def _answer_start(self, leg: Leg, req: Request) -> None:
        """`_start_call`, but whatever goes wrong, the INVITE still gets a final answer (503
        with Retry-After when the process ran out of descriptors or memory, else 500)."""
        try:
            await self._start_call(leg, req)
        except Exception as e:
            resource_error = is_resource_error(e)
            status = 503 if resource_error else 500
            call = self._by_leg.get(id(leg))
            call_sid = call.info.call_sid if call is not None else "-"
            if resource_error:
                self._out_of_descriptors(call_sid, e)
            else:
                log.exception("call_sid=%s call_id=%s: setting up the call failed; answering "
                              "%d", call_sid, req.call_id, status)
            headers = [("Retry-After", str(RETRY_AFTER))] if status == 503 else []
            if self.core is not None:
                self.sip_reject(leg, status, None, headers)
            why = "out of descriptors" if resource_error else "internal error"
            self.rejected[why] += 1
            if call is not None:
                if call.answered and not call.ended:
                    await call.hangup()
                call.finish("failed", why, sip_status=status)
            else:
                log_call_end(call_sid, "failed", why, 0.0)
        except asyncio.CancelledError:
            self._answer_on_cancel(leg)
            raise

    def _answer_on_cancel(self, leg: Leg) -> None:
        # a call-start task cancelled on shutdown: the INVITE still gets its 503
        if self.core is not None and leg.state == "early":
            self.sip_reject(leg, 503, None, [("Retry-After", str(RETRY_AFTER))])

    def _out_of_descriptors(self, call_sid: str, exc: BaseException) -> None:
        """One warning per interval (not per call) while descriptors or memory run out."""
        self._fd_refusals += 1
        now = self._now()
        if now - self._fd_warned_at >= 10.0:
            n = open_fds()  # None when even listing them needs a descriptor we lack
            log.warning("out of resources (%s; descriptors open: %s of %d): %d call(s) "
                        "answered 503 since the last warning (last call_sid=%s)",
                        exc, "all" if n is None else n, fd_limit(), self._fd_refusals, call_sid)
            self._fd_warned_at = now
            self._fd_refusals = 0

    def _status_changed(self, call: Call) -> None:
        """Send the call-status hook; one call's notifications go out strictly in order."""
        self.call_statuses[call.info.call_status] += 1
        if call.answered or call.ended:
            self._setup_over(call.leg)
        session = call.session
        if session is not None and session.notify_status(call_fields(call.info)):
            return  # a WebSocket app: over its socket
        if call.app.call_status_hook is None:
            return
        # the body is captured now, whenever it is sent
        self._ordered.submit(call.info.call_sid,
                             notify_call_status(self.hooks, call.app, call.info))
