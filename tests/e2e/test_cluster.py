"""A cluster end to end: a real redis-server, three real confroom nodes, SIPp calls to
different nodes, one webhook app; who hears whom checked by FFT on the wire.

Callers and audio helpers are those of test_conference.py (one `Env` per node, sharing the
webhook app, SIPp runner and RTP peers).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import (
    ACCOUNT_SID,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    HookRequest,
    RedisServer,
    RtpPeer,
    SippRunner,
    free_tcp_port,
)
from test_conference import (
    ACTION,
    CALL,
    STATUS,
    WAIT_BYE,
    Caller,
    Env,
    conference,
    hears,
    per_caller,
    send_tone_until_stopped,
    tone,
    tone_power,
    tone_times,
    wait_received_until,
)
from test_control import TOKEN, Rest
from test_tls import pki

pytestmark = pytest.mark.e2e

EVENTS = ["start", "end", "join", "leave"]


def start_nodes(confroom: ConfroomFactory, hooks: HookApp, redis: RedisServer, n: int,
                rest: list[Rest] | None = None, **kw: Any) -> list[ConfroomProcess]:
    """n nodes on `redis`; with `rest`, each serves the REST API (appended to it)."""
    hooks.route(STATUS, [])
    nodes = []
    for i in range(n):
        toml: dict[str, Any] = {"cluster": {"redis": redis.url, "node_id": f"node{i}"},
                                "limits": {"drain_time": 0.5}}
        if rest is not None:
            port = free_tcp_port()
            toml["http"] = {"port": port, "token": TOKEN}
            rest.append(Rest(port))
        nodes.append(confroom(hooks.url(CALL), extra_toml=toml, **kw))
    return nodes


def envs(nodes: list[ConfroomProcess], hooks: HookApp, sipp: SippRunner,
         peers: Callable[[], RtpPeer]) -> list[Env]:
    return [Env(srv, hooks, sipp, peers) for srv in nodes]


def status_events(hooks: HookApp) -> list[dict[str, Any]]:
    return [r.json for r in hooks.received(STATUS) if isinstance(r.json, dict)]


def wait_events(hooks: HookApp, event: str, count: int, timeout: float = 15
                ) -> list[dict[str, Any]]:
    def enough(reqs: list[HookRequest]) -> bool:
        return sum(1 for r in reqs if r.path == STATUS and isinstance(r.json, dict)
                   and r.json.get("event") == event) >= count
    hooks.wait_for(enough, timeout=timeout)
    return [e for e in status_events(hooks) if e.get("event") == event]


def share(peer: RtpPeer, freq: float, t0: float, t1: float) -> float:
    """The share of the energy received in [t0, t1] that is `freq`."""
    return tone_power(hears(peer, t0, t1), freq, bandwidth=60)


TONES = {"alice": 500.0, "bob": 1100.0, "carol": 1700.0}


def wait_hearing(want: list[tuple[RtpPeer, float]], what: str, timeout: float = 10.0) -> None:
    """Wait (1 s windows) until every peer in `want` hears its tone (> 30 % of what it
    receives); fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        t0 = time.monotonic()
        for peer, _ in want:
            wait_received_until(peer, t0 + 1.0)
        if all(share(peer, freq, t0, t0 + 1.0) > 0.3 for peer, freq in want):
            return
        assert time.monotonic() < deadline, what


