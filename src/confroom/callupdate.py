"""Live call control, one way for both doors: the REST call update (`PUT .../Calls/{sid}`) and
the commands of a WebSocket app (`redirect`, `call:status`, `mute:status`, `conf:*`, `dtmf`).

Owns `parse_update` (sans-IO: a REST body -> `CallUpdate`, or `ControlError` naming the field),
`command_update` (a WS command's name and data -> the same `CallUpdate`, through the REST body
it corresponds to wherever jambonz has one), and `apply_update`, which carries one out on a live
call: conference member control through `confroom.conference.control.apply`, hang-up, redirect
to verbs or to a new call hook, and RFC 4733 digits. `UpdateError` carries the HTTP status a
REST caller gets when the call cannot take the update now (422: not in a conference).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from confroom.app.control import CallInfo
from confroom.app.session import to_hook
from confroom.app.verbs import VerbError, parse_verb_list
from confroom.conference.control import (
    CONTROL_KEYS,
    ControlError,
    ControlRequest,
    apply,
    parse_call_update,
)
from confroom.conference.service import ConferenceService
from confroom.media.session import MediaSession

if TYPE_CHECKING:
    from confroom.app.session import CallSession

log = logging.getLogger("confroom.control")

CALL_KEYS = ("call_status", "call_hook", "dtmf", "sip_request")
SIP_METHODS = ("INFO", "NOTIFY", "MESSAGE")
DTMF_SYMBOLS = frozenset("0123456789*#ABCDabcd")
# WS command -> the REST body key it stands for
_CONF_COMMANDS = {
    "conf:mute-status": "conf_mute_status",
    "conf:hold-status": "conf_hold_status",
    "mute:status": "mute_status",
}


class UpdateError(Exception):
    """The call cannot take this update now; `status` for the REST API."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CallUpdate:
    """One thing to do to a call: `conference` (with `control`), `hangup`, `redirect` or
    `append` (with `verbs`), `call_hook` (with `hook`), `dtmf` (with `digits`) or
    `sip_request` (with `method`, `headers`, `body`)."""

    kind: str
    control: ControlRequest | None = None
    verbs: list[dict[str, Any]] | None = None
    hook: Any = None
    digits: str = ""
    method: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


class LiveCall(Protocol):
    """What an update needs of a call (`confroom.call.Call` fits)."""

    @property
    def info(self) -> CallInfo: ...
    @property
    def media(self) -> MediaSession: ...
    @property
    def ended(self) -> bool: ...
    @property
    def session(self) -> CallSession | None: ...
    async def hangup(self, headers: Mapping[str, str] | None = None) -> None: ...
    def send_request(self, method: str, headers: Mapping[str, str], body: bytes) -> bool: ...


def parse_update(body: object) -> CallUpdate:
    """The update in a REST call-update body: one of the conference keys (see
    `parse_call_update`), `call_status`, `call_hook` or `dtmf`."""
    if not isinstance(body, Mapping):
        raise ControlError("the request body must be a JSON object")
    given = [k for k in CALL_KEYS if k in body]
    if not given:
        return CallUpdate("conference", control=parse_call_update(body))
    if len(body) > 1:
        others = ", ".join(sorted(str(k) for k in body if k != given[0]))
        raise ControlError(f"{given[0]!r} cannot be combined with {others}")
    key = given[0]
    value = body[key]
    if key == "call_status":
        if value not in ("completed", "no-answer"):
            raise ControlError(f"call_status must be 'completed' or 'no-answer', got {value!r}")
        return CallUpdate("hangup")
    if key == "call_hook":
        try:
            to_hook(value)
        except ValueError as e:
            raise ControlError(f"call_hook: {e}") from None
        return CallUpdate("call_hook", hook=value)
    if key == "sip_request":
        return _sip_request(value)
    return CallUpdate("dtmf", digits=_digits(value))


def _sip_request(value: Any) -> CallUpdate:
    if not isinstance(value, Mapping):
        raise ControlError("sip_request must be an object with 'method' (and content_type, "
                           "content, headers)")
    method = str(value.get("method", "")).upper()
    if method not in SIP_METHODS:
        raise ControlError(f"sip_request.method must be one of {', '.join(SIP_METHODS)}, "
                           f"got {value.get('method')!r}")
    headers = value.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int) for k, v in headers.items()):
        raise ControlError("sip_request.headers must be an object of header: string")
    hdrs = [(k, str(v)) for k, v in headers.items()
            if k.lower() not in ("content-type", "content-length")]
    if any("\r" in v or "\n" in v for _, v in hdrs) or any(
            not k or not k.replace("-", "").isalnum() for k, _ in hdrs):
        raise ControlError("sip_request.headers: names must be tokens, values one line")
    content = value.get("content")
    if content is not None and not isinstance(content, str):
        raise ControlError("sip_request.content must be a string")
    body = (content or "").encode()
    ctype = value.get("content_type")
    if body and not isinstance(ctype, str):
        raise ControlError("sip_request.content_type is required with content")
    if body:
        hdrs.append(("Content-Type", str(ctype)))
    return CallUpdate("sip_request", method=method, headers=tuple(hdrs), body=body)


