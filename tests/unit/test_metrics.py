"""The /metrics exposition of a real (not started) `Server`: every metric parses with
prometheus_client's own parser and carries the server's state; registries are per server; the
README documents every metric."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from confroom.api.metrics import metrics_registry
from confroom.app.control import CallInfo
from confroom.app.wsclient import WsStats
from confroom.conference.model import Member
from confroom.config import Hook, load
from confroom.histogram import Histogram
from confroom.media.jitter import JitterBuffer
from confroom.media.rtp import build_rtp_header
from confroom.media.session import MediaSession
from confroom.server import Server

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass
class FakeCall:
    info: CallInfo


def info(sid: str, status: str) -> CallInfo:
    i = CallInfo(call_sid=sid, call_id=f"{sid}@t", from_user=sid, to_user="1000",
                 caller_name="", originating_sip_ip="127.0.0.1", originating_sip_port=5070,
                 local_sip_address="127.0.0.1:5060", account_sid="acct", application_sid="app")
    i.call_status = status
    return i


def scrape(server: Server) -> dict[str, list[Sample]]:
    text = generate_latest(metrics_registry(server)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, fam in families.items():
        if name.startswith("confroom_"):
            assert fam.documentation, f"{name} has no HELP text"
    return {name: f.samples for name, f in families.items()}


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    for fam in samples.values():
        for s in fam:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels or ''}")


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(load(None, env={}, overrides={"media_dir": tmp_path}))


async def test_exposition_carries_the_servers_state(server: Server) -> None:
    srv = server
    for sid, status in (("a", "in-progress"), ("b", "in-progress"), ("c", "ringing")):
        srv.calls[sid] = FakeCall(info(sid, status))  # type: ignore[assignment]
    app = srv.config.apps[0]
    conf = srv.conferences.start(
        Member(call_sid="a", info=srv.calls["a"].info, media=MediaSession(0), app=app),
        {"name": "room"})
    srv.conferences.admit(conf, Member(call_sid="b", info=srv.calls["b"].info,
                                       media=MediaSession(0), app=app))
    srv.call_statuses.update({"ringing": 5, "in-progress": 4, "completed": 2})
    srv.rejected.update({"no RTP port": 3, "malformed SDP": 1})
    srv.outbound.limiter.active.update({"acct1": 2, "acct2": 1})
    srv.outbound.refused.update({"not allowed": 4})
    # the media clock runs for real a little while
    await srv.engine.start()
    await asyncio.sleep(0.2)
    await srv.engine.stop()
    # a stream that received packets, closed and whose slot was reused: still counted
    bank = srv.engine.jitter
    i = bank.open()
    jb = JitterBuffer.of(bank, i)
    for seq in range(4):
        jb.push(seq, seq * 160, b"\xff" * 160, ssrc=7)
    jb.push(0, 0, b"\xff" * 160, ssrc=7)  # a duplicate
    bank.close(i)
    assert bank.open() == i
    # a lost frame concealed
    frames = srv.engine.frames
    row = frames.open()
    rows = np.array([row], dtype=np.intp)
    frames.take_inbound(rows, np.ones((1, 160), dtype=np.int16), np.array([True]))
    frames.take_inbound(rows, np.ones((1, 160), dtype=np.int16), np.array([False]))
    # a stranger refused by a session's source guard, after its phone latched it
    guarded = MediaSession(40000)

    class _NoSend:
        def sendto(self, data: bytes, addr: tuple[str, int], /) -> None: ...

    srv.engine.add_session(guarded, _NoSend())
    guarded.update("PCMU", 0, None, "192.0.2.10", 4000)
    assert guarded.on_datagram(build_rtp_header(0, False, 1, 160, 7) + b"\xff" * 160,
                               ("192.0.2.10", 4000), 1.0)
    assert not guarded.on_datagram(build_rtp_header(0, False, 2, 320, 8) + b"\xff" * 160,
                                   ("198.51.100.9", 5000), 3.0)
    # a webhook that cannot connect
    try:
        res = await srv.hooks.call(Hook("http://127.0.0.1:9/x"), {}, base_url=None, secret=None)
    finally:
        await srv.hooks.close()
    assert res.kind == "connection"

    m = scrape(srv)
    assert value(m, "confroom_calls", state="in-progress") == 2
    assert value(m, "confroom_calls", state="ringing") == 1
    assert value(m, "confroom_calls", state="trying") == 0
    assert value(m, "confroom_call_statuses_total", status="ringing") == 5
    assert value(m, "confroom_call_statuses_total", status="completed") == 2
    assert value(m, "confroom_calls_rejected_total", reason="no RTP port") == 3
    assert value(m, "confroom_outbound_calls") == 3
    assert value(m, "confroom_outbound_refused_total", reason="not allowed") == 4
    assert value(m, "confroom_outbound_refused_total", reason="limit") == 0
    assert value(m, "confroom_conferences") == 1
    assert value(m, "confroom_conference_members") == 2
    ticks = value(m, "confroom_media_ticks_total")
    assert ticks >= 3
    assert value(m, "confroom_media_clock_lateness_seconds_count") == ticks
    assert value(m, "confroom_media_clock_lateness_seconds_bucket", le="+Inf") == ticks
    assert value(m, "confroom_media_tick_duration_seconds_count") == ticks
    assert value(m, "confroom_media_late_ticks_total") >= 0
    assert value(m, "confroom_rtp_packets_received_total") == 6  # 5 pushed + 1 of the guarded
    assert value(m, "confroom_frames_concealed_total") == 1
    assert value(m, "confroom_frames_lost_total") == 0
    assert value(m, "confroom_frames_late_total") == 0
    assert value(m, "confroom_webhook_latency_seconds_count") == 1
    assert value(m, "confroom_webhook_failures_total", kind="connection") == 1
    assert value(m, "confroom_webhook_failures_total", kind="too_large") == 0
    assert value(m, "confroom_sip_tcp_connections") == 0
    assert value(m, "confroom_http_connections") == 0  # no REST API on this server
    assert value(m, "confroom_rtp_source_rejected_total") == 1
    assert value(m, "confroom_rtp_source_changed_total") == 0  # the first latch is no change
    assert value(m, "confroom_open_fds") > 3
    assert value(m, "confroom_max_fds") >= value(m, "confroom_open_fds")
    assert value(m, "process_open_fds") > 3  # prometheus-client's process metrics


def test_ws_app_metrics_read_the_ws_client(server: Server) -> None:
    """The WebSocket app metrics are the WsClient's counters (tests/unit/test_wsclient.py
    shows real sockets moving them)."""
    m = scrape(server)
    for name in ("confroom_ws_app_sockets", "confroom_ws_app_reconnects_total",
                 "confroom_ws_app_ack_timeouts_total", "confroom_ws_app_refused_total",
                 "confroom_ws_app_lost_total"):
        assert value(m, name) == 0
    server.ws.stats = WsStats(open=3, reconnects=2, ack_timeouts=5, refused=7, lost=1)
    m = scrape(server)
    assert value(m, "confroom_ws_app_sockets") == 3
    assert value(m, "confroom_ws_app_reconnects_total") == 2
    assert value(m, "confroom_ws_app_ack_timeouts_total") == 5
    assert value(m, "confroom_ws_app_refused_total") == 7
    assert value(m, "confroom_ws_app_lost_total") == 1


def test_each_server_has_its_own_registry(tmp_path: Path) -> None:
    one = Server(load(None, env={}, overrides={"media_dir": tmp_path}))
    two = Server(load(None, env={}, overrides={"media_dir": tmp_path}))
    one.rejected["no RTP port"] += 7
    assert value(scrape(one), "confroom_calls_rejected_total", reason="no RTP port") == 7
    with pytest.raises(AssertionError):
        value(scrape(two), "confroom_calls_rejected_total", reason="no RTP port")
    assert not any(n.startswith("confroom_") for n in REGISTRY._names_to_collectors)


def test_every_metric_is_documented_in_the_readme(server: Server) -> None:
    section = README.read_text().split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(confroom_[a-z_]+)`", section))
    text = generate_latest(metrics_registry(server)).decode()
    # the README names a counter's series (name_total), the parser its family (name)
    served = {f.name + "_total" if f.type == "counter" else f.name
              for f in text_string_to_metric_families(text) if f.name.startswith("confroom_")}
    assert served <= documented, f"not in README, Metrics: {sorted(served - documented)}"
    assert documented <= served, f"in README but not served: {sorted(documented - served)}"


def test_histogram_buckets_follow_prometheus() -> None:
    h = Histogram((0.1, 0.5))
    for v in (0.05, 0.1, 0.2, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("0.5", 4), ("+Inf", 5)]
    assert h.count == 5 and h.total == pytest.approx(3.85)