def test_three_nodes_one_conference(confroom: ConfroomFactory, hook_app: HookApp,
                                    sipp: SippRunner, rtp_peer_factory: Callable[[], RtpPeer],
                                    redis_server: Callable[..., RedisServer]) -> None:
    """alice, bob and carol call three different nodes into conference `room`: each hears
    the other two and never itself; the status events come once each, in order, with one
    conference_sid and whole-conference counts; when bob hangs up alice and carol still
    hear each other; the last one out ends it once."""
    redis = redis_server()
    verb = conference("room", statusHook=STATUS, statusEvents=EVENTS)
    hook_app.route(CALL, per_caller({n: verb for n in TONES}))
    nodes = start_nodes(confroom, hook_app, redis, 3)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    callers: dict[str, Caller] = {}
    for i, name in enumerate(TONES):
        callers[name] = e[i].dial(name)
        e[i].join("room", callers[name])
    senders = {n: send_tone_until_stopped(c, TONES[n]) for n, c in callers.items()}
    try:
        # legs come up within a heartbeat; then listen for 1.5 s
        deadline = time.monotonic() + 10
        while True:
            t0 = time.monotonic()
            t1 = t0 + 1.5
            for c in callers.values():
                wait_received_until(c.peer, t1)
            ok = all(share(callers[n].peer, TONES[o], t0, t1) > 0.15
                     for n in TONES for o in TONES if o != n)
            if ok or time.monotonic() > deadline:
                break
        for name, c in callers.items():
            for other, freq in TONES.items():
                got = share(c.peer, freq, t0, t1)
                if other == name:
                    assert got < 0.02, f"{name} hears itself ({got:.3f} of its audio)"
                else:
                    assert got > 0.15, f"{name} does not hear {other} ({got:.3f})"
        # bob (node1) hangs up: alice and carol keep hearing each other
        callers["bob"].hang_up()
        wait_events(hook_app, "leave", 1)
        t0 = time.monotonic() + 0.5
        t1 = t0 + 1.0
        for n in ("alice", "carol"):
            wait_received_until(callers[n].peer, t1)
        assert share(callers["alice"].peer, TONES["carol"], t0, t1) > 0.3
        assert share(callers["carol"].peer, TONES["alice"], t0, t1) > 0.3
        assert share(callers["alice"].peer, TONES["bob"], t0, t1) < 0.02
    finally:
        for s in senders.values():
            s.stop()
    callers["alice"].hang_up()
    callers["carol"].hang_up()
    for c in callers.values():
        c.done()
    ends = wait_events(hook_app, "end", 1)
    evs = status_events(hook_app)
    kinds = [ev["event"] for ev in evs]
    assert kinds.count("start") == 1 and len(ends) == 1, kinds
    assert kinds.count("join") == 3 and kinds.count("leave") == 3, kinds
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    assert len({ev["conference_sid"] for ev in evs}) == 1, evs
    assert len(evs[0]["conference_sid"]) == 36, evs[0]
    joins = [ev["members"] for ev in evs if ev["event"] == "join"]
    assert joins == [1, 2, 3], joins
    leaves = [ev["members"] for ev in evs if ev["event"] == "leave"]
    assert leaves == [2, 1, 0], leaves
    assert evs[-1]["members"] == 0
    # nothing of the conference is left in Redis
    assert redis.command("KEYS", f"confroom:c:{ACCOUNT_SID}:room") == []


def test_concurrent_arrivals_start_once_and_max_participants_exact(
        confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
        rtp_peer_factory: Callable[[], RtpPeer],
        redis_server: Callable[..., RedisServer]) -> None:
    """12 callers arrive at once over 3 nodes for a limit of 6: one start, one
    conference_sid, exactly 6 admitted, the other 6 get conference_result full."""
    redis = redis_server()
    names = [f"u{i}" for i in range(12)]
    verb = conference("big", maxParticipants=6, statusHook=STATUS, statusEvents=EVENTS,
                      actionHook=ACTION)
    hook_app.route(CALL, per_caller({n: verb for n in names}))
    hook_app.route(ACTION, [{"verb": "hangup"}])
    nodes = start_nodes(confroom, hook_app, redis, 3)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    callers = [e[i % 3].dial(n, WAIT_BYE) for i, n in enumerate(names)]
    fulls = hook_app.wait_requests(ACTION, 6, timeout=30)
    assert all(r.json["conference_result"] == "full" for r in fulls), [r.json for r in fulls]
    joins = wait_events(hook_app, "join", 6, timeout=30)
    starts = wait_events(hook_app, "start", 1)
    assert len(starts) == 1
    assert len(joins) == 6 and max(ev["members"] for ev in joins) == 6, joins
    sids = {ev["conference_sid"] for ev in status_events(hook_app)}
    sids |= {r.json["conference_sid"] for r in fulls}
    assert len(sids) == 1 and len(next(iter(sids))) == 36, sids
    full_sids = {r.json["call_sid"] for r in fulls}
    joined_sids = {ev["call_sid"] for ev in joins}
    assert not full_sids & joined_sids
    assert len(full_sids | joined_sids) == 12
    assert int(redis.command("HLEN", f"confroom:m:{ACCOUNT_SID}:big")) == 6
    # SIGTERM, one node after the other: each hands its members' leaves over before exiting
    for srv in nodes:
        assert srv.stop() == 0
    for c in callers:
        c.done()
    assert len(wait_events(hook_app, "end", 1)) == 1
    kinds = [ev["event"] for ev in status_events(hook_app)]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == 1, kinds
    leaves = [ev["members"] for ev in status_events(hook_app) if ev["event"] == "leave"]
    assert sorted(leaves, reverse=True) == [5, 4, 3, 2, 1, 0], leaves
    assert redis.command("KEYS", "confroom:*") == [], "a stopped cluster left keys behind"


