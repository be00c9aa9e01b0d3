"""The `/metrics` exposition: one Prometheus registry per server, read at scrape time.

`ServerCollector` reads the server's state when Prometheus scrapes (calls by state,
conferences, members, the counters the server, the media engine, the jitter bank, the webhook
client, the WebSocket app client and the SIP transports already keep) instead of updating
metric objects on every event: nothing here runs on the media clock or per packet.
`metrics_registry()` builds a fresh `CollectorRegistry` for one server (never the
process-global default registry, so several servers in one process stay independent) with this
collector and prometheus-client's `ProcessCollector` (process_* CPU, memory, descriptors).
Every metric is listed in README, "Metrics".
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from confroom.app.control import CallInfo
from confroom.app.hooks import FAILURE_KINDS, HookStats
from confroom.app.wsclient import WsStats
from confroom.cluster.forward import EVENTS
from confroom.conference.service import ConferenceService
from confroom.histogram import Histogram
from confroom.media.engine import EngineStats
from confroom.media.frames import FrameTable
from confroom.media.jitter import JitterBank

__all__ = ["CONTENT_TYPE", "ServerCollector", "metrics_registry", "open_fds"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# call states reported even when no call is in them (others appear when they occur)
CALL_STATES = ("trying", "ringing", "in-progress")


class _Call(Protocol):
    @property
    def info(self) -> CallInfo: ...


class _Engine(Protocol):
    stats: EngineStats
    jitter: JitterBank
    frames: FrameTable


class _Hooks(Protocol):
    stats: HookStats


class _Ws(Protocol):
    stats: WsStats


class _Limiter(Protocol):
    @property
    def active(self) -> Counter[str]: ...


class _Outbound(Protocol):
    @property
    def limiter(self) -> _Limiter: ...

    @property
    def refused(self) -> Mapping[str, int]: ...


class _Transports(Protocol):
    @property
    def tcp_connections(self) -> int: ...


class _Api(Protocol):
    @property
    def connection_count(self) -> int: ...


class _Forwarder(Protocol):
    stats: Counter[str]


class MetricsSource(Protocol):
    """What the collector reads (`confroom.server.Server` fits)."""

    @property
    def calls(self) -> Mapping[str, _Call]: ...

    @property
    def conferences(self) -> ConferenceService: ...

    @property
    def engine(self) -> _Engine: ...

    @property
    def hooks(self) -> _Hooks: ...

    @property
    def ws(self) -> _Ws: ...

    @property
    def transports(self) -> _Transports: ...

    @property
    def rejected(self) -> Counter[str]: ...

    @property
    def api(self) -> _Api | None: ...

    @property
    def call_statuses(self) -> Counter[str]: ...

    @property
    def outbound(self) -> _Outbound: ...

    @property
    def forwarder(self) -> _Forwarder | None: ...


def open_fds() -> int | None:
    """Descriptors this process has open (None where /proc is not available)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.total)


