"""The dashboard's live feed (`GET /v1/Events`) in a cluster: two real confroom nodes on a real
redis-server, alice on node0 and bob on node1 in one conference; the feed of either node shows
both members with their node, a change made on the other node (a mute through its REST API)
reaches it, and the end of the conference empties it.

Fixtures and callers are those of test_cluster.py / test_conference.py.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from harness import ACCOUNT_SID, HOST, ConfroomFactory, HookApp, RedisServer, RtpPeer, SippRunner
from test_cluster import envs, start_nodes
from test_conference import ACTION, CALL, WAIT_BYE, conference
from test_control import TOKEN, Rest, per_caller

pytestmark = pytest.mark.e2e

Confs = list[dict[str, Any]]


class Feed:
    """A reader of one node's event stream: `wait(pred)` returns the first `conferences`
    event (decoded) for which `pred` holds."""

    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.resp = resp
        self.last: Confs | None = None

    def _event(self) -> Confs | None:
        data = ""
        while True:
            line = self.resp.readline().decode()
            if not line:
                raise AssertionError("the event stream ended")
            if line in ("\n", "\r\n"):
                return json.loads(data) if data else None
            if line.startswith("data: "):
                data += line[6:].rstrip("\r\n")

    def wait(self, pred: Callable[[Confs], bool], what: str, timeout: float = 10.0) -> Confs:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            confs = self._event()
            if confs is None:
                continue
            self.last = confs
            if pred(confs):
                return confs
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                             f"last event: {self.last}")


@contextmanager
def feed(rest: Rest) -> Iterator[Feed]:
    port = int(rest.base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection(HOST, port, timeout=20)  # a keepalive every 15 s
    try:
        conn.request("GET", "/v1/Events", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        yield Feed(resp)
    finally:
        conn.close()


def members(confs: Confs) -> dict[str, dict[str, Any]]:
    return {p["call_sid"]: p for c in confs if c["friendly_name"] == "room"
            for p in c["participants"]}


def test_dashboard_feed_shows_every_node(confroom: ConfroomFactory, hook_app: HookApp,
                                         sipp: SippRunner,
                                         rtp_peer_factory: Callable[[], RtpPeer],
                                         redis_server: Callable[..., RedisServer]) -> None:
    redis = redis_server()
    room = conference("room", actionHook=ACTION)
    hook_app.route(CALL, per_caller({"alice": room, "bob": room}))
    hook_app.route(ACTION, [{"verb": "hangup"}])
    rest: list[Rest] = []
    nodes = start_nodes(confroom, hook_app, redis, 2, rest=rest)
    e = envs(nodes, hook_app, sipp, rtp_peer_factory)
    alice, bob = e[0].dial("alice", WAIT_BYE), e[1].dial("bob", WAIT_BYE)
    e[0].join("room", alice)
    e[1].join("room", bob)
    want = {alice.sid: "node0", bob.sid: "node1"}
    with feed(rest[0]) as f0, feed(rest[1]) as f1:
        for f in (f0, f1):
            confs = f.wait(lambda c: {s: p["node"] for s, p in members(c).items()} == want,
                           "both members, each with its node")
            assert [c["friendly_name"] for c in confs] == ["room"]
            assert confs[0]["members"] == 2
            assert {p["from"] for p in members(confs).values()} == {"alice", "bob"}
        # a change on node1 reaches node0's feed
        status, body = rest[1].update(bob.sid, {"mute_status": "mute"})
        assert status == 202, body
        f0.wait(lambda c: members(c).get(bob.sid, {}).get("muted") is True
                and members(c)[alice.sid]["muted"] is False, "bob shown muted on node0")
        status, body = rest[0].request("DELETE", f"/v1/Accounts/{ACCOUNT_SID}/Conferences/room")
        assert status == 202, body
        f0.wait(lambda c: c == [], "the ended conference gone from node0's feed")
    alice.done()
    bob.done()