def test_node_killed_survivors_clean_up(confroom: ConfroomFactory, hook_app: HookApp,
                                        sipp: SippRunner,
                                        rtp_peer_factory: Callable[[], RtpPeer],
                                        redis_server: Callable[..., RedisServer]) -> None:
    """kill -9 of carol's node: within 10 s a survivor reports carol's leave with the count
    fixed, alice and bob hear each other throughout (no gap over 1 s), and every key left in
    Redis has a TTL."""
    redis = redis_server()
    verb = conference("room", statusHook=STATUS, statusEvents=EVENTS)
    solo = conference("solo", statusHook=STATUS, statusEvents=EVENTS)
    hook_app.route(CALL, per_caller({**{n: verb for n in TONES}, "dave": solo}))
    nodes = start_nodes(confroom, hook_app, redis, 3, rtp_timeout=60)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    callers = {n: e[i].dial(n) for i, n in enumerate(TONES)}
    for i, n in enumerate(TONES):
        e[i].join("room", callers[n])
    dave = e[2].dial("dave")  # alone in "solo" on the node that dies
    e[2].join("solo", dave)
    senders = {n: send_tone_until_stopped(c, TONES[n]) for n, c in callers.items()}
    try:
        deadline = time.monotonic() + 10
        while True:  # all three hear each other first
            t0 = time.monotonic()
            t1 = t0 + 1.0
            wait_received_until(callers["alice"].peer, t1)
            wait_received_until(callers["bob"].peer, t1)
            if (share(callers["alice"].peer, TONES["carol"], t0, t1) > 0.1
                    and share(callers["alice"].peer, TONES["bob"], t0, t1) > 0.1):
                break
            assert time.monotonic() < deadline, "alice never heard bob and carol"
        killed_at = time.monotonic()
        os.kill(nodes[2].pid, signal.SIGKILL)
        nodes[2].proc.wait(timeout=5)  # type: ignore[union-attr]
        leaves = wait_events(hook_app, "leave", 2, timeout=12)
        ends = wait_events(hook_app, "end", 1, timeout=12)
        assert time.monotonic() - killed_at < 11
        by_sid = {ev["call_sid"]: ev for ev in leaves}
        assert by_sid[callers["carol"].sid]["members"] == 2
        assert by_sid[dave.sid]["members"] == 0 and by_sid[dave.sid]["friendly_name"] == "solo"
        assert [ev["friendly_name"] for ev in ends] == ["solo"]  # it ends; "room" goes on
        t1 = time.monotonic()
        wait_received_until(callers["alice"].peer, t1)
        wait_received_until(callers["bob"].peer, t1)
        for listener, talker in (("alice", "bob"), ("bob", "alice")):
            times = tone_times(callers[listener].peer, TONES[talker], killed_at - 0.5, t1,
                               share=0.2)
            assert times, f"{listener} stopped hearing {talker}"
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert max(gaps) < 1.0, f"{listener} heard nothing of {talker} for {max(gaps):.2f}s"
            assert t1 - times[-1] < 1.0
    finally:
        for s in senders.values():
            s.stop()
    keys = redis.command("KEYS", "confroom:*")
    assert keys, "the conference's keys are gone although alice and bob are in it"
    for key in keys:
        assert int(redis.command("TTL", key)) > 0, f"{key} has no TTL"
    assert redis.command("EXISTS", "confroom:node:node2") == 0
    assert "node2" not in (redis.command("ZRANGE", "confroom:nodes", "0", "-1") or [])
    callers["alice"].hang_up()
    callers["bob"].hang_up()
    callers["alice"].done()
    callers["bob"].done()
    wait_events(hook_app, "end", 1)


