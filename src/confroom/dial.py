"""The `dial` verb: call one or more targets, bridge the caller to the first that answers.

The flow for one caller (jambonz's `dial`):

1. Unless `answerOnBridge`, the caller is answered now. Each target is routed and counted by
   the outbound policy (`OutboundCalls.check`): a `phone` number through the trunk whose
   prefix matches, a `sip` URI only to an allowed domain or a trunk; a refused target is
   logged and skipped.
2. Every target is INVITEd at once
   (`callerId`/`callerName` as From, `headers` plus the target's own), each ringing at most
   `timeout` seconds. The first to answer wins; the others are CANCELled (a 200 that crossed
   the CANCEL is hung up).
3. With `answerOnBridge` the caller is answered only now. The two calls' audio is bridged on
   the media clock (`confroom.media.bridge`) and digits are passed both ways, until
   either side hangs up or `timeLimit` seconds pass; then the other side is hung up too.
   A digit that arrives as RFC 4733 or as SIP INFO (`Call.on_info_dtmf`) is sent to the other
   leg as RFC 4733; a leg that negotiated no telephone-event does not get it (logged).
4. If the caller is still there, the `actionHook` gets the call fields plus
   `dial_call_status` (completed, busy, no-answer, failed), `dial_sip_status`,
   `dial_call_duration` (seconds bridged) and `dial_call_sid`; the verbs it returns replace
   the rest of the caller's verb list. Without an actionHook the list goes on.

A target's `confirmHook` runs on its leg once it answers, before the bridge: the hook gets
that leg's session-new body (`direction: outbound`, `parent_call_sid`) and its verbs play to
the dialled party while the caller waits; if they hang the leg up (or the hook fails), the
dial ends with `dial_call_status: failed` (480).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from confroom.app.payload import session_new_body
from confroom.app.session import CallSession, SessionAbort
from confroom.app.verbs_impl import VerbImpl, VerbResult, seconds
from confroom.call import Call
from confroom.config import AppConfig
from confroom.media.bridge import Bridges
from confroom.media.session import MediaSession
from confroom.outbound import LimitExceeded, Refused, Route
from confroom.outcall import (
    _USER_RE,
    DEFAULT_RING_TIMEOUT,
    Attempt,
    CreateCallError,
    Failure,
    OutboundCalls,
    check_headers,
)

log = logging.getLogger("confroom.dial")

__all__ = ["dial_verb"]

# when several targets fail, the status reported (jambonz reports the "best" outcome)
_RANK = {"busy": 0, "no-answer": 1, "failed": 2}


def dial_verb(outbound: OutboundCalls, bridges: Bridges) -> VerbImpl:
    """The `dial` implementation for a verb table."""
    return partial(run_dial, outbound, bridges)


def _target(t: Mapping[str, Any]) -> dict[str, Any]:
    return {k: t.get(k) for k in ("type", "number", "sipUri", "trunk", "auth")}


async def run_dial(outbound: OutboundCalls, bridges: Bridges, s: CallSession,
                   verb: dict[str, Any]) -> VerbResult:
    call = s.call
    info = call.info
    timeout = seconds(verb.get("timeout")) or DEFAULT_RING_TIMEOUT
    time_limit = seconds(verb.get("timeLimit"))
    caller_id = str(verb.get("callerId") or info.from_user)
    if not _USER_RE.match(caller_id):
        log.warning("call_sid=%s: dial callerId %r is not a number or SIP user; using %r",
                    s.call_sid, caller_id, info.from_user)
        caller_id = info.from_user if _USER_RE.match(info.from_user) else "anonymous"
    caller_name = str(verb.get("callerName") or "")
    if any(not ch.isprintable() or ch in '"\\' for ch in caller_name) or len(caller_name) > 64:
        caller_name = ""
    try:
        common = check_headers(verb.get("headers"), "dial headers")
    except CreateCallError as e:
        log.warning("call_sid=%s: dial refused: %s", s.call_sid, e)
        return await _action(s, verb, "failed", 400, 0, None)

    if not verb.get("answerOnBridge") and not call.answered:
        await call.answer()  # jambonz answers the caller as dial begins

    # 1. route and count every target
    legs: list[tuple[Route, tuple[tuple[str, str], ...], Any]] = []
    refusal: tuple[str, int] | None = None
    for t in verb["target"]:
        try:
            own = check_headers(t.get("headers"), "dial target headers")
            rt = outbound.check(info.account_sid, _target(t))
        except Refused as e:
            log.info("call_sid=%s: dial target refused: %s", s.call_sid, e)
            refusal = refusal or ("failed", 403)
            continue
        except LimitExceeded as e:
            log.info("call_sid=%s: dial target refused: %s", s.call_sid, e)
            refusal = ("failed", 503)
            continue
        except CreateCallError as e:
            log.info("call_sid=%s: dial target refused: %s", s.call_sid, e)
            refusal = refusal or ("failed", 400)
            continue
        legs.append((rt, common + own, t.get("confirmHook")))
    if not legs:
        status, sip_status = refusal or ("failed", 403)
        return await _action(s, verb, status, sip_status, 0, None)

    # 2. ring them all
    app = AppConfig(name=f"{call.app.name}/dial", call_hook=call.app.call_hook,
                    verbs_file=call.app.verbs_file, webhook_secret=call.app.webhook_secret,
                    account_sid=info.account_sid, application_sid=info.application_sid)
    attempts: list[Attempt] = []
    tasks: list[asyncio.Task[Call | Failure]] = []
    confirm_hooks: dict[str, Any] = {}  # call_sid of a dialled leg -> its confirmHook
    for rt, headers, confirm_hook in legs:
        leg_info = outbound.new_info(info.account_sid, app, rt, caller_id, caller_name)
        leg_info.parent_call_sid = info.call_sid
        if confirm_hook:
            confirm_hooks[leg_info.call_sid] = confirm_hook
        log.info("dial call_sid=%s -> call_sid=%s to=%s via=%s", s.call_sid,
                 leg_info.call_sid, rt.uri, rt.trunk or rt.host)
        tasks.append(asyncio.ensure_future(outbound.place(
            leg_info, app, rt, headers=headers, timeout=timeout, on_attempt=attempts.append)))
    winner, failures = await _first_answer(s, tasks, attempts)
    if winner is None:
        if call.ended:
            return []
        best = min(failures, key=lambda f: _RANK.get(f.status, 3), default=None)
        if best is None:
            return await _action(s, verb, "failed", 500, 0, None)
        return await _action(s, verb, best.status, best.sip_status, 0, None)

    hook = confirm_hooks.get(winner.info.call_sid)
    if hook and not await _confirm(s, outbound, winner, hook):
        if not winner.ended:
            await winner.hangup()
        if call.ended:
            return []
        return await _action(s, verb, "failed", 480, 0, winner.info.call_sid)

    # 3. bridge
    if not call.answered:
        await call.answer()
    if not _up(call):
        await winner.hangup()
        return []
    duration = await _bridge(s, bridges, winner, time_limit)
    if call.ended:
        return []
    return await _action(s, verb, "completed", 200, duration, winner.info.call_sid)


async def _first_answer(
    s: CallSession, tasks: list[asyncio.Task[Call | Failure]], attempts: list[Attempt],
) -> tuple[Call | None, list[Failure]]:
    """Wait for the first target to answer; cancel the others (also when the caller goes)."""
    winner: Call | None = None
    failures: list[Failure] = []
    pending: set[asyncio.Task[Call | Failure]] = set(tasks)
    try:
        while pending and winner is None and not s.interrupted:
            got = await s.guarded(asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED))
            if got is None:
                break
            done, pending = got
            for t in done:
                result = t.result()
                if isinstance(result, Call) and winner is None:
                    winner = result
                elif isinstance(result, Call):
                    await result.hangup()
                else:
                    failures.append(result)
    finally:
        for a in attempts:
            if not a.outcome.done():
                a.cancel()
        if pending:
            # the cancelled ones end within the CANCEL grace; a 200 that crossed is hung up
            await asyncio.wait(pending)
            for t in pending:
                result = t.result()
                if isinstance(result, Call):
                    await result.hangup()
                else:
                    failures.append(result)
    if winner is not None and s.interrupted:
        await winner.hangup()
        winner = None
    return winner, failures


async def _confirm(s: CallSession, outbound: OutboundCalls, other: Call, hook: Any) -> bool:
    """Run the confirmHook's verbs on the answered leg `other` (the caller waits); True when
    the leg is still up afterwards (a hangup or failure there means: not accepted)."""
    srv = outbound.server
    verbs = await s.call_hook(hook, session_new_body(other.info), what="dial confirmHook")
    if verbs is None or other.ended or s.interrupted:
        return False
    log.info("dial confirmHook call_sid=%s: %d verb(s) on the dialled leg", other.info.call_sid,
             len(verbs))
    session = CallSession(other, srv.hooks, srv.config, verbs=srv.verbs)
    other.session_kill = session.kill
    try:
        await s.guarded(session._execute(verbs))
    except SessionAbort:
        return False
    finally:
        other.session_kill = None
    return not other.ended and not s.interrupted


async def _bridge(s: CallSession, bridges: Bridges, other: Call, time_limit: float | None
                  ) -> int:
    """Bridge the caller and `other` until one hangs up or `time_limit`; the seconds bridged."""
    call = s.call
    a, b = call.media, other.media
    handle = bridges.add(a, b)
    a.dtmf_tap = partial(_pass_dtmf, b)
    b.dtmf_tap = partial(_pass_dtmf, a)
    started = time.monotonic()
    log.info("dial bridge call_sid=%s <-> call_sid=%s", s.call_sid, other.info.call_sid)
    ends: set[asyncio.Future[bool]] = {asyncio.ensure_future(call.wait_ended()),
                                        asyncio.ensure_future(other.wait_ended())}
    try:
        await s.guarded(asyncio.wait(ends, timeout=time_limit,
                                     return_when=asyncio.FIRST_COMPLETED))
    finally:
        for f in ends:
            f.cancel()
        bridges.remove(handle)
        a.dtmf_tap = None
        b.dtmf_tap = None
    duration = round(time.monotonic() - started)
    if not other.ended:
        if time_limit is not None and not call.ended:
            log.info("call_sid=%s: dial timeLimit %gs reached", s.call_sid, time_limit)
        await other.hangup()
    log.info("dial end call_sid=%s other=%s duration=%d", s.call_sid, other.info.call_sid,
             duration)
    return duration


def _up(call: Any) -> bool:
    """The call is answered and not over (read afresh: awaits may have changed it)."""
    return bool(call.answered and not call.ended)


def _pass_dtmf(to: MediaSession, digit: str) -> None:
    if not to.send_dtmf(digit):
        log.info("dial dtmf digit=%s not passed: the other leg negotiated no telephone-event",
                 digit)


async def _action(s: CallSession, verb: dict[str, Any], status: str, sip_status: int,
                  duration: int, dial_call_sid: str | None) -> VerbResult:
    log.info("dial result call_sid=%s dial_call_status=%s dial_sip_status=%d duration=%d",
             s.call_sid, status, sip_status, duration)
    if s.call.ended or not verb.get("actionHook"):
        return None
    extra: dict[str, Any] = {"dial_call_status": status, "dial_sip_status": sip_status,
                             "dial_call_duration": duration}
    if dial_call_sid is not None:
        extra["dial_call_sid"] = dial_call_sid
    verbs = await s.call_hook(verb["actionHook"], s.fields(**extra), what="dial actionHook")
    return verbs or None
