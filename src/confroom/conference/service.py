"""`ConferenceService`: starts, joins, leaves and ends conferences, and sends their events.

The verb (`conference/verb.py`) asks it to admit a member (start / join / full), to put the
member into the mix once its enterHook has played, and to take it out again. It owns each
live conference's `ConferenceAudio` on the media clock (and its recording, `record.path`),
the endConferenceDuration countdown, the distribution of members' DTMF (`distributeDtmf`),
and the statusHook deliveries, which go out strictly in the order the events happened. Live
control (`conference/control.py`) finds members here and reports flag changes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
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

    # ---- admission ---------------------------------------------------------------------

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

    def _detach(self, conf: Conference, member: Member, reason: str) -> None:
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

    def end(self, conf: Conference, why: str, by: Member | None = None) -> None:
        """End the conference: every member leaves (their calls stay up), `end` is reported
        with the call fields of `by` (the member whose leaving ended it), else of a member
        still in it."""
        if conf.ended:
            return
        timer = self._end_timers.pop(conf.sid, None)
        if timer is not None:
            timer.cancel()
        last = by if by is not None else next(iter(conf.members.values()), None)
        for member in list(conf.members.values()):
            del conf.members[member.call_sid]
            self._detach(conf, member, "ended")
        conf.ended = True
        self.registry.remove(conf)
        audio = self._audio.pop(conf.sid, None)
        if audio is not None:
            self.bus.detach(audio)
        rec = audio.stop_recording() if audio is not None else None
        if rec is not None:
            log.info("conference recording done name=%s path=%s duration=%.2f",
                     conf.name, rec.path, rec.duration)
        log.info("conference end name=%s sid=%s (%s) duration=%ds",
                 conf.name, conf.sid, why, conf.duration(time.time()))
        self.emit(conf, "end", last)

    def end_all(self) -> None:
        for conf in self.registry.all():
            self.end(conf, "server shutdown")

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

    # ---- events -----------------------------------------------------------------------------

    def _talking(self, conf: Conference, member: Member, talking: bool) -> None:
        self.emit(conf, "start-talking" if talking else "stop-talking", member)

    def emit(self, conf: Conference, event: str, member: Member | None) -> None:
        """Send `event` to the conference's statusHook if its statusEvents list it."""
        name = conf.wants(event)
        if name is None or conf.status_hook is None or conf.host_app is None:
            return
        try:
            hook = to_hook(conf.status_hook)
        except ValueError as e:
            log.error("conference %s: bad statusHook: %s", conf.name, e)
            return
        body: dict[str, Any] = call_fields(member.info) if member is not None else {}
        body.update(self.conference_fields(conf))
        body.update(event=name, time=iso_now(), members=len(conf.members))
        app = conf.host_app
        ws = conf.host_ws
        if ws is None or ws.gone or ws.closing:  # the starter's socket is gone: the member's
            ws = member.ws if member is not None else None
        if ws is not None and not ws.gone and not ws.closing and ws.handles(hook):
            # a WebSocket app: a verb:hook over its socket (the ack's verbs are not used)
            self._ordered.submit(conf.sid, _awaited(ws.request("verb:hook", body,
                                                               ws.hook_name(hook))))
            return
        if conf.host_ws is not None and (ws is None or ws.handles(hook)):
            log.debug("conference %s: %s event not sent: no WebSocket app socket left",
                     conf.name, name)
            return
        base = app.call_hook.url if app.call_hook is not None else None
        self._ordered.submit(
            conf.sid, self.hooks.call(hook, body, base_url=base, secret=app.webhook_secret)
        )

    def conference_fields(self, conf: Conference) -> dict[str, Any]:
        return {
            "conference_sid": conf.sid,
            "friendly_name": conf.name,
            "conferenceSid": conf.sid,
            "friendlyName": conf.name,
            "duration": conf.duration(time.time()),
        }
