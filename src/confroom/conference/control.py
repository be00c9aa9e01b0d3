"""Live control of conference members: what a jambonz call-update body asks for, and doing it.

Owns `parse_call_update` (sans-IO: a decoded JSON body -> one `ControlRequest`, or
`ControlError` whose message names the field at fault), `apply` (carries a request out on a
member through the `ConferenceService`: mute, hold, tag, coach, kick, and the conference-wide
mute of every non-moderator), the member state setters that report `mute` / `unmute` /
`hold` / `unhold` status events, `conference_detail` (the JSON view of one conference), and
the dashboard's view of every live conference (`live_conferences` of one node, `merge_live` of
the views of every node of a cluster).

A *moderator* is a member that joined with `endConferenceOnExit: true` or with
`startConferenceOnEnter` explicitly `true`; `conf_mute_status` leaves moderators alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confroom.app.session import to_hook
from confroom.conference.model import Conference, Member
from confroom.conference.service import ConferenceService

log = logging.getLogger("confroom.conference")

PARTICIPANT_ACTIONS = ("tag", "untag", "coach", "uncoach", "mute", "unmute", "hold", "unhold",
                       "kick")
CONTROL_KEYS = ("conf_mute_status", "conf_hold_status", "mute_status",
                "conferenceParticipantAction")
# Call-update keys jambonz knows that confroom does not implement (a clear 400, not a shrug).
UNSUPPORTED_JAMBONZ_KEYS = frozenset({
    "child_call_hook", "listen_status", "transcribe_status",
    "whisper", "record", "tag", "agent_update", "noiseIsolation_status",
    "conferenceParticipantAction_status", "dub",
})


class ControlError(ValueError):
    """The request body is not a valid control request; the message says what is wrong."""


@dataclass(frozen=True)
class ControlRequest:
    """One thing to do to a conference member.

    `action` is one of PARTICIPANT_ACTIONS, or `conf_mute` / `conf_unmute` (every
    non-moderator member of the conference). `tag` for tag/coach, `wait_hook` for hold."""

    action: str
    tag: str | None = None
    wait_hook: Any = None


def _on_off(body: Mapping[str, Any], key: str, on: str, off: str) -> bool:
    value = body[key]
    if value not in (on, off):
        raise ControlError(f"{key} must be {on!r} or {off!r}, got {value!r}")
    return bool(value == on)


def _wait_hook(body: Mapping[str, Any]) -> Any:
    hook = body.get("waitHook")
    if hook is None:
        return None
    try:
        to_hook(hook)
    except ValueError as e:
        raise ControlError(f"waitHook: {e}") from None
    return hook


def parse_call_update(body: object) -> ControlRequest:
    """The control request in a `PUT /v1/Accounts/{a}/Calls/{c}` body (see module docstring)."""
    if not isinstance(body, Mapping):
        raise ControlError("the request body must be a JSON object")
    for key in body:
        if key in UNSUPPORTED_JAMBONZ_KEYS:
            raise ControlError(
                f"{key!r} is not supported by confroom; supported: {', '.join(CONTROL_KEYS)}, "
                "call_status, call_hook, dtmf, sip_request"
            )
        if key not in CONTROL_KEYS and key != "waitHook":
            raise ControlError(
                f"unknown attribute {key!r}; expected one of {', '.join(CONTROL_KEYS)}"
            )
    given = [k for k in CONTROL_KEYS if k in body]
    if not given:
        raise ControlError(f"the body needs one of {', '.join(CONTROL_KEYS)}")
    if len(given) > 1:
        raise ControlError(f"give only one of {', '.join(given)} per request")
    key = given[0]
    if "waitHook" in body and key not in ("conf_hold_status", "conferenceParticipantAction"):
        raise ControlError("waitHook is only allowed with conf_hold_status or a hold action")
    if key == "conf_mute_status":
        mute = _on_off(body, key, "mute", "unmute")
        return ControlRequest("conf_mute" if mute else "conf_unmute")
    if key == "mute_status":
        return ControlRequest("mute" if _on_off(body, key, "mute", "unmute") else "unmute")
    if key == "conf_hold_status":
        if _on_off(body, key, "hold", "unhold"):
            return ControlRequest("hold", wait_hook=_wait_hook(body))
        return ControlRequest("unhold")
    return _participant_action(body)


def _participant_action(body: Mapping[str, Any]) -> ControlRequest:
    spec = body["conferenceParticipantAction"]
    where = "conferenceParticipantAction"
    if not isinstance(spec, Mapping):
        raise ControlError(f"{where} must be an object with 'action' (and 'tag')")
    extra = set(spec) - {"action", "tag", "waitHook"}
    if extra:
        raise ControlError(f"{where}: unknown attribute(s) {', '.join(sorted(extra))}")
    action = spec.get("action")
    if action not in PARTICIPANT_ACTIONS:
        raise ControlError(
            f"{where}.action must be one of {', '.join(PARTICIPANT_ACTIONS)}, got {action!r}"
        )
    tag = spec.get("tag")
    if action in ("tag", "coach"):
        if not isinstance(tag, str) or not tag:
            raise ControlError(f"{where}.tag (a non-empty string) is required for {action!r}")
    elif tag is not None:
        raise ControlError(f"{where}.tag is only allowed with 'tag' and 'coach'")
    hook = None
    if "waitHook" in spec or "waitHook" in body:
        if action != "hold":
            raise ControlError("waitHook is only allowed with the 'hold' action")
        hook = _wait_hook(spec if "waitHook" in spec else body)
    return ControlRequest(str(action), tag=tag, wait_hook=hook)


# ---- doing it ----------------------------------------------------------------------------


def set_muted(svc: ConferenceService, conf: Conference, member: Member, muted: bool) -> bool:
    """Mute/unmute a member (hears, is not heard); `mute`/`unmute` event. True if changed."""
    if member.muted == muted:
        return False
    member.muted = muted
    svc.flags_changed(conf)
    log.info("conference %s name=%s call_sid=%s", "mute" if muted else "unmute", conf.name,
             member.call_sid)
    svc.emit(conf, "mute" if muted else "unmute", member)
    return True


def set_hold(svc: ConferenceService, conf: Conference, member: Member, held: bool,
             wait_hook: Any = None) -> bool:
    """Hold (neither hears nor is heard; its waitHook loop plays to it) or unhold a member;
    `hold`/`unhold` event. True if changed."""
    if member.on_hold == held:
        return False
    member.on_hold = held
    member.hold_hook = wait_hook if held else None
    svc.flags_changed(conf)
    log.info("conference %s name=%s call_sid=%s", "hold" if held else "unhold", conf.name,
             member.call_sid)
    svc.emit(conf, "hold" if held else "unhold", member)
    if member.on_change is not None:
        member.on_change()
    return True


def apply(svc: ConferenceService, conf: Conference, member: Member,
          req: ControlRequest) -> dict[str, Any]:
    """Carry out `req` for `member` of `conf`; returns a short JSON-able summary."""
    action = req.action
    affected = [member.call_sid]
    if action in ("conf_mute", "conf_unmute"):
        targets = [m for m in conf.members.values() if not m.moderator]
        for m in targets:
            set_muted(svc, conf, m, action == "conf_mute")
        affected = [m.call_sid for m in targets]
    elif action in ("mute", "unmute"):
        set_muted(svc, conf, member, action == "mute")
    elif action in ("hold", "unhold"):
        set_hold(svc, conf, member, action == "hold", req.wait_hook)
    elif action in ("tag", "untag"):
        member.tag = req.tag if action == "tag" else None
        svc.flags_changed(conf)
        log.info("conference %s name=%s call_sid=%s tag=%s", action, conf.name,
                 member.call_sid, member.tag)
    elif action in ("coach", "uncoach"):
        member.speak_only_to = req.tag if action == "coach" else None
        svc.flags_changed(conf)
        log.info("conference %s name=%s call_sid=%s speak_only_to=%s", action, conf.name,
                 member.call_sid, member.speak_only_to)
    elif action == "kick":
        log.info("conference kick name=%s call_sid=%s", conf.name, member.call_sid)
        svc.leave(conf, member, "kicked")
    else:  # parse_call_update never produces anything else
        raise ControlError(f"unknown action {action!r}")
    return {"action": action, "friendly_name": conf.name, "conference_sid": conf.sid,
            "call_sids": affected}


# ---- views -------------------------------------------------------------------------------


def iso(ts: float) -> str:
    """A wall-clock time as ISO 8601 UTC with milliseconds (`2020-04-27T13:44:17.336Z`)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def participant_view(m: Member) -> dict[str, Any]:
    return {
        "call_sid": m.call_sid,
        "from": m.info.from_user,
        "tag": m.tag,
        "speak_only_to": m.speak_only_to,
        "moderator": m.moderator,
        "muted": m.muted,
        "on_hold": m.on_hold,
        "talking": m.talking,
        "joined_at": iso(m.joined_at) if m.mixed else None,
    }


