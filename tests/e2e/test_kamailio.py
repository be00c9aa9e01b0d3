"""The cluster's SIP front door: Kamailio (deploy/kamailio/kamailio.cfg) in front of 3 real
confroom nodes (independent processes, no shared state needed here), SIPp calling Kamailio.

Each node has its own call hook (/n<i>/call) and status hook (/n<i>/status) on one HookApp, so
the hook requests say which node took which call (the Call-ID is in the hook body); Kamailio's
DISPATCH log lines say where it sent each INVITE.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from frontdoor import KamailioProcess
from harness import (
    HOST,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    HookRequest,
    Reply,
    RtpPeer,
    SippRunner,
    dominant_frequency,
    loud_frames,
    require_tool,
    tone_power,
    write_tone_wav,
)

pytestmark = pytest.mark.e2e

NODES = 3
PAUSE = [{"verb": "answer"}, {"verb": "pause", "length": 20}]


@dataclass
class Cluster:
    nodes: list[ConfroomProcess]
    kamailio: KamailioProcess
    hooks: HookApp

    def node_of_call(self) -> dict[str, int]:
        """SIP Call-ID -> index of the node whose call hook got it."""
        out: dict[str, int] = {}
        for r in self.hooks.received():
            m = re.fullmatch(r"/n(\d+)/call", r.path)
            if m and r.json:
                out[r.json["call_id"]] = int(m.group(1))
        return out

    def completed(self) -> dict[str, int]:
        """SIP Call-ID -> index of the node that reported the call `completed`."""
        out: dict[str, int] = {}
        for r in self.hooks.received():
            m = re.fullmatch(r"/n(\d+)/status", r.path)
            if m and r.json and r.json.get("call_status") == "completed":
                out[r.json["call_id"]] = int(m.group(1))
        return out

    def node_index(self, uri: str) -> int:
        port = int(uri.rsplit(":", 1)[1].split(";")[0])
        return [n.sip_port for n in self.nodes].index(port)

    def dispatched(self, since: int = 0) -> list[tuple[float, str, int]]:
        """(time read, Call-ID, node index) of every INVITE Kamailio sent to a node."""
        return [(t, m.group(1), self.node_index(m.group(2))) for t, m in
                self.kamailio.find_timed_logs(r"DISPATCH call-id=(\S+) node=(\S+)", since)]


def _by_called_number(tone_wav: Path) -> Any:
    """The app of every node: 2000 plays a 440 Hz tone and hangs up; anything else waits."""
    def answer(req: HookRequest) -> list[dict[str, Any]]:
        to = str((req.json or {}).get("to", ""))
        if to.startswith("2000"):
            return [{"verb": "answer"}, {"verb": "play", "url": str(tone_wav)},
                    {"verb": "hangup"}]
        return PAUSE
    return answer


@pytest.fixture
def cluster(confroom: ConfroomFactory, hook_app: HookApp, tmp_path: Path) -> Iterator[Cluster]:
    kamailio = require_tool("kamailio")
    nodes = []
    for i in range(NODES):
        hook_app.route(f"/n{i}/status", Reply(status=200))
        node = confroom(hook_app.url(f"/n{i}/call"),
                        call_status_hook=hook_app.url(f"/n{i}/status"), rtp_timeout=60)
        wav = write_tone_wav(node.media_dir / "tone440.wav", 440, 1.5, amplitude=0.5)
        hook_app.route(f"/n{i}/call", _by_called_number(wav))
        nodes.append(node)
    kam = KamailioProcess(kamailio, tmp_path / "kamailio", [n.target for n in nodes]).start()
    try:
        yield Cluster(nodes, kam, hook_app)
    finally:
        rc = kam.stop()  # fails if kamailio or one of its children is left
        assert rc == 0, f"kamailio exit code {rc}\n{kam.log_text(40)}"


def test_calls_spread_and_dialogs_stay_on_their_node(
    cluster: Cluster, sipp: SippRunner, rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    rtp_peer, tone_peer = rtp_peer_factory(), rtp_peer_factory()
    kam = cluster.kamailio
    # 30 calls over UDP, each hung up by the caller (BYE through Kamailio)
    res = sipp.run("uac_basic", kam.target, calls=30, rate=15, limit=30, pause_ms=300,
                   keys={"rtp_port": rtp_peer.port}, timeout=40)
    assert res.ok(30), res.describe()
    # one call over TCP (Kamailio relays it to the node over UDP: double Record-Route)
    tcp = sipp.run("uac_basic", kam.target, transport="t1", pause_ms=300,
                   keys={"rtp_port": rtp_peer.port}, timeout=20)
    assert tcp.ok(), tcp.describe()
    # one call with two re-INVITEs (hold, resume) and the caller's BYE
    hold = sipp.run("uac_hold", kam.target, pause_ms=300, keys={"rtp_port": rtp_peer.port},
                    timeout=20)
    assert hold.ok(), hold.describe()
    # one call the node hangs up: its BYE goes back through Kamailio; audio goes direct
    bye = sipp.run("uac_wait_bye", kam.target, service="2000",
                   keys={"rtp_port": tone_peer.port}, timeout=30)
    assert bye.ok(), bye.describe()
    pcm = loud_frames(tone_peer.decoded_pcm(), threshold=1000)
    sources = tone_peer.sources()

    call_ids = res.call_ids + tcp.call_ids + hold.call_ids + bye.call_ids
    assert len(call_ids) == 33
    cluster.hooks.wait_for(lambda _: set(call_ids) <= set(cluster.completed()), timeout=15)
    took = cluster.node_of_call()
    per_node = [sum(1 for c in res.call_ids if took[c] == i) for i in range(NODES)]
    print(f"\n[kamailio] 30 UDP calls per node: {per_node}")
    assert all(n >= 1 for n in per_node), f"a node got no call: {per_node}"
    # Kamailio sent each INVITE to the node whose hook took the call, once
    sent = {c: i for _, c, i in cluster.dispatched()}
    assert len(cluster.dispatched()) == 33
    assert all(sent[c] == took[c] for c in call_ids)
    # ACK/BYE/re-INVITEs reached the node that had the call: it ended it (a BYE anywhere
    # else would get 481 and SIPp would count a failed call)
    done = cluster.completed()
    assert all(done[c] == took[c] for c in call_ids)
    # the node's BYE came through the proxy: the caller saw Kamailio's Via on top
    bye_msg = re.search(r"^BYE sip:.*?(?=^\S+ sip:|^SIP/2\.0 |\Z)", bye.messages, re.M | re.S)
    assert bye_msg, bye.messages[-2000:]
    vias = re.findall(r"^Via:\s*(.*)$", bye_msg.group(0), re.M | re.I)
    assert f"{HOST}:{kam.sip_port}" in vias[0], vias
    # the tone reached the caller straight from the node's RTP port, not via Kamailio
    node = cluster.nodes[took[bye.call_ids[0]]]
    assert {p for _, p in sources} <= set(range(node.rtp_lo, node.rtp_hi + 1)), sources
    assert len(pcm) >= 1.2 * 8000, f"only {len(pcm) / 8000:.2f}s of tone"
    assert abs(dominant_frequency(pcm) - 440) <= 10
    assert tone_power(pcm, 440) > 0.8


def test_killed_node_leaves_rotation(cluster: Cluster, sipp: SippRunner,
                                     rtp_peer: RtpPeer) -> None:
    kam, hooks = cluster.kamailio, cluster.hooks

    def kill(victim: int) -> tuple[int, float, set[str]]:
        mark = kam.mark()
        cluster.nodes[victim].kill()
        return mark, time.monotonic(), set(cluster.completed())

    def down_after(victim: int, mark: int, killed_at: float) -> float:
        pattern = rf"NODE-DOWN node=sip:{HOST}:{cluster.nodes[victim].sip_port}\b"
        kam.wait_log(pattern, timeout=10, since=mark)
        return kam.find_timed_logs(pattern, mark)[0][0] - killed_at

    # 1. with traffic: calls at 10/s, 200 ms long; node 2 gets SIGKILL while they run
    run = sipp.start("uac_basic", kam.target, calls=60, rate=10, limit=20, pause_ms=200,
                     keys={"rtp_port": rtp_peer.port}, timeout=60, recv_timeout=8)
    hooks.wait_for(lambda reqs: sum(1 for r in reqs if r.path == "/n2/call") >= 3, timeout=20)
    mark, killed_at, completed_before = kill(2)
    window = down_after(2, mark, killed_at)
    res = run.wait()
    dispatched = cluster.dispatched()
    retried = {c for c in kam.find_logs(r"DISPATCH call-id=(\S+) .*\(retry\)")
               for c in [c.group(1)]}
    # calls the dead node had taken (answered 100 or more) and not finished when it died
    lost = {c for _, c, i in dispatched if i == 2} - retried - completed_before
    down_at = killed_at + window
    print(f"\n[kamailio] with traffic (10 calls/s): killed node out of rotation after "
          f"{window:.2f}s; {len(retried)} INVITEs sent to it after its death were retried on a "
          f"survivor; {res.failed} failed call(s), {len(lost)} call(s) were up on it")
    assert window < 4.5, f"dead node taken out after {window:.2f}s"  # bound: 1 s + 2 s
    assert all(i != 2 for t, _, i in dispatched if t > down_at + 0.05), "sent to a dead node"
    # only calls the dead node already had may fail: every new call got through
    assert res.failed is not None and res.failed <= len(lost), res.describe()
    assert res.successful == 60 - res.failed, res.describe()

    # 2. without traffic: node 1 is found dead by the OPTIONS probes alone
    mark, killed_at, _ = kill(1)
    window = down_after(1, mark, killed_at)
    print(f"[kamailio] without traffic: killed node out of rotation after {window:.2f}s")
    assert window < 4.5, f"dead node taken out after {window:.2f}s"  # bound: 1 s + 2 s
    # afterwards every new call goes to the survivor, none is retried, none fails
    mark = kam.mark()
    more = sipp.run("uac_basic", kam.target, calls=20, rate=20, limit=20, pause_ms=100,
                    keys={"rtp_port": rtp_peer.port}, timeout=30)
    assert more.ok(20), more.describe()
    assert {cluster.node_of_call()[c] for c in more.call_ids} == {0}
    assert [i for _, _, i in cluster.dispatched(mark)] == [0] * 20


def test_draining_node_leaves_rotation_and_keeps_its_call(
    cluster: Cluster, sipp: SippRunner, rtp_peer: RtpPeer,
) -> None:
    """SIGTERM (an upgrade): the node answers the probes 503 while its calls finish, so the
    front door sends new calls elsewhere at once (not one 503 and a retry per call), and
    in-dialog requests of the call it still has keep reaching it."""
    kam, hooks = cluster.kamailio, cluster.hooks
    long_call = sipp.start("uac_basic", kam.target, pause_ms=8000,
                           keys={"rtp_port": rtp_peer.port}, timeout=30)
    (first,) = hooks.wait_for(
        lambda reqs: any(r.path.endswith("/call") for r in reqs), timeout=10)[:1]
    idx = int(first.path[2])
    node = cluster.nodes[idx]
    mark = kam.mark()
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    node.wait_log("draining", timeout=5)
    kam.wait_log(rf"NODE-DOWN node=sip:{HOST}:{node.sip_port}\b", timeout=5, since=mark)
    assert long_call.poll() is None, "the long call ended before the node left rotation"
    more = sipp.run("uac_basic", kam.target, calls=10, rate=10, limit=10, pause_ms=100,
                    keys={"rtp_port": rtp_peer.port}, timeout=30)
    assert more.ok(10), more.describe()
    assert idx not in {i for _, _, i in cluster.dispatched(mark)}
    assert not kam.find_logs("FAILOVER", mark), "a new call was sent to the draining node"
    res = long_call.wait()  # its BYE reached the draining node, which then exits
    assert res.ok(), res.describe()
    assert node.proc.wait(timeout=15) == 0
