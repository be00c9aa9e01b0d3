"""Operations, end to end: /metrics scraped during a real conference, a 50 MB webhook answer
cut off at the body cap, and webhook / download faults of every kind leaving no reference
cycles in the server (its SIGUSR1 garbage report)."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import app_table
from harness import (
    HOST,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    HookRequest,
    Reply,
    RtpPeer,
    SippRunner,
    free_udp_port,
)
from prometheus_client.parser import text_string_to_metric_families
from test_conference import CALL, Env, conference
from test_control import TOKEN, free_tcp_port

pytestmark = pytest.mark.e2e

BIG = 50 * 1024 * 1024


def scrape(port: int, token: str | None = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                        float]:
    """GET /metrics, parsed by prometheus_client: {(sample name, sorted labels): value}."""
    req = urllib.request.Request(f"http://{HOST}:{port}/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_metrics_scraped_during_a_conference(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    port = free_tcp_port()
    hook_app.route(CALL, conference("ops"))
    srv = confroom(hook_app.url(CALL), extra_toml={"http": {"port": port, "token": TOKEN}})
    e = Env(srv, hook_app, sipp, rtp_peer_factory)
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(port, token=None)
    assert refused.value.code == 401
    a, b = e.dial("alice"), e.dial("bob")
    srv.wait_log(r"conference join name=ops .*members=2")
    a.peer.send_tone(440, 0.4, a.addr)  # 20 packets into alice's jitter buffer
    deadline = time.monotonic() + 10
    while True:  # the packets are read on the next ticks
        m = scrape(port)
        if metric(m, "confroom_rtp_packets_received_total") >= 15 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert metric(m, "confroom_calls", state="in-progress") == 2
    assert metric(m, "confroom_call_statuses_total", status="ringing") == 2
    assert metric(m, "confroom_conferences") == 1
    assert metric(m, "confroom_conference_members") == 2
    assert metric(m, "confroom_webhook_latency_seconds_count") >= 2  # the two call hooks
    lateness = metric(m, "confroom_media_clock_lateness_seconds_count")
    assert lateness > 0
    assert metric(m, "confroom_media_clock_lateness_seconds_bucket", le="+Inf") == lateness
    assert metric(m, "confroom_media_tick_duration_seconds_count") > 0
    assert metric(m, "confroom_rtp_packets_received_total") >= 15
    assert metric(m, "confroom_rtp_packets_sent_total") > 0
    assert metric(m, "confroom_open_fds") > 0
    assert metric(m, "confroom_max_fds") >= metric(m, "confroom_open_fds")
    assert metric(m, "confroom_sip_tcp_connections") == 0
    assert metric(m, "confroom_http_connections") >= 1  # this scrape's own connection

    for c in (a, b):
        c.hang_up()
        c.done()
    e.end("ops")
    for c in (a, b):
        srv.wait_log(rf"call end call_sid={re.escape(c.sid)} ")
    m = scrape(port)
    assert metric(m, "confroom_calls", state="in-progress") == 0
    assert metric(m, "confroom_conferences") == 0
    assert metric(m, "confroom_call_statuses_total", status="completed") == 2
    # the clock kept ticking (the calls may have ended within one 20 ms tick of the scrape
    # above: scrape again until it shows, bounded)
    deadline = time.monotonic() + 5
    while (metric(m, "confroom_media_clock_lateness_seconds_count") <= lateness
           and time.monotonic() < deadline):
        time.sleep(0.02)
        m = scrape(port)
    assert metric(m, "confroom_media_clock_lateness_seconds_count") > lateness


def test_a_50_MB_call_hook_answer_is_cut_off_at_the_cap(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner
) -> None:
    hook_app.route(CALL, Reply(stream=BIG))
    srv = confroom(hook_app.url(CALL))
    before = rss_kib(srv.pid)
    res = sipp.run("uac_expect_status", srv.target, variables={"expected_status": 500},
                   timeout=20)
    assert res.ok(), res.describe()  # a 2xx that is not a verb list: 500, as for bad JSON
    srv.wait_log(rf"hook {re.escape(hook_app.url(CALL))} failed: response larger than "
                 r"1048576 bytes")
    with hook_app._cond:
        assert hook_app._cond.wait_for(lambda: hook_app.streamed, timeout=10)
        written = hook_app.streamed[0]
    assert written < BIG // 4, f"{written} bytes went out: the server kept reading"
    grew = rss_kib(srv.pid) - before
    assert grew < 20 * 1024, f"the server's RSS grew by {grew} KiB"


def test_webhook_and_download_faults_leave_no_reference_cycles(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner
) -> None:
    """Every kind of webhook fault and failed audio download ends its call as defined and
    leaves none of confroom's objects in a reference cycle (README, Memory)."""
    dead = f"http://{HOST}:{free_udp_port()}"  # nothing listens on that TCP port (refused)
    hook_app.route("/notaudio.wav", Reply(body="<html>not audio</html>",
                                          content_type="text/html"))
    faults: dict[str, tuple[Reply | list[Any], int]] = {
        "timeout": (Reply(verbs=[], delay=2.5), 480),
        "http500": (Reply(status=500, body="boom", content_type="text/plain"), 480),
        "badjson": (Reply(body="[{no json"), 500),
        "big": (Reply(stream=BIG), 500),
        # failed downloads: the play is skipped, the hangup of an unanswered call is a 480
        "dl404": ([{"verb": "play", "url": hook_app.url("/missing.wav")},
                   {"verb": "hangup"}], 480),
        "dlrefused": ([{"verb": "play", "url": f"{dead}/x.wav"}, {"verb": "hangup"}], 480),
        "dlnotaudio": ([{"verb": "play", "url": hook_app.url("/notaudio.wav")},
                        {"verb": "hangup"}], 480),
    }

    def answer(req: HookRequest) -> Reply | list[Any]:
        return faults[req.json["to"]][0]

    hook_app.route(CALL, answer)
    apps = [app_table(f"{dead}/call", numbers=["refused"], name="refused"),
            app_table(hook_app.url(CALL))]
    srv: ConfroomProcess = confroom(apps=apps, webhook_timeout=1.0)
    expected = {**{k: v[1] for k, v in faults.items()}, "refused": 480}
    runs = {to: sipp.start("uac_expect_status", srv.target, service=to, timeout=30,
                           variables={"expected_status": status})
            for to, status in expected.items()}
    for to, run in runs.items():
        res = run.wait()
        assert res.ok(), f"{to}: {res.describe()}"
    srv.wait_logs(r"call end call_sid=", len(expected), timeout=15)
    for what in ("timed out after 1 s", "HTTP status 500", "not valid JSON",
                 "response larger than", "Cannot connect", "HTTP 404", "not a usable audio"):
        assert srv.find_logs(re.escape(what)), f"no log line about {what!r}"
    os.kill(srv.pid, signal.SIGUSR1)
    report = srv.wait_log(r"gc: tracked=\d+ frozen=(\d+) garbage=\d+ confroom_garbage=(\d+)")
    assert int(report.group(2)) == 0, f"failed hooks/downloads left cycles: {report.string}"