def test_redis_outage_password_and_bad_data(confroom: ConfroomFactory, hook_app: HookApp,
                                            sipp: SippRunner,
                                            rtp_peer_factory: Callable[[], RtpPeer],
                                            redis_server: Callable[..., RedisServer]) -> None:
    """Redis with a password; garbage in Redis is logged and skipped; Redis down for 10 s:
    alice (node0) and bob (node1) keep hearing each other, a caller entering meanwhile gets
    conference_result error at once; after Redis is back (restarted, empty) the conference
    is restored and a new caller joins it and hears alice."""
    redis = redis_server(password="e2e-redis-pass")
    room = conference("room", statusHook=STATUS, statusEvents=EVENTS, actionHook=ACTION)
    hook_app.route(CALL, per_caller({"alice": room, "bob": room, "carol": room, "dave": room,
                                     "eve": conference("junk", actionHook=ACTION)}))
    hook_app.route(ACTION, [{"verb": "hangup"}])
    nodes = start_nodes(confroom, hook_app, redis, 2)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    alice, bob = e[0].dial("alice"), e[1].dial("bob")
    e[0].join("room", alice)
    e[1].join("room", bob)
    # garbage: a conference whose meta is not JSON, messages that are not the cluster's
    redis.command("HSET", f"confroom:c:{ACCOUNT_SID}:junk", "sid", "x", "meta", "{nope")
    redis.command("PUBLISH", "confroom:bcast", "garbage")
    redis.command("PUBLISH", "confroom:node:node0", "7|{not json")
    eve = e[1].dial("eve", WAIT_BYE)
    e[1].join("junk", eve)
    nodes[1].wait_log("bad meta in Redis")
    nodes[0].wait_log("bad broadcast message")
    senders = {n: send_tone_until_stopped(c, TONES[n]) for n, c in
               (("alice", alice), ("bob", bob))}
    try:
        wait_hearing([(alice.peer, TONES["bob"])], "alice never heard bob")
        down_at = time.monotonic()
        redis.stop()
        carol = e[0].dial("carol", WAIT_BYE)
        action = hook_app.wait_for(lambda rs: any(
            r.path == ACTION and r.json and r.json.get("from") == "carol" for r in rs),
            timeout=10)
        result = next(r.json for r in action if r.path == ACTION and r.json
                      and r.json.get("from") == "carol")
        assert result["conference_result"] == "error"
        carol.done()
        wait_received_until(alice.peer, down_at + 10)
        wait_received_until(bob.peer, down_at + 10)
        for listener, talker in ((alice, "bob"), (bob, "alice")):
            times = tone_times(listener.peer, TONES[talker], down_at, down_at + 10, share=0.2)
            gaps = [b - a for a, b in itertools.pairwise([down_at, *times, down_at + 10])]
            assert max(gaps) < 1.0, f"audio gap of {max(gaps):.2f}s while Redis was down"
        redis.start()
        nodes[0].wait_log("Redis reachable again", timeout=10)
        deadline = time.monotonic() + 10
        while not redis.command("EXISTS", f"confroom:c:{ACCOUNT_SID}:room"):
            assert time.monotonic() < deadline, "the conference was not restored in Redis"
            time.sleep(0.1)
        dave = e[1].dial("dave")
        e[1].join("room", dave)
        # the legs come back within a few heartbeats
        wait_hearing([(dave.peer, TONES["alice"])], "dave (node1) never heard alice (node0)")
    finally:
        for s in senders.values():
            s.stop()
    for c in (alice, bob, dave):
        c.hang_up()
        c.done()
    wait_events(hook_app, "end", 1)
    for srv in nodes:
        assert srv.stop() == 0