def _digits(value: Any) -> str:
    digit = value.get("digit") if isinstance(value, Mapping) else value
    if not isinstance(digit, str) or not digit or not set(digit) <= DTMF_SYMBOLS:
        raise ControlError(f"dtmf.digit must be DTMF symbols (0-9 * # A-D), got {digit!r}")
    return digit


def command_update(name: str, data: Any, queue: bool = False) -> CallUpdate:
    """The update a WebSocket app's command asks for (ControlError when it is unknown or its
    data is invalid); `queue` (the command's `queueCommand`): a verb-list redirect runs after
    the current list instead of replacing it."""
    if name in _CONF_COMMANDS:
        key = _CONF_COMMANDS[name]
        if isinstance(data, str):
            data = {key: data}
        if not isinstance(data, Mapping):
            raise ControlError(f"data must be an object with {key!r}")
        body = dict(data)
        hook = body.pop("wait_hook", None)
        if hook is not None:
            body.setdefault("waitHook", hook)
        return parse_update(body)
    if name == "conf:participant-action":
        if not isinstance(data, Mapping):
            raise ControlError("data must be an object with 'action' (and 'tag')")
        spec = dict(data)
        hook = spec.pop("wait_hook", None)
        if hook is not None:
            spec.setdefault("waitHook", hook)
        return parse_update({"conferenceParticipantAction": spec})
    if name == "call:status":
        if isinstance(data, str):
            data = {"call_status": data}
        return parse_update(data)
    if name == "dtmf":
        return parse_update({"dtmf": data})
    if name == "sip:request":
        return parse_update({"sip_request": data})
    if name == "redirect":
        if isinstance(data, list):
            try:
                return CallUpdate("append" if queue else "redirect",
                                  verbs=parse_verb_list(data))
            except VerbError as e:
                raise ControlError(f"invalid verbs: {e}") from None
        if isinstance(data, Mapping) and "call_hook" in data:
            return parse_update({"call_hook": data["call_hook"]})
        raise ControlError("data must be an array of verbs or an object with 'call_hook'")
    supported = ", ".join([*_CONF_COMMANDS, "conf:participant-action", "call:status", "dtmf",
                           "redirect", "sip:request"])
    raise ControlError(f"unknown or unsupported command {name!r}; supported: {supported}")


async def apply_update(svc: ConferenceService, call: LiveCall, upd: CallUpdate
                       ) -> dict[str, Any]:
    """Carry out `upd` on `call`; a short JSON-able summary. UpdateError when the call
    cannot take it now (not in a conference, no verb runner, no telephone-event)."""
    sid = call.info.call_sid
    if call.ended:
        raise UpdateError(404, f"call {sid} has ended")
    if upd.kind == "conference":
        assert upd.control is not None
        found = svc.find_member(sid)
        if found is None:
            raise UpdateError(422, f"call {sid} is not in a conference")
        conf, member = found
        return apply(svc, conf, member, upd.control)
    if upd.kind == "hangup":
        log.info("call_sid=%s: hung up by live control", sid)
        await call.hangup()
        return {"action": "hangup", "call_sids": [sid]}
    if upd.kind == "dtmf":
        if not all(call.media.send_dtmf(d) for d in upd.digits):
            raise UpdateError(422, f"call {sid} cannot carry RFC 4733 digits (no "
                                   "telephone-event negotiated)")
        return {"action": "dtmf", "digits": upd.digits, "call_sids": [sid]}
    if upd.kind == "sip_request":
        if not call.send_request(upd.method, dict(upd.headers), upd.body):
            raise UpdateError(422, f"call {sid} cannot carry a {upd.method} now (not answered "
                                   "and confirmed)")
        log.info("call_sid=%s: %s sent by live control", sid, upd.method)
        return {"action": "sip_request", "method": upd.method, "call_sids": [sid]}
    session = call.session
    if session is None:
        raise UpdateError(422, f"call {sid} has no running application")
    if upd.kind == "redirect":
        assert upd.verbs is not None
        log.info("call_sid=%s: redirected to %d verb(s) by live control", sid, len(upd.verbs))
        session.replace_verbs(upd.verbs)
        return {"action": "redirect", "call_sids": [sid]}
    if upd.kind == "append":
        assert upd.verbs is not None
        log.info("call_sid=%s: %d verb(s) queued by live control", sid, len(upd.verbs))
        session.append_verbs(upd.verbs)
        return {"action": "append", "call_sids": [sid]}
    assert upd.kind == "call_hook"
    session.redirect_to_hook(upd.hook)
    return {"action": "call_hook", "call_sids": [sid]}


__all__ = ["CONTROL_KEYS", "CallUpdate", "ControlError", "UpdateError", "apply_update",
           "command_update", "parse_update"]