class ServerCollector(Collector):
    """Collects every `confroom_*` metric from one server's state (see the module docstring)."""

    def __init__(self, server: MetricsSource) -> None:
        self.server = server

    def collect(self) -> Iterable[Metric]:
        yield from self._calls()
        yield from self._media()
        yield from self._hooks()
        yield from self._resources()

    def _calls(self) -> Iterator[Metric]:
        srv = self.server
        states = Counter({s: 0 for s in CALL_STATES})
        states.update(c.info.call_status for c in srv.calls.values())
        g = GaugeMetricFamily("confroom_calls", "Calls in progress, by call_status.",
                              labels=["state"])
        for state, n in sorted(states.items()):
            g.add_metric([state], n)
        yield g
        c = CounterMetricFamily(
            "confroom_call_statuses",
            "Calls that reached each call_status (ringing: calls set up; in-progress: "
            "answered; completed, failed, no-answer, busy: how they ended).",
            labels=["status"])
        for status, n in sorted(srv.call_statuses.items()):
            c.add_metric([status], n)
        yield c
        r = CounterMetricFamily("confroom_calls_rejected",
                                "INVITEs refused before a call was set up, by reason.",
                                labels=["reason"])
        for reason, n in sorted(srv.rejected.items()):
            r.add_metric([reason], n)
        yield r
        out = srv.outbound
        yield GaugeMetricFamily("confroom_outbound_calls",
                                "Outbound calls in progress (ringing or answered), all accounts.",
                                value=sum(out.limiter.active.values()))
        o = CounterMetricFamily("confroom_outbound_refused",
                                "Outbound calls refused by the policy, by reason.",
                                labels=["reason"])
        for reason in ("not allowed", "limit"):
            o.add_metric([reason], out.refused.get(reason, 0))
        yield o
        confs = srv.conferences.registry.all()
        yield GaugeMetricFamily("confroom_conferences", "Conferences in progress.",
                                value=len(confs))
        yield GaugeMetricFamily("confroom_conference_members",
                                "Members of the conferences in progress.",
                                value=sum(len(conf.members) for conf in confs))

    def _media(self) -> Iterator[Metric]:
        engine = self.server.engine
        st = engine.stats
        yield _histogram("confroom_media_clock_lateness_seconds",
                         "How late each 20 ms media tick started after its scheduled time.",
                         st.lateness)
        yield _histogram("confroom_media_tick_duration_seconds",
                         "Time spent inside each media tick (all sessions).", st.tick_duration)
        yield CounterMetricFamily("confroom_media_ticks", "Media clock ticks run.",
                                  value=st.ticks)
        yield CounterMetricFamily(
            "confroom_media_late_ticks",
            "Times the media clock was more than 100 ms late and skipped ahead.",
            value=st.late_ticks)
        yield CounterMetricFamily("confroom_media_skipped_ticks",
                                  "Ticks dropped by those skips.", value=st.skipped_ticks)
        yield CounterMetricFamily("confroom_rtp_packets_sent", "RTP packets sent.",
                                  value=st.packets_sent)
        yield CounterMetricFamily("confroom_rtp_send_errors", "RTP packets that failed to send.",
                                  value=st.send_errors)
        yield CounterMetricFamily(
            "confroom_rtp_source_rejected",
            "RTP packets dropped because their source may not speak for the call "
            "(a stranger, or a stream that does not continue the latched one).",
            value=st.rtp_source_rejected)
        yield CounterMetricFamily(
            "confroom_rtp_source_changed",
            "Changes of a call's RTP source accepted (NAT re-binding, SDP move).",
            value=st.rtp_source_changed)
        jt = engine.jitter.totals()
        yield CounterMetricFamily("confroom_rtp_packets_received",
                                  "RTP audio packets received into the jitter buffers.",
                                  value=jt.received)
        yield CounterMetricFamily(
            "confroom_frames_lost",
            "20 ms frames missing at play-out time (nothing arrived for them in time).",
            value=jt.lost)
        yield CounterMetricFamily(
            "confroom_frames_late",
            "RTP packets dropped because they arrived behind the play-out cursor.",
            value=jt.late)
        yield CounterMetricFamily(
            "confroom_frames_concealed",
            "Missing 20 ms frames replaced by loss concealment (pitch repetition).",
            value=engine.frames.concealed)
        yield CounterMetricFamily(
            "confroom_jitter_underruns",
            "Jitter buffer pops that found it empty for more than 60 ms (prefill restarted).",
            value=jt.underruns)
        yield CounterMetricFamily(
            "confroom_jitter_frames_skipped",
            "Quiet frames skipped in pauses to lower a jitter buffer's latency.", value=jt.shrunk)
        yield CounterMetricFamily(
            "confroom_jitter_frames_inserted",
            "Quiet frames inserted in pauses to deepen a jitter buffer.", value=jt.grown)

    def _hooks(self) -> Iterator[Metric]:
        hs = self.server.hooks.stats
        yield _histogram("confroom_webhook_latency_seconds",
                         "Webhook calls, from request to answer read (or failure).", hs.latency)
        f = CounterMetricFamily("confroom_webhook_failures", "Failed webhook calls, by kind.",
                                labels=["kind"])
        for kind in FAILURE_KINDS:
            f.add_metric([kind], hs.failures.get(kind, 0))
        yield f
        ws = self.server.ws.stats
        yield GaugeMetricFamily("confroom_ws_app_sockets", "Open WebSocket app sockets.",
                                value=ws.open)
        yield CounterMetricFamily("confroom_ws_app_reconnects",
                                  "WebSocket app sockets opened again after a drop.",
                                  value=ws.reconnects)
        yield CounterMetricFamily("confroom_ws_app_ack_timeouts",
                                  "Messages to WebSocket apps not acked in time.",
                                  value=ws.ack_timeouts)
        yield CounterMetricFamily("confroom_ws_app_refused",
                                  "Frames and commands from WebSocket apps refused with "
                                  "jambonz:error.", value=ws.refused)
        yield CounterMetricFamily("confroom_ws_app_lost",
                                  "Calls ended because their app socket could not be opened "
                                  "or reopened.", value=ws.lost)

    def _resources(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("confroom_sip_tcp_connections", "Open SIP TCP connections.",
                                value=self.server.transports.tcp_connections)
        fwd = self.server.forwarder  # --workers: SIP messages passed between the workers
        c = CounterMetricFamily(
            "confroom_sip_worker_messages",
            "SIP messages passed between --workers processes: forwarded (read here, "
            "sent to their owner), received (from another worker), relayed (sent back to "
            "the worker holding a stream connection), relayed_in (written on our "
            "connection for another worker), owner_down (owner unreachable: handled "
            "here), dropped (owner's queue full), bad_frames.", labels=["event"])
        for event in EVENTS:
            c.add_metric([event], fwd.stats[event] if fwd is not None else 0)
        yield c
        api = self.server.api
        yield GaugeMetricFamily("confroom_http_connections",
                                "Open connections to the REST API (0 when it is off).",
                                value=api.connection_count if api is not None else 0)
        fds = open_fds()
        if fds is not None:
            yield GaugeMetricFamily("confroom_open_fds", "Open file descriptors.", value=fds)
        with contextlib.suppress(OSError, ValueError):
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft != resource.RLIM_INFINITY:
                yield GaugeMetricFamily("confroom_max_fds",
                                        "The file descriptor limit (soft RLIMIT_NOFILE).",
                                        value=soft)


def metrics_registry(server: MetricsSource) -> CollectorRegistry:
    """A new registry holding `server`'s metrics and the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    ProcessCollector(registry=registry)
    return registry
