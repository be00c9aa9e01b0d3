"""`Legs`: the node-to-node RTP legs of this node's cluster conferences.

For every conference this node has members of, and every other node that has members of it
too, this node keeps one leg: an ordinary media session of the engine (one RTP port of the
range, G.711) whose row in the conference's mix carries the peer's local sum in and gets
this node's local sum out (conference/audio.py), so a member hears its own node's mix minus
itself plus one frame from each other node, and nothing is ever forwarded between nodes.

A leg's port is published in Redis (`l:K` field "<this>><peer>"); the peer sends to that
port from its own leg's port, and each side accepts packets only from the address it read
there (the peer's advertised address and published port: `SourceGuard.pin`), so nobody else
can inject audio into a leg. `reconcile(K)` makes the legs of conference K match the nodes
listed in Redis (`n:K`); it runs on every change announced on the broadcast channel and on
every heartbeat, one at a time per conference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from confroom.app.control import CallInfo
from confroom.cluster import scripts
from confroom.conference.model import Member
from confroom.conference.service import ConferenceService
from confroom.media.engine import MediaEngine, MediaError
from confroom.media.session import MediaSession

if TYPE_CHECKING:
    from confroom.cluster.node import ClusterNode

log = logging.getLogger("confroom.cluster")


@dataclass(eq=False)
class Leg:
    key: str
    sid: str
    peer: str
    member: Member

    @property
    def session(self) -> MediaSession:
        return self.member.media


class Legs:
    def __init__(self, node: ClusterNode, engine: MediaEngine, svc: ConferenceService) -> None:
        self.node = node
        self.engine = engine
        self.svc = svc
        self._legs: dict[tuple[str, str], Leg] = {}  # (conference key, peer) -> leg
        self._queued: set[str] = set()  # conference keys with a reconcile waiting

    def schedule(self, key: str) -> None:
        """Reconcile conference `key`'s legs soon (once, however often it is asked)."""
        if key in self._queued:
            return
        self._queued.add(key)
        self.node._queue(f"legs:{key}", self._run(key))

    def schedule_all(self) -> None:
        keys = {f"{c.account_sid}:{c.name}" for c in self.svc.registry.all()}
        keys |= {k for k, _ in self._legs}
        for key in keys:
            self.schedule(key)

    async def _run(self, key: str) -> None:
        self._queued.discard(key)
        try:
            await self.reconcile(key)
        except (RedisError, OSError) as e:
            self.node._failed("reconciling node-to-node legs", e)

    def peers(self, key: str) -> list[str]:
        return sorted(p for k, p in self._legs if k == key)

    async def reconcile(self, key: str) -> None:
        from confroom.cluster.node import split_key

        me = self.node.node_id
        account, name = split_key(key)
        conf = self.svc.registry.get(account, name)
        audio = self.svc.audio_of(conf) if conf is not None and not conf.ended else None
        if conf is None or audio is None:
            for (k, peer) in list(self._legs):
                if k == key:
                    self._close(self._legs[(k, peer)], "no local members left")
            return
        r = self.node.redis
        c, _m, n, lk = scripts.conf_keys(key)
        async with r.pipeline(transaction=False) as p:
            p.hget(c, "sid")
            p.hgetall(n)
            p.hgetall(lk)
            sid, counts, ports = await p.execute()
        peers: set[str] = set()
        if sid == conf.sid:
            for peer, count in (counts or {}).items():
                try:
                    if peer != me and int(count) > 0:
                        peers.add(str(peer))
                except ValueError:
                    self.node._bad_data(0.0, "cluster: %s: bad node count %.40r", key, count)
        for (k, peer), old in list(self._legs.items()):
            if k == key and (peer not in peers or old.sid != conf.sid):
                self._close(old, "the peer has no member left")
        opened = False
        ordered = sorted(peers)
        found = await r.mget([scripts.node_key(p) for p in ordered]) if ordered else []
        hosts = {p: str(h) for p, h in zip(ordered, found, strict=True) if h}
        for peer in ordered:
            leg = self._legs.get((key, peer))
            if leg is None:
                try:
                    session = await self.engine.open_session()
                except MediaError as e:
                    log.error("cluster: conference %s: no RTP port for a leg to %s: %s",
                              name, peer, e)
                    continue
                if conf.ended or self.svc.registry.get(account, name) is not conf:
                    self.engine.close_session(session)
                    return
                info = CallInfo(call_sid=f"leg-{peer}", call_id="", from_user=peer,
                                to_user=me, caller_name="", originating_sip_ip="",
                                originating_sip_port=0, local_sip_address="",
                                account_sid=account, application_sid="")
                app = conf.host_app or self.node.config.apps[0]
                member = Member(call_sid=info.call_sid, info=info, media=session, app=app,
                                leg=True)
                leg = Leg(key, conf.sid, peer, member)
                self._legs[(key, peer)] = leg
                session.guard.pin(None)  # nothing accepted until the peer's port is known
                # one frame of buffering at most: the peer's clock is as steady as ours
                session.jitter.bank.cap_target(session.jitter.index, 1)
                audio.add(member)
                log.info("cluster: conference %s: leg to node %s on port %d", name, peer,
                         session.local_port)
            mine = str(leg.session.local_port)
            if (ports or {}).get(f"{me}>{peer}") != mine:  # new, or Redis lost it
                await r.hset(lk, f"{me}>{peer}", mine)
                await r.expire(lk, 30)
                opened = True
            self._connect(leg, hosts.get(peer), ports.get(f"{peer}>{me}") if ports else None)
        if opened:
            await r.publish(scripts.BCAST, _legs_msg(key, conf.sid))

    def _connect(self, leg: Leg, host: str | None, port: object) -> None:
        """Point the leg at the peer's published port (the peer's advertised host)."""
        if port is None or not host:
            return
        try:
            p = int(str(port))
        except ValueError:
            self.node._bad_data(0.0, "cluster: %s: bad leg port %.40r", leg.key, port)
            return
        if not 0 < p < 65536:
            return
        s = leg.session
        if s.remote == (host, p) and s.guard.expected == (host, p):
            return
        s.update("PCMU", 0, None, host, p, "recvonly")  # we send; no inactivity timeout
        s.guard.pin((host, p))
        log.info("cluster: leg to node %s connected to %s:%d", leg.peer, host, p)

    def _close(self, leg: Leg, why: str) -> None:
        self._legs.pop((leg.key, leg.peer), None)
        account, name = leg.key.partition(":")[::2]
        conf = self.svc.registry.get(account, name)
        audio = self.svc.audio_of(conf) if conf is not None else None
        if audio is not None:
            audio.remove(leg.member)
        self.engine.close_session(leg.session)
        log.info("cluster: conference %s: leg to node %s closed (%s)", name, leg.peer, why)

    def close_all(self) -> None:
        for leg in list(self._legs.values()):
            self._close(leg, "node stopping")


def _legs_msg(key: str, sid: str) -> str:
    import json

    return json.dumps({"t": "legs", "k": key, "sid": sid})
