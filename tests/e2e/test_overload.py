"""Overload end to end: an INVITE flood (SIPp) while a conference is up must not starve the
members' audio (RTP counted per 20 ms on the wire, FFT after), every INVITE gets a final
answer (200 or 503 with Retry-After), and the log summarises what was shed instead of a line
per call."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import app_table
from harness import (
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    RtpPeer,
    SippRunner,
    tone_power,
    write_tone_wav,
)
from test_control import ToneRoom, hears, window

pytestmark = pytest.mark.e2e

FLOOD_RATE = 600  # INVITE/s
FLOOD_CALLS = 3000  # 5 s


def frames_between(peer: RtpPeer, t1: float, t2: float) -> int:
    """Audio packets the server sent `peer` that arrived between monotonic t1 and t2."""
    return sum(1 for p in peer.packets((0, 8)) if t1 <= p.arrival < t2)


def test_invite_flood_keeps_the_conference_audio_and_answers_every_invite(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer], tmp_path: Path,
) -> None:
    hook_app.route("/call", [{"verb": "conference", "name": "steady"}])
    flood_app = tmp_path / "flood.json"  # every other number: a one-verb app
    flood_app.write_text(json.dumps([{"verb": "conference", "name": "flood"}]))
    srv = confroom(apps=[app_table(hook_app.url("/call"), numbers=["1000"]),
                         app_table(str(flood_app), numbers=["*"], name="flood")],
                   extra_toml={"limits": {"log_interval": 2.0}})
    freqs = {"alice": 440.0, "bob": 1000.0, "carol": 2200.0}
    room = ToneRoom.start(sipp, srv, hook_app, rtp_peer_factory, freqs, 20000, 15.0)
    mark = srv.mark()
    flood = sipp.start("uac_flood", srv.target, service="flood", calls=FLOOD_CALLS,
                       rate=FLOOD_RATE, limit=2000, timeout=40, recv_timeout=10,
                       trace_msg=False)
    res = flood.wait()
    # the window: from the first second of the flood (SIPp's start-up) to its last INVITE
    t1 = flood.started + 1.0
    t2 = flood.started + FLOOD_CALLS / FLOOD_RATE
    assert t2 - t1 >= 3.0
    room.finish()

    # every INVITE got a final answer: 200 (admitted) or 503 with a Retry-After
    assert res.ok(calls=FLOOD_CALLS), res.describe()
    statuses = res.final_statuses
    assert len(statuses) == FLOOD_CALLS and set(statuses) <= {200, 503}
    assert statuses.count(503) > 0, "nothing was shed: the flood did not test admission"
    assert all(int(x) >= 1 for x in re.findall(r"retry_after=(\d+)", res.logs))

    # the members' media came first: >= 99.5 % of their frames (50/s each) during the flood
    expected = (t2 - t1) / 0.02
    for name, peer in room.peers.items():
        got = frames_between(peer, t1, t2)
        print(f"flood: {name} got {got} of {expected:.0f} frames; "
              f"{statuses.count(200)} admitted, {statuses.count(503)} shed")
        assert got >= 0.995 * expected, (
            f"{name} got {got} of {expected:.0f} frames during the flood")
    # and they still hear each other (FFT), after the flood
    for name, peer in room.peers.items():
        after = window(peer, t2 + 0.5, room.t0 + 14.5)
        for other, f in freqs.items():
            if other != name:
                assert hears(after, f), f"{name} does not hear {other} after the flood"

    # one summary line per interval, no line per refused call
    summary = srv.wait_log(r"shed \d+ new call\(s\) in the last", timeout=5, since=mark)
    assert "top sources: 127.0.0.1=" in summary.string
    flood_lines = srv.log_text().splitlines()[mark:]
    assert not [ln for ln in flood_lines if " ERROR " in ln]
    shed_lines = [ln for ln in flood_lines if "shed " in ln]
    assert 1 <= len(shed_lines) <= 8


def test_sigterm_ends_conferences_after_the_drain_and_runs_the_action_hooks(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    """Drain on SIGTERM: after the drain time (1 s) the conference ends, each member leaves
    with conference_result "ended" and its actionHook runs (here: a tone, then hangup, so
    the member hears it before the BYE); the server exits 0."""
    hook_app.route("/call", [{"verb": "conference", "name": "drain-room",
                              "actionHook": "/after"}])
    hook_app.route("/after", [{"verb": "play", "url": "bye.wav"}, {"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"), extra_toml={"limits": {"drain_time": 1.0}})
    write_tone_wav(srv.media_dir / "bye.wav", 3000.0, 0.5, amplitude=0.4)
    peers = {name: rtp_peer_factory() for name in ("alice", "bob")}
    runs = [sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": p.port, "from_user": n},
                       timeout=30) for n, p in peers.items()]
    srv.wait_log(r"conference join .*members=2", timeout=15)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=20) == 0
    for run in runs:
        res = run.wait()
        assert res.ok(), res.describe()  # each got the server's BYE (after its actionHook)
    after = hook_app.wait_requests("/after", 2, timeout=5)
    assert sorted(r.json["from"] for r in after) == ["alice", "bob"]
    assert {r.json["conference_result"] for r in after} == {"ended"}
    for name, peer in peers.items():
        assert tone_power(peer.decoded_pcm(), 3000.0) > 0.01, f"{name} missed the goodbye"
    assert srv.find_logs(r"drain time over: ending conferences, 2 call\(s\) left")


def test_out_of_rtp_ports_is_a_503_with_retry_after_in_the_summary(
    hook_app: HookApp, sipp: SippRunner, rtp_peer_factory: Callable[[], RtpPeer],
    tmp_path: Path,
) -> None:
    """Two RTP ports, two calls up: the third INVITE gets 503 + Retry-After from the port
    allocation itself (admission's port reserve set to 0, so this path is the one taken);
    the log has no ERROR line, the summary at stop counts it."""
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "pause", "length": 4},
                             {"verb": "hangup"}])
    srv = ConfroomProcess(tmp_path / "srv", apps=[app_table(hook_app.url("/call"))],
                          rtp_port_count=4, extra_toml={"limits": {"min_free_ports": 0}})
    srv.start()
    try:
        srv.wait_ready()
        peers = [rtp_peer_factory() for _ in range(2)]
        runs = [sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": p.port}, timeout=30)
                for p in peers]
        for p in peers:
            p.wait_packets(3, timeout=15)  # both answered: both ports taken
        third = sipp.run("uac_flood", srv.target, service="1000", timeout=15)
        assert third.ok(), third.describe()
        assert third.final_statuses == [503]
        for run in runs:
            res = run.wait()
            assert res.ok(), res.describe()
        assert srv.stop(timeout=15) == 0
    finally:
        srv.kill()
    assert not [ln for ln in srv.lines if " ERROR " in ln]
    assert srv.find_logs(r"shed 1 new call\(s\) in the last \d+s with 503: no RTP port=1; "
                         r"top sources: 127\.0\.0\.1=1")