def conference_detail(conf: Conference, now: float) -> dict[str, Any]:
    """The JSON view of one conference for `GET .../Conferences/{name}`."""
    return {
        "conference_sid": conf.sid,
        "friendly_name": conf.name,
        "start_time": iso(conf.started_at),
        "duration": conf.duration(now),
        "members": len(conf.members),
        "participants": [participant_view(m) for m in conf.members.values()],
    }


def live_conferences(confs: Iterable[Conference], node: str, now: float,
                     ) -> list[dict[str, Any]]:
    """The dashboard's view of this node's live conferences: `conference_detail` with the
    account and, on every participant, the node it is on."""
    out = []
    for conf in confs:
        if conf.ended:
            continue
        detail = conference_detail(conf, now)
        detail["account_sid"] = conf.account_sid
        for p in detail["participants"]:
            p["node"] = node
        out.append(detail)
    out.sort(key=lambda c: (str(c["friendly_name"]), str(c["account_sid"])))
    return out


def merge_live(views: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One conference per (account, name, sid) out of the `live_conferences` of several nodes:
    participants of every node, ordered by joining time, the earliest start and longest
    duration."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for view in views:
        for conf in view:
            key = (str(conf.get("account_sid")), str(conf.get("friendly_name")),
                   str(conf.get("conference_sid")))
            have = merged.get(key)
            if have is None:
                merged[key] = {**conf, "participants": list(conf.get("participants") or ())}
                continue
            have["participants"].extend(conf.get("participants") or ())
            have["start_time"] = min(str(have.get("start_time")), str(conf.get("start_time")))
            have["duration"] = max(int(have.get("duration") or 0),
                                   int(conf.get("duration") or 0))
    out = []
    for conf in merged.values():
        conf["participants"].sort(key=lambda p: (p.get("joined_at") or "~", str(p["call_sid"])))
        conf["members"] = len(conf["participants"])
        out.append(conf)
    out.sort(key=lambda c: (str(c["friendly_name"]), str(c["account_sid"])))
    return out
