"""`ConferenceService`: starts, joins, leaves and ends conferences, and sends their events.

The verb (`conference/verb.py`) asks it to admit a member (start / join / full), to put the
member into the mix once its enterHook has played, and to take it out again. It owns each
live conference's `ConferenceAudio` on the media clock (and its recording, `record.path`),
the endConferenceDuration countdown, the distribution of members' DTMF (`distributeDtmf`),
and the statusHook deliveries, which go out strictly in the order the events happened. Live
control (`conference/control.py`) finds members here and reports flag changes back.

In a cluster (`shared` set, see conference/shared.py) admission, the member count, ending
and the event stream are the cluster's; the local registry holds this node's part of each
conference, created when its first local member enters and retired when its last one leaves
while others remain on other nodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confroom.app.hooks import WebhookClient
from confroom.app.payload import call_fields
from confroom.app.session import to_hook
from confroom.app.verbs_impl import positive_int
from confroom.conference.audio import ConferenceAudio, MixBus, TalkGate
from confroom.conference.model import Conference, ConferenceRegistry, Member
from confroom.conference.recorder import MixRecorder, RecordPathError, resolve_record_path
from confroom.conference.shared import Entry, SharedState, SharedStateError
from confroom.config import AppConfig
from confroom.media.engine import MediaEngine
from confroom.ordered import KeyedSerial

log = logging.getLogger("confroom.conference")


async def _awaited(aw: Awaitable[Any]) -> Any:
    return await aw


def iso_now() -> str:
    """`2020-04-27T13:44:17.336Z`: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ConferenceService:
    def __init__(
        self,
        engine: MediaEngine,
        hooks: WebhookClient,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        registry: ConferenceRegistry | None = None,
        media_dir: Path | None = None,
        gate: TalkGate | None = None,
    ) -> None:
        self.engine = engine
        self.media_dir = media_dir  # where recordings go (None: recording disabled)
        self.hooks = hooks
        self.registry = registry or ConferenceRegistry()
        self._spawn = spawn
        self._ordered = KeyedSerial(spawn)
        self._audio: dict[str, ConferenceAudio] = {}  # conference sid -> its mix
        self.bus = MixBus(gate=gate)  # mixes every conference of this node, once per tick
        engine.mixers.append(self.bus)
        self._end_timers: dict[str, asyncio.TimerHandle] = {}
        # the cluster's shared registry (None: a single node, in-memory only)
        self.shared: SharedState | None = None
        # cluster: finds the app a conference's events are signed for, by name
        self.app_named: Callable[[str], AppConfig | None] = lambda _name: None

    # ---- admission ---------------------------------------------------------------------

    async def enter(self, member: Member, verb: dict[str, Any], *, start: bool,
                    limit: int | None) -> tuple[str, Conference | None]:
        """Admit `member` to the verb's conference: ("start" | "join", conf) when admitted,
        ("full", conf), ("wait", None), or ("error", None) when the cluster's shared state
        cannot be reached."""
        account, name = member.info.account_sid, str(verb["name"])
        if self.shared is None:
            conf = self.registry.get(account, name)
            if conf is None:
                return ("start", self.start(member, verb)) if start else ("wait", None)
            if conf.is_full(limit):
                return "full", conf
            self.admit(conf, member)
            return "join", conf
        meta = {
            "statusHook": verb.get("statusHook"),
            "statusEvents": [str(e) for e in verb.get("statusEvents") or ()],
            "maxParticipants": positive_int(verb.get("maxParticipants")),
            "app": member.app.name,
        }
        new = self._conference_of(account, name, Entry("start", started_at=time.time(),
                                                       meta=meta), member)
        start_event = self.event_body(new, "start", call_fields(member.info)) if start else None
        try:
            entry = await self.shared.enter(account, name, member, start=start, limit=limit,
                                            meta=meta, new=new, start_event=start_event)
        except SharedStateError as e:
            log.error("conference %s: call_sid=%s cannot enter: %s", name, member.call_sid, e)
            return "error", None
        if entry.outcome == "wait":
            return "wait", None
        if entry.outcome == "full":
            return "full", self._conference_of(account, name, entry, member)
        conf = self._local_part(account, name, entry, member, verb)
        conf.members[member.call_sid] = member
        if entry.outcome == "start":  # its start event went out with the start itself
            log.info("conference start name=%s sid=%s by call_sid=%s (cluster)",
                     conf.name, conf.sid, member.call_sid)
        return entry.outcome, conf

    def _conference_of(self, account: str, name: str, entry: Entry, member: Member | None,
                       ) -> Conference:
        meta = entry.meta
        app = self.app_named(str(meta.get("app", "")))
        if app is None and member is not None:
            app = member.app
        return Conference(
            account_sid=account,
            name=name,
            started_at=entry.started_at,
            status_hook=meta.get("statusHook"),
            status_events=frozenset(str(e) for e in meta.get("statusEvents") or ()),
            host_app=app,
            max_participants=positive_int(meta.get("maxParticipants")),
            sid=entry.sid or str(uuid.uuid4()),
            owner=entry.owner,
        )

    def _local_part(self, account: str, name: str, entry: Entry, member: Member,
                    verb: dict[str, Any]) -> Conference:
        """This node's part of a cluster conference: the live one, or a new one."""
        conf = self.registry.get(account, name)
        if conf is not None and conf.sid == entry.sid:
            return conf
        if conf is not None:  # an older lifetime that ended elsewhere: gone
            self.end_local(conf, "a new lifetime started")
        conf = self._conference_of(account, name, entry, member)
        self.registry.create(conf)
        audio = ConferenceAudio(lambda m, talking: self._talking(conf, m, talking))
        self._audio[conf.sid] = audio
        record = verb.get("record")
        if entry.outcome == "start" and isinstance(record, dict) and record.get("path"):
            audio.recorder = self._open_recording(conf, str(record["path"]))
        self.bus.attach(audio)
        if self.shared is not None:
            self.shared.local_changed(conf)
        return conf

    def conference_of(self, account: str, name: str, entry: Entry) -> Conference:
        """A handle on a cluster conference this node has no part of (REST: end it)."""
        return self._conference_of(account, name, entry, None)

    def audio_of(self, conf: Conference) -> ConferenceAudio | None:
        """The conference's mix on this node (cluster legs are added to it)."""
        return self._audio.get(conf.sid)

    def start(self, member: Member, verb: dict[str, Any]) -> Conference:
        """Create the conference with `member` as its first (admitted) member."""
        conf = Conference(
            account_sid=member.info.account_sid,
            name=str(verb["name"]),
            started_at=time.time(),
            status_hook=verb.get("statusHook"),
            status_events=frozenset(str(e) for e in verb.get("statusEvents") or ()),
            host_app=member.app,
            host_ws=member.ws,
            max_participants=positive_int(verb.get("maxParticipants")),
        )
        self.registry.create(conf)
        audio = ConferenceAudio(lambda m, talking: self._talking(conf, m, talking))
        self._audio[conf.sid] = audio
        record = verb.get("record")
        if isinstance(record, dict) and record.get("path") is not None:
            audio.recorder = self._open_recording(conf, str(record["path"]))
        self.bus.attach(audio)
        conf.members[member.call_sid] = member
        log.info("conference start name=%s sid=%s by call_sid=%s",
                 conf.name, conf.sid, member.call_sid)
        self.emit(conf, "start", member)
        return conf

    def _open_recording(self, conf: Conference, path: str) -> MixRecorder | None:
        """The recorder for `record.path`, or None (error logged; the conference goes on)."""
        if self.media_dir is None:
            log.error("conference %s: record.path %r ignored: no media directory configured",
                      conf.name, path)
            return None
        try:
            target = resolve_record_path(self.media_dir, path)
            rec = MixRecorder.open(target)
        except RecordPathError as e:
            log.error("conference %s: recording refused: %s", conf.name, e)
            return None
        except OSError as e:
            log.error("conference %s: cannot record to %r: %s", conf.name, path, e)
            return None
        log.info("conference recording name=%s sid=%s path=%s", conf.name, conf.sid, target)
        return rec

    def admit(self, conf: Conference, member: Member) -> None:
        conf.members[member.call_sid] = member

    def mix_in(self, conf: Conference, member: Member, *, beep: bool) -> None:
        """Put an admitted member into the mix (after its enterHook)."""
        audio = self._audio.get(conf.sid)
        if audio is None or conf.ended:
            return
        member.mixed = True
        member.joined_at = time.time()
        audio.add(member)
        if beep:
            audio.beep()
        log.info("conference join name=%s call_sid=%s members=%d",
                 conf.name, member.call_sid, conf.mixed_count)
        self.emit(conf, "join", member)

    # ---- leaving and ending --------------------------------------------------------------

    def leave(self, conf: Conference, member: Member, reason: str) -> None:
        """Take a member out (hung up, kicked, ...). Ends the conference when it is the last
        one, or when it had endConferenceOnExit."""
        if conf.members.get(member.call_sid) is not member:
            return
        del conf.members[member.call_sid]
        was_mixed = member.mixed
        if self.shared is not None and not conf.ended:
            # counted out and reported in one step (the event carries the new count)
            event = (self.event_body(conf, "leave", call_fields(member.info))
                     if was_mixed else None)
            self.shared.leave(conf, member, lambda n: self._left(conf, member, n), event)
            self._detach(conf, member, reason, quiet=True)
            return
        self._detach(conf, member, reason)
        if conf.ended:
            return
        if was_mixed and member.beep and conf.members:
            audio = self._audio.get(conf.sid)
            if audio is not None:
                audio.beep()  # beep on exit too (extension; same attribute as on join)
        if not conf.members:
            self.end(conf, "last member left", by=member)
        elif member.end_conference_on_exit:
            delay = member.end_conference_duration
            if delay > 0:
                self._schedule_end(conf, delay, member)
            else:
                self.end(conf, f"call_sid={member.call_sid} left with endConferenceOnExit",
                         by=member)

    def _left(self, conf: Conference, member: Member, remaining: int) -> None:
        """Cluster: `member` is counted out; `remaining` members are left cluster-wide."""
        if conf.retired and remaining == 0:
            # this node had retired its part; the member it counted out last was the last
            self.emit(conf, "end", member, members=0)
            return
        if conf.ended:
            return
        if member.beep and conf.members:
            audio = self._audio.get(conf.sid)
            if audio is not None:
                audio.beep()
        if remaining == 0:
            self.end(conf, "last member left", by=member, shared_gone=True)
        elif member.end_conference_on_exit:
            delay = member.end_conference_duration
            if delay > 0:
                self._schedule_end(conf, delay, member)
            else:
                self.end(conf, f"call_sid={member.call_sid} left with endConferenceOnExit",
                         by=member)
        elif not conf.members:
            self.end_local(conf, "its last member on this node left", retire=True)

    def end_local(self, conf: Conference, why: str, *, retire: bool = False) -> None:
        """Cluster: end this node's part of `conf` without events (it ended elsewhere, whose
        node reported it; or, `retire`, this node has no member left in it)."""
        if conf.ended:
            return
        if retire and conf.end_pending:
            return  # its endConferenceDuration countdown runs here
        for member in list(conf.members.values()):
            del conf.members[member.call_sid]
            self._detach(conf, member, "ended", quiet=True)
        conf.retired = retire
        self._close(conf)
        log.info("conference %s name=%s sid=%s on this node (%s)",
                 "retired" if retire else "ended", conf.name, conf.sid, why)

    def _close(self, conf: Conference) -> None:
        conf.ended = True
        timer = self._end_timers.pop(conf.sid, None)
        if timer is not None:
            timer.cancel()
        self.registry.remove(conf)
        audio = self._audio.pop(conf.sid, None)
        if audio is not None:
            self.bus.detach(audio)
        rec = audio.stop_recording() if audio is not None else None
        if rec is not None:
            log.info("conference recording done name=%s path=%s duration=%.2f",
                     conf.name, rec.path, rec.duration)
        if self.shared is not None:
            self.shared.local_changed(conf)

    def _detach(self, conf: Conference, member: Member, reason: str, quiet: bool = False,
                ) -> None:
        was_mixed = member.mixed
        member.mixed = False
        audio = self._audio.get(conf.sid)
        if audio is not None:
            audio.remove(member)
        if member.leave_reason is None:
            member.leave_reason = reason
        if was_mixed:
            log.info("conference leave name=%s call_sid=%s reason=%s members=%d",
                     conf.name, member.call_sid, reason, conf.mixed_count)
            if not quiet:
                self.emit(conf, "leave", member)
        if member.on_leave is not None:
            member.on_leave(reason)

    def _schedule_end(self, conf: Conference, delay: float, by: Member) -> None:
        if conf.sid in self._end_timers:
            return
        conf.end_pending = True
        loop = asyncio.get_running_loop()
        self._end_timers[conf.sid] = loop.call_later(
            delay, lambda: self.end(conf, f"endConferenceDuration {delay:g}s elapsed", by=by)
        )

    def end(self, conf: Conference, why: str, by: Member | None = None, *,
            shared_gone: bool = False) -> None:
        """End the conference: every member leaves (their calls stay up), `end` is reported
        with the call fields of `by` (the member whose leaving ended it), else of a member
        still in it. In a cluster it ends on every node (`shared_gone`: the shared state is
        already gone, nothing left to end elsewhere)."""
        if conf.ended:
            return
        last = by if by is not None else next(iter(conf.members.values()), None)
        for member in list(conf.members.values()):
            del conf.members[member.call_sid]
            self._detach(conf, member, "ended")
        self._close(conf)
        log.info("conference end name=%s sid=%s (%s) duration=%ds",
                 conf.name, conf.sid, why, conf.duration(time.time()))
        if self.shared is None or shared_gone:
            self.emit(conf, "end", last, members=0)
            return

        def ended(remote: list[dict[str, Any]] | None) -> None:
            if remote is None:
                return  # another node ended it first and reported it
            for n, fields in enumerate(remote):
                self.emit_fields(conf, "leave", fields, len(remote) - n - 1)
            self.emit(conf, "end", last, members=0)

        assert self.shared is not None
        self.shared.end(conf, ended)

    def end_all(self) -> None:
        """Server shutdown: a single node ends its conferences; a cluster node's members leave
        them (the conferences go on on the other nodes)."""
        for conf in self.registry.all():
            if self.shared is None:
                self.end(conf, "server shutdown")
                continue
            for member in list(conf.members.values()):
                self.leave(conf, member, "ended")

    # ---- live control and members' DTMF -------------------------------------------------

    def find_member(self, call_sid: str) -> tuple[Conference, Member] | None:
        """The conference a call is an (admitted) member of, and its member."""
        for conf in self.registry.all():
            member = conf.members.get(call_sid)
            if member is not None:
                return conf, member
        return None

    def flags_changed(self, conf: Conference) -> None:
        """A member's muted / on_hold / tag / speak_only_to changed: remix from next tick."""
        audio = self._audio.get(conf.sid)
        if audio is not None:
            audio.flags_changed()

    def distribute_dtmf(self, conf: Conference, member: Member, digit: str) -> None:
        """Send a digit `member` pressed to every other member that hears it (not on hold,
        in its speakOnlyTo audience) as RFC 4733; a muted or held member's digits are not
        passed on."""
        if conf.ended or not member.mixed or member.muted or member.on_hold:
            return
        sent = 0
        for other in conf.members.values():
            if other is member or not other.mixed or other.on_hold:
                continue
            if member.speak_only_to and other.tag != member.speak_only_to:
                continue
            if other.media.send_dtmf(digit):
                sent += 1
        log.info("conference dtmf name=%s call_sid=%s digit=%s sent_to=%d",
                 conf.name, member.call_sid, digit, sent)
        if self.shared is not None:
            self.shared.dtmf(conf, digit, member.speak_only_to)

    def remote_dtmf(self, conf: Conference, digit: str, speak_only_to: str | None,
                    node: str) -> None:
        """Cluster: a member on another node pressed `digit` with distributeDtmf."""
        if conf.ended:
            return
        sent = 0
        for other in conf.members.values():
            if not other.mixed or other.on_hold:
                continue
            if speak_only_to and other.tag != speak_only_to:
                continue
            if other.media.send_dtmf(digit):
                sent += 1
        log.info("conference dtmf name=%s from node %s digit=%s sent_to=%d",
                 conf.name, node, digit, sent)

    # ---- events -----------------------------------------------------------------------------

    def _talking(self, conf: Conference, member: Member, talking: bool) -> None:
        self.emit(conf, "start-talking" if talking else "stop-talking", member)

    def emit(self, conf: Conference, event: str, member: Member | None,
             members: int | None = None) -> None:
        """Send `event` to the conference's statusHook if its statusEvents list it."""
        fields = call_fields(member.info) if member is not None else {}
        self.emit_fields(conf, event, fields, members, member)

    def event_body(self, conf: Conference, event: str, fields: dict[str, Any],
                   ) -> dict[str, Any] | None:
        """The statusHook body of `event` (without `members`), or None if not wanted."""
        name = conf.wants(event)
        if name is None or conf.status_hook is None or conf.host_app is None:
            return None
        body: dict[str, Any] = dict(fields)
        body.update(self.conference_fields(conf))
        body.update(event=name, time=iso_now())
        return body

    def emit_fields(self, conf: Conference, event: str, fields: dict[str, Any],
                    members: int | None, member: Member | None = None) -> None:
        body = self.event_body(conf, event, fields)
        if body is None:
            return
        if self.shared is not None:
            self.shared.emit(conf, body, members)  # the cluster's count, delivered in order
            return
        body["members"] = len(conf.members) if members is None else members
        assert conf.host_app is not None  # event_body checked it
        self.deliver(conf.sid, conf.status_hook, conf.host_app, body, conf.name, conf=conf,
                     member=member)

    def deliver(self, sid: str, status_hook: Any, app: AppConfig, body: dict[str, Any],
                name: str, *, conf: Conference | None = None, member: Member | None = None,
                ) -> None:
        """Send one status event (over the WebSocket app's socket when the conference has
        one, else POSTed); the events of one conference go out one after another."""
        try:
            hook = to_hook(status_hook)
        except ValueError as e:
            log.error("conference %s: bad statusHook: %s", name, e)
            return
        host_ws = conf.host_ws if conf is not None else None
        ws = host_ws
        if ws is None or ws.gone or ws.closing:  # the starter's socket is gone: the member's
            ws = member.ws if member is not None else None
        if ws is not None and not ws.gone and not ws.closing and ws.handles(hook):
            # a WebSocket app: a verb:hook over its socket (the ack's verbs are not used)
            self._ordered.submit(sid, _awaited(ws.request("verb:hook", body,
                                                          ws.hook_name(hook))))
            return
        if host_ws is not None and (ws is None or ws.handles(hook)):
            log.debug("conference %s: %s event not sent: no WebSocket app socket left",
                      name, body.get("event"))
            return
        base = app.call_hook.url if app.call_hook is not None else None
        self._ordered.submit(
            sid, self.hooks.call(hook, body, base_url=base, secret=app.webhook_secret)
        )

    def conference_fields(self, conf: Conference) -> dict[str, Any]:
        return {
            "conference_sid": conf.sid,
            "friendly_name": conf.name,
            "conferenceSid": conf.sid,
            "friendlyName": conf.name,
            "duration": conf.duration(time.time()),
        }
