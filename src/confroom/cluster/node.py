"""`ClusterNode`: this process as a member of the cluster that shares one Redis.

Implements the conference service's `SharedState` (conference/shared.py) with the Lua
scripts of cluster/scripts.py, and runs the node's two background tasks:

- the heartbeat (every `HEARTBEAT_S`): the node's key (TTL `NODE_TTL_S`) and its place in the
  `nodes` set, the TTLs of every conference it has members in (restoring a conference's
  shared state when Redis lost it, e.g. restarted without persistence), and the reaping of
  dead nodes: a node whose heartbeat is older than `NODE_TTL_S` has its members taken out of
  every conference by one survivor (a lock in Redis), with `leave` events, and a conference
  it held alone ends;
- the listener: the broadcast channel (a conference started: wake waiters; ended elsewhere:
  end this node's part; its nodes or legs changed: reconcile the node-to-node legs) and this
  node's own channel (status events of the conferences whose events it delivers).

Redis work of one conference runs in order (a per-conference queue); the media clock never
waits for any of it. While Redis is unreachable, entering fails at once (`SharedStateError`)
and calls already in conferences keep their audio; the node logs the outage once and the
recovery once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from confroom.app.payload import call_fields
from confroom.cluster import scripts
from confroom.cluster.legs import Legs
from confroom.conference.model import Conference, Member
from confroom.conference.service import ConferenceService
from confroom.conference.shared import Entry, SharedStateError
from confroom.config import Config
from confroom.media.engine import MediaEngine
from confroom.ordered import KeyedSerial
from confroom.ratelog import RateLimitedWarning

log = logging.getLogger("confroom.cluster")

HEARTBEAT_S = 1.0
NODE_TTL_S = 5.0  # a node silent this long is dead; its key expires after this
CONF_TTL_S = 30  # the TTL of a conference's keys, renewed by its nodes' heartbeats
REDIS_TIMEOUT_S = 2.0  # one Redis command; a call entering waits no longer than this
LEG_CHECK_EVERY = 3  # heartbeats between full checks of the node-to-node legs
COMMAND_TIMEOUT_S = 2.0  # a REST request waits this long at most for the other nodes


def conf_key(account: str, name: str) -> str:
    return f"{account}:{name}"


def split_key(key: str) -> tuple[str, str]:
    account, _, name = key.partition(":")
    return account, name


class ClusterNode:
    """See the module docstring. `await start()` before calls arrive, `await stop()` last."""

    def __init__(self, config: Config, svc: ConferenceService, engine: MediaEngine,
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        self.config = config
        self.node_id = config.cluster_node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.advertise = config.node_advertise
        self.svc = svc
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            config.cluster_redis, socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S, decode_responses=True,
        )
        self._enter = self.redis.register_script(scripts.ENTER)
        self._leave = self.redis.register_script(scripts.LEAVE)
        self._end = self.redis.register_script(scripts.END)
        self._emit = self.redis.register_script(scripts.EMIT)
        self._reap = self.redis.register_script(scripts.REAP)
        self._restore = self.redis.register_script(scripts.RESTORE)
        self._handover = self.redis.register_script(scripts.HANDOVER)
        self._keys: set[str] = set()  # conference keys this node entered (for the handover)
        self._stopping = False
        self._beats = 0
        self._spawn = spawn
        self._serial = KeyedSerial(spawn)
        self._pending: set[asyncio.Task[Any]] = set()
        self.legs = Legs(self, engine, svc)
        self._tasks: list[asyncio.Task[None]] = []
        self._meta: dict[str, tuple[float, str]] = {}  # sid -> (started, meta JSON)
        self._up = True
        self._bad_logs: dict[str, RateLimitedWarning] = {}  # one per kind of bad data
        # the server's calls by call_sid (REST updates for calls of this node)
        self.find_call: Callable[[str], Any] = lambda _sid: None
        svc.shared = self
        svc.app_named = lambda name: self._app_named(name) or config.apps[0]

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.redis.ping()
        except RedisError as e:
            raise OSError(f"cluster: cannot reach Redis ({_safe_url(self.config)}): {e}") from e
        await self._beat()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat(), name="cluster-heartbeat"),
                       loop.create_task(self._listen(), name="cluster-listener")]
        log.info("cluster: node %s joined (redis %s, node-to-node media at %s)",
                 self.node_id, _safe_url(self.config), self.advertise)

    async def stop(self) -> None:
        """Let queued Redis work finish (members' leaves), then leave the cluster."""
        if not self._tasks:  # never joined (Redis unreachable at start)
            with contextlib.suppress(RedisError, OSError):
                await self.redis.aclose()
            return
        for _ in range(3):
            pending = [t for t in self._pending if not t.done()]
            if not pending:
                break
            await asyncio.wait(pending, timeout=REDIS_TIMEOUT_S)
        # the conferences whose events this node delivered go on elsewhere: another node
        # with members delivers them from now on
        for key in sorted(self._keys):
            c, _m, n, _l = scripts.conf_keys(key)
            with contextlib.suppress(RedisError, OSError):
                heir = await self._handover(keys=[c, n], args=[self.node_id])
                if heir:
                    log.info("cluster: conference %s: status events now delivered by node %s",
                             split_key(key)[1], heir)
        self._stopping = True  # the listener delivers what was sent here before, then ends
        listener = self._tasks[1] if len(self._tasks) > 1 else None
        if listener is not None:
            await asyncio.wait([listener], timeout=REDIS_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.legs.close_all()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(scripts.node_key(self.node_id),
                                    scripts.node_confs(self.node_id))
            await self.redis.zrem(scripts.NODES, self.node_id)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()
        log.info("cluster: node %s left", self.node_id)

    def _bad_data(self, _now: float, msg: str, *args: object) -> None:
        """Bad data found in Redis: a warning per kind of it, at most one every 10 s."""
        warn = self._bad_logs.get(msg)
        if warn is None:
            warn = self._bad_logs[msg] = RateLimitedWarning(log)
        warn(time.monotonic(), msg, *args)

    def _app_named(self, name: str) -> Any:
        for app in self.config.apps:
            if app.name == name:
                return app
        return None

    def _queue(self, key: str, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._serial.submit(key, coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _failed(self, what: str, e: BaseException) -> None:
        if self._up:
            self._up = False
            log.error("cluster: Redis unreachable (%s): %s; conferences keep their audio, "
                      "new entries fail until it is back", what, e)

    # ---- SharedState ----------------------------------------------------------------------

    async def enter(self, account: str, name: str, member: Member, *, start: bool,
                    limit: int | None, meta: Mapping[str, Any], new: Conference,
                    start_event: dict[str, Any] | None) -> Entry:
        key = conf_key(account, name)
        self._keys.add(key)
        new.owner = self.node_id
        event = self._payload(new, start_event) if start_event is not None else ""
        c, m, n, lk = scripts.conf_keys(key)
        try:
            res = await self._enter(
                keys=[c, m, n, lk, scripts.node_confs(self.node_id), scripts.BCAST],
                args=[new.sid, f"{new.started_at:.3f}", self.node_id, member.call_sid,
                      int(start), limit or 0, json.dumps(meta),
                      json.dumps(call_fields(member.info)), CONF_TTL_S, key,
                      scripts.node_channel(""), event],
            )
        except (RedisError, OSError) as e:
            self._failed("entering a conference", e)
            raise SharedStateError(f"the cluster's Redis is unreachable: {e}") from e
        self._recovered()
        if not isinstance(res, list) or not res or res[0] not in ("start", "join", "full",
                                                                  "wait"):
            raise SharedStateError(f"unexpected answer from Redis: {res!r}")
        if res[0] == "wait":
            return Entry("wait")
        outcome, sid, started, owner, meta_json = (str(x) for x in res[:5])
        try:
            started_at = float(started)
        except ValueError:
            started_at = time.time()
        shared_meta = self._decode_meta(key, meta_json)
        self._meta[sid] = (started_at, meta_json)
        return Entry(outcome, sid, started_at, owner, shared_meta)

    def _decode_meta(self, key: str, raw: str) -> dict[str, Any]:
        try:
            meta = json.loads(raw)
            if isinstance(meta, dict):
                return meta
        except ValueError:
            pass
        self._bad_data(time.monotonic(), "cluster: conference %s has bad meta in Redis "
                       "(ignored): %.80r", key, raw)
        return {}

    async def is_started(self, account: str, name: str) -> bool:
        c = scripts.conf_keys(conf_key(account, name))[0]
        try:
            return bool(await self.redis.exists(c))
        except (RedisError, OSError) as e:
            self._failed("checking a conference", e)
            raise SharedStateError(str(e)) from e

    def _payload(self, conf: Conference, body: dict[str, Any]) -> str:
        app = conf.host_app.name if conf.host_app is not None else ""
        return json.dumps({"sid": conf.sid, "hook": conf.status_hook, "app": app,
                           "name": conf.name, "body": body})

    def leave(self, conf: Conference, member: Member, then: Callable[[int], None],
              event: dict[str, Any] | None) -> None:
        key = conf_key(conf.account_sid, conf.name)
        payload = self._payload(conf, event) if event is not None else ""

        async def run() -> None:
            try:
                res = await self._leave(
                    keys=[*scripts.conf_keys(key), scripts.BCAST],
                    args=[conf.sid, member.call_sid, self.node_id, key,
                          scripts.node_channel(""), conf.owner or self.node_id, payload])
                left, owner = int(res[0]), str(res[1])
            except (RedisError, OSError, ValueError, TypeError, IndexError) as e:
                self._failed("a member leaving", e)
                left, owner = -1, conf.owner
            conf.owner = owner  # where this conference's events go (an end after this too)
            then(left if left != -2 else -1)

        self._queue(key, run())

    def end(self, conf: Conference,
            then: Callable[[list[dict[str, Any]] | None], None]) -> None:
        key = conf_key(conf.account_sid, conf.name)

        async def run() -> None:
            try:
                values = await self._end(keys=[*scripts.conf_keys(key), scripts.BCAST],
                                         args=[conf.sid, key, self.node_id])
            except (RedisError, OSError) as e:
                self._failed("ending a conference", e)
                values = []
            if values is None:
                then(None)
                return
            remote: list[dict[str, Any]] = []
            for value in values or ():
                node, fields = self._member_value(key, value)
                if node != self.node_id and fields is not None:
                    remote.append(fields)
            then(remote)

        self._queue(key, run())

    def _member_value(self, key: str, value: Any) -> tuple[str, dict[str, Any] | None]:
        node, sep, raw = str(value).partition("|")
        try:
            fields = json.loads(raw) if sep else None
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            self._bad_data(time.monotonic(), "cluster: conference %s: bad member entry in "
                           "Redis (skipped): %.80r", key, value)
            return node, None
        return node, fields

    def emit(self, conf: Conference, body: dict[str, Any], members: int | None) -> None:
        key = conf_key(conf.account_sid, conf.name)
        payload = self._payload(conf, body)

        async def run() -> None:
            c, m = scripts.conf_keys(key)[:2]
            try:
                await self._emit(keys=[c, m], args=[
                    conf.sid, conf.owner or self.node_id, "" if members is None else members,
                    scripts.node_channel(""), payload])
            except (RedisError, OSError) as e:
                self._failed("sending a status event", e)
                log.warning("cluster: conference %s: %s event not delivered (Redis down)",
                            conf.name, body.get("event"))

        self._queue(key, run())

    def dtmf(self, conf: Conference, digit: str, speak_only_to: str | None) -> None:
        key = conf_key(conf.account_sid, conf.name)
        msg = json.dumps({"t": "dtmf", "k": key, "sid": conf.sid, "d": digit,
                          "to": speak_only_to, "from": self.node_id})

        async def run() -> None:
            try:
                await self.redis.publish(scripts.BCAST, msg)
            except (RedisError, OSError) as e:
                self._failed("passing a digit on", e)

        self._queue(key, run())

    def local_changed(self, conf: Conference) -> None:
        if conf.ended and not conf.retired:
            self._meta.pop(conf.sid, None)
            self._keys.discard(conf_key(conf.account_sid, conf.name))
        self.legs.schedule(conf_key(conf.account_sid, conf.name))

    # ---- the REST API across nodes (commands over Redis) ------------------------------------

    async def _command(self, kind: str, payload: dict[str, Any], *, first_found: bool,
                       ) -> list[dict[str, Any]]:
        """Ask every node (this one too); collect their answers until one found what was
        asked (`first_found`) or all living nodes answered, at most `COMMAND_TIMEOUT_S`."""
        rid = uuid.uuid4().hex
        channel = f"{scripts.PREFIX}reply:{rid}"
        pubsub = self.redis.pubsub()
        replies: list[dict[str, Any]] = []
        try:
            await pubsub.subscribe(channel)
            nodes = int(await self.redis.zcard(scripts.NODES))
            await self.redis.publish(scripts.BCAST, json.dumps(
                {"t": "cmd", "k": "", "sid": "", "id": rid, "kind": kind, "p": payload}))
            deadline = time.monotonic() + COMMAND_TIMEOUT_S
            while len(replies) < nodes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if msg is None:
                    continue
                with contextlib.suppress(ValueError):
                    reply = json.loads(str(msg["data"]))
                    if isinstance(reply, dict):
                        replies.append(reply)
                        if first_found and reply.get("found"):
                            break
        except (RedisError, OSError) as e:
            self._failed("a command to the other nodes", e)
            raise SharedStateError(f"the cluster's Redis is unreachable: {e}") from e
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        return replies

    async def _answer(self, msg: dict[str, Any]) -> None:
        """Carry out a command another node (or this one) sent, and reply."""
        from confroom.callupdate import UpdateError, apply_update, parse_update
        from confroom.conference.control import ControlError, live_conferences, participant_view

        kind, p = msg.get("kind"), msg.get("p")
        reply: dict[str, Any] = {"node": self.node_id, "found": False}
        if not isinstance(p, dict):
            return
        if kind == "update":
            call = self.find_call(str(p.get("call_sid")))
            if call is not None and call.info.account_sid == p.get("account"):
                try:
                    summary = await apply_update(self.svc, call, parse_update(p.get("body")))
                    reply.update(found=True, status=202, body=summary)
                except ControlError as e:
                    reply.update(found=True, status=400, body={"error": str(e)})
                except UpdateError as e:
                    reply.update(found=True, status=e.status, body={"error": str(e)})
        elif kind == "views":
            part = self.svc.registry.get(str(p.get("account")), str(p.get("name")))
            if part is not None and not part.ended:
                reply.update(found=True, sid=part.sid,
                             participants=[participant_view(m) for m in part.members.values()])
        elif kind == "live":  # the dashboard's feed
            reply.update(found=True, conferences=live_conferences(
                self.svc.registry.all(), self.node_id, time.time()))
        with contextlib.suppress(RedisError, OSError):
            await self.redis.publish(f"{scripts.PREFIX}reply:{msg.get('id')}",
                                     json.dumps(reply))

    async def update_call(self, account: str, call_sid: str, body: Any,
                          ) -> tuple[int, dict[str, Any]] | None:
        replies = await self._command("update", {"account": account, "call_sid": call_sid,
                                                 "body": body}, first_found=True)
        for r in replies:
            if r.get("found"):
                return int(r.get("status", 500)), dict(r.get("body") or {})
        return None

    async def conference_names(self, account: str) -> list[str]:
        prefix = f"{scripts.PREFIX}c:{account}:"
        names: set[str] = set()
        try:
            async for key in self.redis.scan_iter(match=prefix + "*", count=500):
                names.add(str(key)[len(prefix):])
        except (RedisError, OSError) as e:
            self._failed("listing conferences", e)
            raise SharedStateError(f"the cluster's Redis is unreachable: {e}") from e
        return sorted(names)

    async def _entry(self, account: str, name: str) -> Entry | None:
        c = scripts.conf_keys(conf_key(account, name))[0]
        try:
            sid, started, owner, meta = await self.redis.hmget(c, "sid", "started", "owner",
                                                                "meta")
        except (RedisError, OSError) as e:
            self._failed("reading a conference", e)
            raise SharedStateError(f"the cluster's Redis is unreachable: {e}") from e
        if not sid:
            return None
        try:
            started_at = float(started or 0)
        except ValueError:
            started_at = 0.0
        return Entry("join", str(sid), started_at, str(owner or ""),
                     self._decode_meta(conf_key(account, name), str(meta or "{}")))

    async def conference_detail(self, account: str, name: str) -> dict[str, Any] | None:
        from confroom.conference.control import iso

        entry = await self._entry(account, name)
        if entry is None:
            return None
        replies = await self._command("views", {"account": account, "name": name},
                                      first_found=False)
        participants = [v for r in replies if r.get("found") and r.get("sid") == entry.sid
                        for v in r.get("participants") or ()]
        return {"conference_sid": entry.sid, "friendly_name": name,
                "start_time": iso(entry.started_at),
                "duration": max(0, int(time.time() - entry.started_at)),
                "members": len(participants), "participants": participants}

    async def live_conferences(self) -> list[dict[str, Any]]:
        from confroom.conference.control import merge_live

        replies = await self._command("live", {}, first_found=False)
        return merge_live(r["conferences"] for r in replies
                          if r.get("found") and isinstance(r.get("conferences"), list))

    async def end_conference(self, account: str, name: str) -> dict[str, Any] | None:
        entry = await self._entry(account, name)
        if entry is None:
            return None
        conf = self.svc.registry.get(account, name)
        if conf is None or conf.sid != entry.sid:
            conf = self.svc.conference_of(account, name, entry)
        affected = await self.redis.hkeys(scripts.conf_keys(conf_key(account, name))[1])
        self.svc.end(conf, "ended by the REST API")
        return {"action": "end", "friendly_name": name, "conference_sid": entry.sid,
                "call_sids": sorted(str(a) for a in affected)}

    # ---- the listener ---------------------------------------------------------------------

    async def _listen(self) -> None:
        mine = scripts.node_channel(self.node_id)
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(scripts.BCAST, mine)
                # nothing may have been missed for long: reconcile what this node has
                for conf in self.svc.registry.all():
                    self.local_changed(conf)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=0.2 if self._stopping else 1.0)
                    if msg is None:
                        if self._stopping:
                            await pubsub.aclose()  # type: ignore[no-untyped-call]
                            return
                        continue
                    data = str(msg.get("data", ""))
                    if msg.get("channel") == mine:
                        self._on_event(data)
                    else:
                        self._on_broadcast(data)
            except asyncio.CancelledError:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except (RedisError, OSError) as e:
                self._failed("listening", e)
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(HEARTBEAT_S)

    def _on_event(self, data: str) -> None:
        """A status event for a conference whose events this node delivers."""
        count, _, raw = data.partition("|")
        try:
            ev = json.loads(raw)
            body = ev["body"]
            body["members"] = int(count)
            sid, name = str(ev["sid"]), str(ev["name"])
        except (ValueError, KeyError, TypeError):
            self._bad_data(time.monotonic(), "cluster: bad status event message (skipped): "
                           "%.80r", data)
            return
        app = self._app_named(str(ev.get("app", ""))) or self.config.apps[0]
        self._keys.add(conf_key(str(body.get("account_sid", "")), name))
        self.svc.deliver(sid, ev.get("hook"), app, body, name)

    def _on_broadcast(self, data: str) -> None:
        try:
            msg = json.loads(data)
            kind, key, sid = str(msg["t"]), str(msg["k"]), str(msg["sid"])
        except (ValueError, KeyError, TypeError):
            self._bad_data(time.monotonic(), "cluster: bad broadcast message (skipped): %.80r",
                           data)
            return
        if kind == "cmd":
            self._spawn(self._answer(msg))
            return
        account, name = split_key(key)
        if kind == "start":
            self.svc.registry.started(account, name, None)
        elif kind == "end":
            conf = self.svc.registry.get(account, name)
            if conf is not None and conf.sid == sid and msg.get("by") != self.node_id:
                self.svc.end_local(conf, f"ended by node {msg.get('by')}")
        elif kind == "dtmf":
            conf = self.svc.registry.get(account, name)
            if (conf is not None and conf.sid == sid and msg.get("from") != self.node_id
                    and isinstance(msg.get("d"), str)):
                to = msg.get("to")
                self.svc.remote_dtmf(conf, msg["d"], to if isinstance(to, str) else None,
                                     str(msg.get("from")))
        elif kind in ("nodes", "legs"):
            conf = self.svc.registry.get(account, name)
            if conf is not None and conf.sid == sid:
                self.legs.schedule(key)

    # ---- the heartbeat --------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        # not `while True`: a cancel that lands inside a Redis call can be swallowed by the
        # client, and `stop()` then waited for this task for ever (seen with --workers)
        while not self._stopping:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._beat()
                await self._reap_dead()
            except (RedisError, OSError) as e:
                self._failed("heartbeat", e)
                continue
            self._recovered()

    def _recovered(self) -> None:
        if not self._up:
            self._up = True
            log.info("cluster: Redis reachable again")

    async def _beat(self) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as p:
            p.set(scripts.node_key(self.node_id), self.advertise, px=int(NODE_TTL_S * 1000))
            p.zadd(scripts.NODES, {self.node_id: int(now * 1000)})
            p.expire(scripts.NODES, CONF_TTL_S * 10)
            p.expire(scripts.node_confs(self.node_id), CONF_TTL_S)
            await p.execute()
        for conf in self.svc.registry.all():
            self._renew(conf)
        self._beats += 1
        if self._beats % LEG_CHECK_EVERY == 0:
            self.legs.schedule_all()  # changes are announced; this catches a lost message

    def _renew(self, conf: Conference) -> None:
        """Renew the TTLs of a conference this node has members in, and write it back if
        Redis lost it. Queued with the conference's other Redis work, with the members of
        this moment: a member leaving meanwhile is counted out after, never re-added."""
        key = conf_key(conf.account_sid, conf.name)
        started, meta = self._meta.get(conf.sid, (conf.started_at, "{}"))
        members = {sid: f"{self.node_id}|{json.dumps(call_fields(m.info))}"
                   for sid, m in conf.members.items()}
        args: list[str | int] = [conf.sid, f"{started:.3f}", self.node_id, meta, key,
                                 CONF_TTL_S, json.dumps(members)]

        async def run() -> None:
            try:
                restored = await self._restore(
                    keys=[*scripts.conf_keys(key), scripts.node_confs(self.node_id),
                          scripts.BCAST], args=args)
            except (RedisError, OSError) as e:
                self._failed("heartbeat", e)
                return
            if restored == 1:
                log.warning("cluster: conference %s was missing in Redis: written back",
                            conf.name)

        self._queue(key, run())

    async def _reap_dead(self) -> None:
        cutoff = int((time.time() - NODE_TTL_S) * 1000)
        dead = await self.redis.zrangebyscore(scripts.NODES, "-inf", cutoff)
        for node in dead:
            node = str(node)
            if node == self.node_id:
                continue
            lock = f"{scripts.PREFIX}reap:{node}"
            if not await self.redis.set(lock, self.node_id, nx=True, ex=10):
                continue  # another survivor cleans up after it
            await self._reap_node(node)
            await self.redis.zrem(scripts.NODES, node)

    async def _reap_node(self, node: str) -> None:
        keys = await self.redis.smembers(scripts.node_confs(node))
        log.warning("cluster: node %s is gone (no heartbeat for %gs): taking its members out "
                    "of %d conference(s)", node, NODE_TTL_S, len(keys))
        for key in keys:
            key = str(key)
            res = await self._reap(keys=[*scripts.conf_keys(key), scripts.BCAST],
                                   args=[node, self.node_id, key])
            if not isinstance(res, list) or len(res) < 2 or not res[0]:
                continue
            sid, left = str(res[0]), int(res[1])
            with contextlib.suppress(ValueError):
                self._meta.setdefault(sid, (float(res[2]), str(res[3])))
            removed = [f for v in res[4:] if (f := self._member_value(key, v)[1]) is not None]
            self._report_reaped(key, sid, left, removed, node)
        await self.redis.delete(scripts.node_confs(node))

    def _report_reaped(self, key: str, sid: str, left: int,
                       removed: list[dict[str, Any]], dead: str) -> None:
        """Leave events for a dead node's members (and end, when none is left), sent by this
        node in its place."""
        account, name = split_key(key)
        started, meta_json = self._meta.get(sid, (time.time(), "{}"))
        conf = self.svc.registry.get(account, name)
        if conf is None or conf.sid != sid:
            meta = self._decode_meta(key, meta_json)
            conf = Conference(account, name, started, status_hook=meta.get("statusHook"),
                              status_events=frozenset(meta.get("statusEvents") or ()),
                              host_app=self._app_named(str(meta.get("app", "")))
                              or self.config.apps[0], sid=sid, owner=self.node_id)
        elif conf.owner == dead:
            conf.owner = self.node_id
        for i, fields in enumerate(removed):
            self.svc.emit_fields(conf, "leave", fields, left + len(removed) - i - 1)
        if left == 0:
            self.svc.emit_fields(conf, "end", removed[-1] if removed else {}, 0)
        if left == 0 and conf.members:
            self.svc.end_local(conf, f"node {dead} held its last other members")


def _safe_url(config: Config) -> str:
    """The Redis URL without its password (for logs)."""
    url = config.cluster_redis
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
