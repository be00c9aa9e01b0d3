"""Hook bodies: the snake_case call fields of spec section 2 and the first call-hook body.

Owns the field names and types so that every body validates against the jambonz callback
schemas (callbacks/base, session-new, call-status).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confroom.app.control import CallInfo


def call_fields(info: CallInfo) -> dict[str, Any]:
    """The call fields every hook body carries."""
    return {
        "call_sid": info.call_sid,
        "direction": info.direction,
        "from": info.from_user,
        "to": info.to_user,
        "call_id": info.call_id,
        "sip_status": int(info.sip_status),
        "sip_reason": info.sip_reason,
        "call_status": info.call_status,
        "account_sid": info.account_sid,
        "application_sid": info.application_sid,
        "caller_name": info.caller_name,
        "originating_sip_ip": info.originating_sip_ip,
        "originating_sip_port": int(info.originating_sip_port),
        "local_sip_address": info.local_sip_address,
    }


def _header_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def sip_fields(info: CallInfo) -> dict[str, Any]:
    """The INVITE as the `sip` object of session-new: headers (string values; repeated
    headers joined with commas) and body, plus the request facts jambonz also reports."""
    raw: Mapping[str, Any] = info.sip
    headers = raw.get("headers") or {}
    out: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("headers", "body")}
    out["headers"] = {str(k): _header_value(v) for k, v in dict(headers).items()}
    out["body"] = str(raw.get("body") or "")
    out.setdefault("method", "INVITE")
    out.setdefault("type", "request")
    out.setdefault("source", "network")
    out.setdefault("source_address", info.originating_sip_ip)
    out.setdefault("source_port", int(info.originating_sip_port))
    out.setdefault("callingNumber", info.from_user)
    out.setdefault("calledNumber", info.to_user)
    return out


def session_new_body(info: CallInfo) -> dict[str, Any]:
    """The body of the first call-hook request (jambonz session:new)."""
    body = call_fields(info)
    body["caller_id"] = info.from_user
    body["sip"] = sip_fields(info)
    if info.customer_data is not None:
        body["customerData"] = dict(info.customer_data)
    if info.parent_call_sid is not None:
        body["parent_call_sid"] = info.parent_call_sid
    return body
