"""Cluster costs, measured in one process (issue 10): the media cost of a conference split
over two nodes against one node, and the Redis work of a join and a leave.

    python3 bench/cluster_micro.py [--members 100] [--ticks 1500] [--joins 200]

1. Media: a `MediaEngine` with fake transports (no socket I/O: the packet I/O of a leg is
   one RTP packet in and one out per tick per node pair, see the DESIGN figure of ~160k
   receive+send pairs per CPU-second), one conference of N members sending a tone, ticked
   `--ticks` times; CPU per tick and per participant-frame for (a) all N on one node,
   (b) N/2 on a node plus one node-to-node leg (what each of two nodes runs).
2. Redis: a private redis-server, a real `ClusterNode` + `ConferenceService` (no SIP);
   `--joins` members enter one conference one after another, then leave; the latency of each
   enter (the Lua admission round trip) and Redis's own command counts (INFO commandstats)
   per join and per leave, and per heartbeat.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from confroom.app.control import CallInfo
from confroom.conference.audio import ConferenceAudio, MixBus, TalkGate
from confroom.conference.model import Member
from confroom.config import AppConfig, Hook, load
from confroom.media import g711
from confroom.media.engine import MediaEngine
from confroom.media.rtp import build_rtp_header
from confroom.media.session import MediaSession

APP = AppConfig(call_hook=Hook("http://127.0.0.1:9/call"), account_sid="acct")


class Sink:
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def close(self) -> None:
        pass


def info(sid: str) -> CallInfo:
    return CallInfo(call_sid=sid, call_id=sid, from_user=sid, to_user="1000", caller_name="",
                    originating_sip_ip="127.0.0.1", originating_sip_port=5070,
                    local_sip_address="127.0.0.1:5060", account_sid="acct",
                    application_sid="app")


def media_cost(members: int, legs: int, ticks: int) -> float:
    """Seconds of CPU per tick of one node with `members` callers and `legs` node legs."""
    engine = MediaEngine("127.0.0.1", 30000, 39998, rtp_timeout=0)
    bus = MixBus(gate=TalkGate())
    engine.mixers.append(bus)
    audio = ConferenceAudio(lambda m, t: None)
    bus.attach(audio)
    sessions = []
    for i in range(members + legs):
        port = 30000 + 2 * i
        s = MediaSession(port)
        s.update("PCMU", 0, 101, "10.0.0.9", port + 1, "sendrecv")
        engine.add_session(s, Sink())
        audio.add(Member(call_sid=f"m{i}", info=info(f"m{i}"), media=s, app=APP,
                         leg=i >= members))
        sessions.append(s)
    t = np.arange(160 * 50) / 8000.0
    payloads = []
    for i in range(len(sessions)):
        pcm = (np.sin(2 * np.pi * (300 + 7 * i) * t) * 8000).astype(np.int16)
        payloads.append(g711.encode("PCMU", pcm).tobytes())
    now, cpu = 100.0, 0.0
    for k in range(ticks):
        for i, s in enumerate(sessions):
            off = (k % 50) * 160
            pkt = build_rtp_header(0, k == 0, k & 0xFFFF, (k * 160) & 0xFFFFFFFF, 1000 + i)
            s.on_datagram(pkt + payloads[i][off:off + 160], ("10.0.0.9", s.local_port + 1), now)
        t0 = time.process_time()
        engine.tick(now)
        cpu += time.process_time() - t0
        now += 0.02
    return cpu / ticks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def redis_cost(joins: int) -> dict[str, Any]:
    from confroom.cluster.node import ClusterNode
    from confroom.conference.service import ConferenceService

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (scripts/setup.sh installs it)")
    port = free_port()
    tmp = Path(tempfile.mkdtemp())
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL)
    try:
        cfg = load(None, env={"CONFROOM_REDIS": f"redis://127.0.0.1:{port}/0",
                              "CONFROOM_NODE_ID": "bench"})
        engine = MediaEngine("127.0.0.1", 40000, 40998, rtp_timeout=0)
        loop = asyncio.get_running_loop()
        svc = ConferenceService(engine, None, loop.create_task)  # type: ignore[arg-type]
        node = ClusterNode(cfg, svc, engine, loop.create_task)
        for _ in range(50):
            try:
                await node.redis.ping()
                break
            except Exception:
                await asyncio.sleep(0.1)
        await node.start()
        verb = {"name": "bench"}

        async def commands() -> dict[str, int]:
            stats = await node.redis.info("commandstats")
            return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

        def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0
                    and k not in ("info",)}

        members = [Member(call_sid=f"c{i}", info=info(f"c{i}"), media=MediaSession(0),
                          app=APP) for i in range(joins)]
        before = await commands()
        lat = []
        conf = None
        for m in members:
            t0 = time.perf_counter()
            _, conf = await svc.enter(m, verb, start=True, limit=None)
            lat.append(time.perf_counter() - t0)
        await asyncio.sleep(0.5)  # legs/broadcast work of the joins settles
        after_join = await commands()
        assert conf is not None
        t0 = time.perf_counter()
        for m in members:
            svc.leave(conf, m, "hangup")
        pending = list(node._pending)
        await asyncio.wait(pending) if pending else None
        leave_s = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        after_leave = await commands()
        # heartbeat cost with one live conference of one local member
        m = Member(call_sid="hb", info=info("hb"), media=MediaSession(0), app=APP)
        await svc.enter(m, verb, start=True, limit=None)
        hb0 = await commands()
        await asyncio.sleep(5.0)
        hb1 = await commands()
        await node.stop()
        return {
            "enter_ms_p50": statistics.median(lat) * 1000,
            "enter_ms_p99": sorted(lat)[int(len(lat) * 0.99) - 1] * 1000,
            "per_join": {k: v / joins for k, v in delta(before, after_join).items()},
            "per_leave": {k: v / joins for k, v in delta(after_join, after_leave).items()},
            "leave_all_s": leave_s,
            "heartbeat_per_s": {k: v / 5.0 for k, v in delta(hb0, hb1).items()},
        }
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--ticks", type=int, default=1500)
    ap.add_argument("--joins", type=int, default=200)
    a = ap.parse_args()
    n = a.members
    one = media_cost(n, 0, a.ticks)
    half = media_cost(n // 2, 1, a.ticks)
    print(f"media, {n} members in one conference, {a.ticks} ticks (CPU per tick):")
    print(f"  one node, {n} members:            {one * 1e6:8.1f} us/tick "
          f"= {one / n * 1e6:.2f} us per participant-frame")
    print(f"  each of 2 nodes, {n // 2} + 1 leg:     {half * 1e6:8.1f} us/tick; both: "
          f"{2 * half * 1e6:.1f} us = {2 * half / n * 1e6:.2f} us per participant-frame")
    res = asyncio.run(redis_cost(a.joins))
    print(f"redis, {a.joins} joins then leaves of one conference:")
    print(f"  enter (admission round trip): p50 {res['enter_ms_p50']:.2f} ms, "
          f"p99 {res['enter_ms_p99']:.2f} ms")
    print(f"  Redis commands per join:  {res['per_join']}")
    print(f"  Redis commands per leave: {res['per_leave']}")
    print(f"  heartbeat, 1 conference:  {res['heartbeat_per_s']} per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