def test_rest_on_any_node_controls_the_cluster(confroom: ConfroomFactory, hook_app: HookApp,
                                               sipp: SippRunner,
                                               rtp_peer_factory: Callable[[], RtpPeer],
                                               redis_server: Callable[..., RedisServer]
                                               ) -> None:
    """The REST API of node0 lists the cluster's conference with members of both nodes,
    mutes bob (on node1: alice stops hearing him, he still hears her) and unmutes him, and
    DELETE ends the conference on both nodes (actionHook `ended` for each, one end event)."""
    redis = redis_server()
    room = conference("room", statusHook=STATUS, statusEvents=EVENTS, actionHook=ACTION)
    hook_app.route(CALL, per_caller({"alice": room, "bob": room}))
    hook_app.route(ACTION, [{"verb": "hangup"}])
    rest: list[Rest] = []
    nodes = start_nodes(confroom, hook_app, redis, 2, rest=rest)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    alice, bob = e[0].dial("alice", WAIT_BYE), e[1].dial("bob", WAIT_BYE)
    e[0].join("room", alice)
    e[1].join("room", bob)
    base = f"/v1/Accounts/{ACCOUNT_SID}/Conferences"
    assert rest[0].request("GET", base) == (200, ["room"])
    status, detail = rest[0].request("GET", f"{base}/room")
    assert status == 200, detail
    assert sorted(p["call_sid"] for p in detail["participants"]) == sorted([alice.sid,
                                                                           bob.sid])
    senders = [send_tone_until_stopped(alice, TONES["alice"]),
               send_tone_until_stopped(bob, TONES["bob"])]
    try:
        wait_hearing([(alice.peer, TONES["bob"])], "alice never heard bob")
        status, body = rest[0].update(bob.sid, {"conferenceParticipantAction": {
            "action": "mute"}})
        assert status == 202, body
        assert body["call_sids"] == [bob.sid]
        t0 = time.monotonic() + 0.4
        wait_received_until(alice.peer, t0 + 1.0)
        wait_received_until(bob.peer, t0 + 1.0)
        assert share(alice.peer, TONES["bob"], t0, t0 + 1.0) < 0.02
        assert share(bob.peer, TONES["alice"], t0, t0 + 1.0) > 0.3
        status, body = rest[0].update(bob.sid, {"conferenceParticipantAction": {
            "action": "unmute"}})
        assert status == 202, body
        t0 = time.monotonic() + 0.4
        wait_received_until(alice.peer, t0 + 1.0)
        assert share(alice.peer, TONES["bob"], t0, t0 + 1.0) > 0.3
        assert rest[0].update("no-such-call", {"conferenceParticipantAction": {
            "action": "mute"}})[0] == 404
    finally:
        for s in senders:
            s.stop()
    status, body = rest[0].request("DELETE", f"{base}/room")
    assert status == 202, body
    assert sorted(body["call_sids"]) == sorted([alice.sid, bob.sid])
    actions = hook_app.wait_requests(ACTION, 2, timeout=10)
    assert sorted(r.json["call_sid"] for r in actions) == sorted([alice.sid, bob.sid])
    assert all(r.json["conference_result"] == "ended" for r in actions)
    alice.done()
    bob.done()
    assert len(wait_events(hook_app, "end", 1)) == 1
    assert rest[1].request("GET", base) == (200, [])


def test_rediss_tls_with_password(confroom: ConfroomFactory, hook_app: HookApp,
                                  sipp: SippRunner, rtp_peer_factory: Callable[[], RtpPeer],
                                  redis_server: Callable[..., RedisServer],
                                  tmp_path: Path) -> None:
    """Two nodes on a TLS-only Redis with a password (rediss://, the CA in the URL): a
    caller on each node hears the other."""
    ca, cert, key = pki(tmp_path)
    redis = redis_server(password="e2e-tls-redis", tls=(ca, cert, key))
    room = conference("room")
    hook_app.route(CALL, per_caller({"alice": room, "bob": room}))
    nodes = start_nodes(confroom, hook_app, redis, 2)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    alice, bob = e[0].dial("alice"), e[1].dial("bob")
    e[0].join("room", alice)
    e[1].join("room", bob)
    sender = send_tone_until_stopped(bob, TONES["bob"])
    try:
        wait_hearing([(alice.peer, TONES["bob"])], "alice never heard bob over a rediss:// cluster")
    finally:
        sender.stop()
    assert "rediss://***@" in nodes[0].log_text()  # the password is not logged
    for c in (alice, bob):
        c.hang_up()
        c.done()


