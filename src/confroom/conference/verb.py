"""The `conference` verb: enter (start, join, wait or full), enterHook, mix, leave, actionHook.

Spec section 3. The flow for one caller:

1. Answer. Look the conference up: it exists -> join (unless `maxParticipants` is reached:
   `full`); it does not and `startConferenceOnEnter` is not false -> start it and join;
   otherwise wait, playing the waitHook's play/say/pause verbs in a loop (0.75 s of silence
   between rounds) until the conference starts, then look again.
2. enterHook (play/say/pause) is played just before the caller goes into the mix; `beep`.
3. The caller stays until it hangs up, is kicked, or the conference ends. Meanwhile live
   control may put it on hold: then the hold waitHook plays to it in the same loop as the
   waitHook of step 1, until it is taken off hold. With `distributeDtmf`, its RFC 4733 digits
   are passed to the other members.
4. If the call is still up, the actionHook gets the call fields plus `conference_sid`,
   `friendly_name` and `conference_result` (ended | full | kicked | left | error); a verb
   list it returns replaces the rest of the call's verbs.

`leave` (a verb in a waitHook's list, waiting or on hold, or run through
`CallSession.leave_conference`) takes the caller out: conference_result `left`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from confroom.app import verbs_impl
from confroom.app.verbs import MEDIA_ONLY, WAIT_HOOK_VERBS
from confroom.app.verbs_impl import positive_int
from confroom.conference.model import Conference, Member
from confroom.conference.service import ConferenceService
from confroom.conference.shared import SharedStateError
from confroom.media.sources import SilenceSource

if TYPE_CHECKING:
    from confroom.app.session import CallSession

log = logging.getLogger("confroom.conference")

WAIT_ROUND_GAP_S = 0.75
RECHECK_START_S = 1.0  # cluster: how often a waiter asks the shared registry itself


def verb_table(svc: ConferenceService) -> Mapping[str, verbs_impl.VerbImpl]:
    """The verbs a call can run on this node: the app layer's, plus `conference` on `svc`.
    (The dependency goes one way: this package builds on `confroom.app`, never back.)"""
    return {**verbs_impl.VERBS, "conference": partial(run_conference, svc)}


async def run_conference(
    svc: ConferenceService, s: CallSession, verb: dict[str, Any]
) -> list[dict[str, Any]] | None:
    call = s.call
    if not call.answered:
        await call.answer()
    name = str(verb["name"])
    account = call.info.account_sid
    member = Member(
        call_sid=call.info.call_sid,
        info=call.info,
        media=call.media,
        app=call.app,
        tag=verb.get("memberTag") or None,
        speak_only_to=verb.get("speakOnlyTo") or None,
        muted=bool(verb.get("joinMuted", False)),
        end_conference_on_exit=bool(verb.get("endConferenceOnExit", False)),
        moderator=bool(verb.get("endConferenceOnExit", False))
        or verb.get("startConferenceOnEnter") is True,
        beep=bool(verb.get("beep", False)),
        end_conference_duration=float(verb.get("endConferenceDuration") or 0),
        distribute_dtmf=bool(verb.get("distributeDtmf", False)),
        ws=s.ws,
    )
    start_on_enter = verb.get("startConferenceOnEnter", True) is not False
    limit = verb.get("maxParticipants")
    conf: Conference | None = None
    loop = asyncio.get_running_loop()
    leave_asked: asyncio.Future[None] = loop.create_future()
    admitted = False

    def request_leave() -> None:
        log.info("conference %s: call_sid=%s leaves (leave verb)", name, call.info.call_sid)
        if admitted and conf is not None:
            svc.leave(conf, member, "left")
        elif not leave_asked.done():
            leave_asked.set_result(None)

    s.leave_conference = request_leave
    try:
        while True:
            if s.interrupted:
                return None
            outcome, conf = await svc.enter(member, verb, start=start_on_enter,
                                            limit=positive_int(limit))
            if outcome == "error":
                return await _action_hook(s, svc, verb, None, "error", name)
            if outcome == "wait":
                conf = await _wait_for_start(s, svc, account, name, verb, leave_asked)
                if leave_asked.done() and not s.interrupted:
                    return await _left_while_waiting(s, verb, name)
                if conf is None:
                    return None  # the call ended (or was redirected) while waiting
                conf = None
                continue  # it started: look again (it may be full already)
            assert conf is not None
            if outcome == "full":
                log.info("conference %s is full: call_sid=%s not admitted",
                         name, call.info.call_sid)
                conf, full = None, conf
                return await _action_hook(s, svc, verb, full, "full", name)
            break
        admitted = True
        assert conf is not None
        left = loop.create_future()

        def on_leave(reason: str) -> None:
            if not left.done():
                left.set_result(reason)

        member.on_leave = on_leave
        if leave_asked.done():
            svc.leave(conf, member, "left")
        if verb.get("enterHook"):
            await _play_hook(s, svc, verb["enterHook"], conf, "enterHook",
                             allowed=MEDIA_ONLY)
        if not left.done() and not s.interrupted:
            svc.mix_in(conf, member, beep=member.beep)
            await _stay(s, svc, conf, member, left)
        if not left.done():
            # the call ended or the session was redirected: leave now
            svc.leave(conf, member, "hangup" if call.ended else "redirected")
            return None
        return await _action_hook(s, svc, verb, conf, str(left.result()))
    finally:
        s.leave_conference = None
        # whatever happened (an error included), never leave a ghost member behind
        if conf is not None and member.leave_reason is None:
            svc.leave(conf, member, "hangup" if call.ended else "error")


async def _stay(
    s: CallSession, svc: ConferenceService, conf: Conference, member: Member,
    left: asyncio.Future[str],
) -> None:
    """Stay in the mix until the member leaves (or the session is interrupted); run the hold
    loop while live control holds the member; pass on its DTMF with distributeDtmf."""
    changed = asyncio.Event()
    member.on_change = changed.set
    if member.distribute_dtmf:
        member.media.dtmf_tap = lambda digit: svc.distribute_dtmf(conf, member, digit)
    hold: asyncio.Task[None] | None = None
    try:
        while not left.done() and not s.interrupted:
            if member.on_hold and hold is None:
                hold = asyncio.get_running_loop().create_task(_hold_loop(s, svc, conf, member))
            elif not member.on_hold and hold is not None:
                await _stop_loop(s, hold)
                hold = None
            changed.clear()
            waiter = asyncio.ensure_future(changed.wait())
            either: set[asyncio.Future[Any]] = {left, waiter}
            try:
                # asyncio.wait never cancels `left`, whatever happens to this wait
                await s.guarded(asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED))
            finally:
                waiter.cancel()
    finally:
        member.on_change = None
        if member.distribute_dtmf:
            member.media.dtmf_tap = None
        if hold is not None:
            await _stop_loop(s, hold)


async def _hold_loop(
    s: CallSession, svc: ConferenceService, conf: Conference, member: Member
) -> None:
    hook = member.hold_hook
    if not hook:
        return  # held in silence
    log.info("conference %s: call_sid=%s on hold, playing its waitHook", conf.name, s.call_sid)
    await _hook_loop(s, svc, hook, conf, None, "hold waitHook",
                     lambda: not member.on_hold or member.leave_reason is not None)


async def _stop_loop(s: CallSession, task: asyncio.Task[None]) -> None:
    """Stop a wait/hold loop and whatever it is playing."""
    task.cancel()
    s.call.stop_playback()
    await asyncio.wait({task})  # never raises; our own cancellation still propagates
    if not task.cancelled() and task.exception() is not None:
        log.error("call_sid=%s: hold loop failed: %r", s.call_sid, task.exception())
    s.call.stop_playback()


async def _action_hook(
    s: CallSession, svc: ConferenceService, verb: dict[str, Any], conf: Conference | None,
    result: str, name: str = "",
) -> list[dict[str, Any]] | None:
    if s.call.ended or not verb.get("actionHook"):
        return None
    fields = (svc.conference_fields(conf) if conf is not None
              else {"friendly_name": name, "friendlyName": name})
    body = s.fields(conference_result=result, **fields)
    verbs = await s.call_hook(verb["actionHook"], body, what="conference actionHook")
    return verbs or None


async def _left_while_waiting(
    s: CallSession, verb: dict[str, Any], name: str
) -> list[dict[str, Any]] | None:
    """`leave` before the conference started: the actionHook with conference_result left."""
    if s.call.ended or not verb.get("actionHook"):
        return None
    body = s.fields(conference_result="left", friendly_name=name, friendlyName=name)
    verbs = await s.call_hook(verb["actionHook"], body, what="conference actionHook")
    return verbs or None


async def _play_hook(
    s: CallSession, svc: ConferenceService, hook: Any, conf: Conference | None, what: str,
    extra: dict[str, Any] | None = None, allowed: frozenset[str] = WAIT_HOOK_VERBS,
) -> bool:
    """Fetch a wait/enter hook and play its play/say/pause verbs (a waitHook's `leave` takes
    the caller out of the conference). False when the hook failed or returned something not
    allowed (already logged)."""
    body = s.fields(**(svc.conference_fields(conf) if conf is not None else {}), **(extra or {}))
    verbs = await s.call_hook(hook, body, what=what, allowed=allowed, strict=False)
    if verbs is None:
        return False
    for v in verbs:
        if s.interrupted:
            break
        await verbs_impl.VERBS[v["verb"]](s, v)
        if v["verb"] == "leave":
            break
    return True


async def _wait_for_start(
    s: CallSession, svc: ConferenceService, account: str, name: str, verb: dict[str, Any],
    leave_asked: asyncio.Future[None],
) -> Conference | None:
    """Wait (unmixed) until the conference starts, running the waitHook loop meanwhile."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[Conference | None] = loop.create_future()

    def notify(conf: Conference | None) -> None:
        if not started.done():
            started.set_result(conf)

    cancel = svc.registry.on_start(account, name, notify)
    log.info("conference %s: call_sid=%s waits for it to start", name, s.call_sid)
    waiting = loop.create_task(_wait_loop(s, svc, verb, name, started))
    recheck = (loop.create_task(_recheck_start(svc, account, name, notify))
               if svc.shared is not None else None)
    try:
        either: set[asyncio.Future[Any]] = {started, leave_asked}
        await s.guarded(asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED))
    finally:
        cancel()
        waiting.cancel()
        if recheck is not None:
            recheck.cancel()
        s.call.stop_playback()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    if not started.done():
        return None
    return started.result() or Conference(account, name, 0.0)  # started elsewhere: look up