def test_waiters_join_when_a_moderator_starts_it_elsewhere_and_end_on_exit_ends_all(
        confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
        rtp_peer_factory: Callable[[], RtpPeer],
        redis_server: Callable[..., RedisServer]) -> None:
    """carol (node1) and dave (node2) wait (startConferenceOnEnter false); the moderator
    (node0, endConferenceOnExit) starts it: both join and hear him; when he hangs up, both
    leave on their nodes with conference_result ended, and the end is reported once."""
    redis = redis_server()
    wait = conference("board", startConferenceOnEnter=False, statusHook=STATUS,
                      statusEvents=EVENTS, actionHook=ACTION)
    mod = conference("board", endConferenceOnExit=True, statusHook=STATUS,
                     statusEvents=EVENTS)
    hook_app.route(CALL, per_caller({"carol": wait, "dave": wait, "mod": mod}))
    hook_app.route(ACTION, [{"verb": "hangup"}])
    nodes = start_nodes(confroom, hook_app, redis, 3)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    carol, dave = e[1].dial("carol", WAIT_BYE), e[2].dial("dave", WAIT_BYE)
    nodes[1].wait_log("waits for it to start")
    nodes[2].wait_log("waits for it to start")
    assert hook_app.received(STATUS) == []
    moderator = e[0].dial("mod")
    e[0].join("board", moderator)
    e[1].join("board", carol)
    e[2].join("board", dave)
    sender = send_tone_until_stopped(moderator, TONES["alice"])
    try:
        wait_hearing([(carol.peer, TONES["alice"]), (dave.peer, TONES["alice"])],
                     "the waiters never heard the moderator")
    finally:
        sender.stop()
    moderator.hang_up()
    actions = hook_app.wait_requests(ACTION, 2, timeout=10)
    assert sorted(r.json["call_sid"] for r in actions) == sorted([carol.sid, dave.sid])
    assert all(r.json["conference_result"] == "ended" for r in actions)
    for c in (moderator, carol, dave):
        c.done()
    assert len(wait_events(hook_app, "end", 1)) == 1
    kinds = [ev["event"] for ev in status_events(hook_app)]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    assert kinds.count("start") == 1 and kinds.count("join") == 3, kinds
    assert kinds.count("leave") == 3, kinds
    assert redis.command("KEYS", "confroom:c:*") == []


def test_distribute_dtmf_and_record_across_nodes(confroom: ConfroomFactory,
                                                 hook_app: HookApp, sipp: SippRunner,
                                                 rtp_peer_factory: Callable[[], RtpPeer],
                                                 redis_server: Callable[..., RedisServer]
                                                 ) -> None:
    """alice (node0) starts a recorded conference with distributeDtmf; bob is on node1: her
    digit reaches him as RFC 4733, and the one recording (on node0) holds bob's tone."""
    redis = redis_server()
    hook_app.route(CALL, per_caller({
        "alice": conference("rec", distributeDtmf=True,
                            record={"path": "recordings/rec.wav"}),
        "bob": conference("rec")}))
    nodes = start_nodes(confroom, hook_app, redis, 2)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    alice = e[0].dial("alice")
    e[0].join("rec", alice)  # alice starts it (and its recording) before bob calls
    bob = e[1].dial("bob")
    e[1].join("rec", bob)
    sender = send_tone_until_stopped(bob, TONES["bob"])
    try:
        wait_hearing([(alice.peer, TONES["bob"])], "alice never heard bob")
        alice.peer.send_dtmf("7", alice.addr)
        events = bob.peer.wait_packets(4, timeout=5, payload_types=[101])
        assert {ev.payload[0] for ev in events} == {7}
        nodes[1].wait_log(r"conference dtmf name=rec from node node0 digit=7 sent_to=1")
    finally:
        sender.stop()
    bob.hang_up()
    bob.done()
    alice.hang_up()
    alice.done()
    nodes[0].wait_log(r"conference recording done name=rec ", timeout=10)
    with wave.open(str(nodes[0].media_dir / "recordings" / "rec.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    loud = pcm[np.abs(pcm.astype(np.int32)) > 300]
    assert len(loud) > 8000, "bob's tone is missing from the recording"
    assert tone_power(pcm, TONES["bob"], bandwidth=60) > 0.5


def test_cross_node_listener_is_at_most_about_one_frame_later(
        confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
        rtp_peer_factory: Callable[[], RtpPeer],
        redis_server: Callable[..., RedisServer]) -> None:
    """alice (node0) sends tone bursts after a quiet start; bob (node0) and carol (node1)
    hear each onset; carol's extra delay (the leg) is about one 20 ms frame: median <= 30 ms
    (one frame plus scheduling noise of a loaded machine)."""
    redis = redis_server()
    room = conference("lat")
    hook_app.route(CALL, per_caller({"alice": room, "bob": room, "carol": room}))
    nodes = start_nodes(confroom, hook_app, redis, 2)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    alice, bob, carol = e[0].dial("alice"), e[0].dial("bob"), e[1].dial("carol")
    e[0].join("lat", alice)
    e[0].join("lat", bob)
    e[1].join("lat", carol)
    burst = np.concatenate([tone(TONES["alice"], 0.1, amplitude=0.3),
                            np.zeros(3200, dtype=np.int16)])
    signal_pcm = np.concatenate([np.zeros(16000, dtype=np.int16), np.tile(burst, 8)])
    t_start = time.monotonic()
    alice.peer.send_pcm(signal_pcm, alice.addr)
    t_end = time.monotonic()
    wait_received_until(bob.peer, t_end + 0.3)
    wait_received_until(carol.peer, t_end + 0.3)
    onsets = [t_start + 2.0 + 0.5 * k for k in range(8)]

    def first_heard(peer: RtpPeer, t: float) -> float | None:
        times = tone_times(peer, TONES["alice"], t, t + 0.3, share=0.3)
        return times[0] if times else None

    extra = []
    for t in onsets[2:]:  # the first bursts let the leg's jitter buffer settle
        b, c = first_heard(bob.peer, t), first_heard(carol.peer, t)
        assert b is not None and c is not None, "a burst was not heard"
        extra.append(c - b)
    med = sorted(extra)[len(extra) // 2]
    print(f"cross-node extra delay per burst (ms): {[round(x * 1000, 1) for x in extra]}")
    assert med <= 0.030, f"carol hears alice {med * 1000:.1f} ms after bob (median)"
    for c in (alice, bob, carol):
        c.hang_up()
        c.done()


def test_workers_two_processes_one_conference(confroom: ConfroomFactory, hook_app: HookApp,
                                              sipp: SippRunner,
                                              rtp_peer_factory: Callable[[], RtpPeer]
                                              ) -> None:
    """`[cluster] workers = 2` without a Redis URL: a private redis-server and two worker
    processes on one SIP port; four callers (spread by the kernel) are one conference:
    carol and dave hear alice and bob; SIGTERM stops everything."""
    hook_app.route(CALL, per_caller({n: conference("room") for n in
                                     ("alice", "bob", "carol", "dave")}))
    srv = confroom(hook_app.url(CALL), extra_toml={"cluster": {"workers": 2},
                                                   "limits": {"drain_time": 0.5}})
    srv.wait_logs("confroom ready", 2, timeout=20)
    assert srv.find_logs(r"workers: private redis-server on unix://")
    env = Env(srv, hook_app, sipp, rtp_peer_factory)
    callers = {n: env.dial(n, WAIT_BYE) for n in ("alice", "bob", "carol", "dave")}
    for c in callers.values():
        env.join("room", c)
    senders = [send_tone_until_stopped(callers["alice"], TONES["alice"]),
               send_tone_until_stopped(callers["bob"], TONES["bob"])]
    try:
        deadline = time.monotonic() + 10
        while True:
            t0 = time.monotonic()
            for n in ("carol", "dave"):
                wait_received_until(callers[n].peer, t0 + 1.0)
            ok = all(share(callers[n].peer, TONES[o], t0, t0 + 1.0) > 0.15
                     for n in ("carol", "dave") for o in ("alice", "bob"))
            if ok:
                break
            assert time.monotonic() < deadline, "the callers of the two workers never met"
    finally:
        for s in senders:
            s.stop()
    assert srv.stop() == 0
    for c in callers.values():
        c.done()
    assert len(srv.find_logs(r"confroom: stopped")) == 2