async def _recheck_start(svc: ConferenceService, account: str, name: str,
                         notify: Callable[[Conference | None], None]) -> None:
    """Cluster: a start announced while this waiter was not yet listening is not missed."""
    assert svc.shared is not None
    while True:
        await asyncio.sleep(RECHECK_START_S)
        try:
            if await svc.shared.is_started(account, name):
                notify(None)
                return
        except SharedStateError:
            continue  # logged by the cluster; the waiter keeps waiting


async def _wait_loop(
    s: CallSession, svc: ConferenceService, verb: dict[str, Any], name: str,
    started: asyncio.Future[Conference | None],
) -> None:
    hook = verb.get("waitHook")
    if not hook:
        return  # wait in silence
    extra = {"friendly_name": name, "friendlyName": name}
    await _hook_loop(s, svc, hook, None, extra, "waitHook", started.done)


async def _hook_loop(
    s: CallSession, svc: ConferenceService, hook: Any, conf: Conference | None,
    extra: dict[str, Any] | None, what: str, stop: Callable[[], bool],
) -> None:
    """Fetch `hook` and play its play/say/pause verbs, ~0.75 s of silence between rounds,
    until `stop()` is true or the session is interrupted (the waitHook loop of spec 3.1,
    also used while a member is on hold)."""
    while not stop() and not s.interrupted:
        if not await _play_hook(s, svc, hook, conf, what, extra):
            log.warning("call_sid=%s: %s loop stopped; the caller waits in silence",
                        s.call_sid, what)
            return
        if stop():
            return
        await s.call.play(SilenceSource(WAIT_ROUND_GAP_S))
