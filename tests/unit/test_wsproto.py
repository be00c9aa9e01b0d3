"""The sans-IO jambonz WebSocket protocol (confroom.app.wsproto) and the WS command ->
call-update mapping (confroom.callupdate.command_update)."""

from __future__ import annotations

import itertools
import json

import pytest

from confroom.app.wsproto import Ack, Command, Refused, WsProtocol, backoff
from confroom.callupdate import ControlError, command_update


def proto(**kw: object) -> WsProtocol:
    ids = (f"m{i}" for i in itertools.count(1))
    return WsProtocol("sid-1", new_id=lambda: next(ids), **kw)  # type: ignore[arg-type]


def frames(p: WsProtocol, now: float = 0.0) -> list[dict[str, object]]:
    return [json.loads(f) for f in p.take_frames(now)]


def test_envelope_queue_until_open_and_ack_deadline() -> None:
    p = proto(ack_timeout=5.0)
    new = p.message("session:new", {"call_sid": "sid-1"})
    p.message("call:status", {"call_status": "ringing"})
    assert p.take_frames(0.0) == []  # not connected yet: queued
    p.connected()
    out = frames(p, 10.0)
    assert out == [
        {"type": "session:new", "msgid": "m1", "call_sid": "sid-1",
         "data": {"call_sid": "sid-1"}},
        {"type": "call:status", "msgid": "m2", "call_sid": "sid-1",
         "data": {"call_status": "ringing"}},
    ]
    assert p.pending == 1 and p.next_deadline() == 15.0  # only session:new waits
    hook = p.message("verb:hook", {"event": "join"}, hook="/status")
    assert frames(p, 11.0)[0]["hook"] == "/status"
    ev = p.feed_text(json.dumps({"type": "ack", "msgid": "m1", "data": [{"verb": "say"}]}))
    assert isinstance(ev, Ack) and ev.message is new and ev.verbs == [{"verb": "say"}]
    assert p.feed_text('{"type":"ack","msgid":"m1"}') is None  # already answered: dropped
    assert p.expire(15.9) == []
    gone = p.expire(16.0)
    assert [e.message for e in gone] == [hook] and p.pending == 0


def test_commands_and_refusals() -> None:
    p = proto(max_payload=1024)
    ev = p.feed_text(json.dumps({"type": "command", "command": "conf:mute-status",
                                 "queueCommand": True, "callSid": "other",
                                 "data": {"conf_mute_status": "mute"}}))
    assert ev == Command("conf:mute-status", {"conf_mute_status": "mute"}, "other", True)
    assert p.feed_text('{"type":"command","command":"tts:flush"}') == Command("tts:flush", None)
    bad = {
        "{nope": "invalid JSON",
        "[1]": "must be a JSON object",
        '{"type":"hello"}': "unknown message type 'hello'",
        '{"type":"command","data":{}}': "without a 'command' name",
        '{"type":"command","command":"redirect"}': "without 'data'",
        '{"type":"ack","msgid":7}': "string 'msgid'",
        '{"type":"command","command":"x","data":1,"callSid":3}': "'callSid' must be",
        json.dumps({"type": "command", "command": "x", "data": "é" * 600}): "over the 1024",
    }
    for text, why in bad.items():
        ev = p.feed_text(text)
        assert isinstance(ev, Refused) and why in ev.details, (text, ev)
    assert "binary" in p.feed_binary(10).details


def test_reconnect_sends_session_reconnect_first_and_holds_the_rest() -> None:
    p = proto(max_reconnects=2)
    p.message("session:new", {"x": 1})
    p.connected()
    p.take_frames(0.0)
    p.feed_text('{"type":"ack","msgid":"m1","data":[]}')
    hook = p.message("verb:hook", {"event": "join"}, hook="/s")
    p.take_frames(1.0)  # written, not acked: must not be lost by the drop
    assert p.dropped() == backoff(1) == 0.5
    p.message("call:status", {"call_status": "in-progress"})  # produced while down
    assert p.take_frames(2.0) == []
    p.connected()
    out = frames(p, 3.0)
    assert [m["type"] for m in out] == ["session:reconnect"]
    assert out[0]["data"] == {"x": 1}
    assert frames(p, 3.1) == []  # held until the reconnect is acked
    p.feed_text(json.dumps({"type": "ack", "msgid": out[0]["msgid"]}))
    after = frames(p, 3.2)
    assert [(m["type"], m["msgid"]) for m in after] == [("verb:hook", hook.msgid),
                                                        ("call:status", "m3")]
    assert p.reconnects == 1
    # bounded: two failures more and it gives up
    assert p.dropped() == 0.5 and p.connect_failed() == 1.0 and p.connect_failed() is None
    assert p.state == "closed"


def test_backoff_schedule() -> None:
    assert [backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 6.0, 8.0]


def test_queued_redirect_appends() -> None:
    assert command_update("redirect", [{"verb": "pause", "length": 1}], queue=True).kind == \
        "append"


@pytest.mark.parametrize(("name", "data", "kind", "action"), [
    ("conf:mute-status", {"conf_mute_status": "mute"}, "conference", "conf_mute"),
    ("conf:hold-status", {"conf_hold_status": "hold", "wait_hook": "/moh"}, "conference",
     "hold"),
    ("conf:participant-action", {"action": "coach", "tag": "a"}, "conference", "coach"),
    ("conf:participant-action", {"action": "kick"}, "conference", "kick"),
    ("mute:status", "mute", "conference", "mute"),
    ("call:status", {"call_status": "completed"}, "hangup", None),
    ("dtmf", {"digit": "12#", "duration": 250}, "dtmf", None),
    ("redirect", [{"verb": "conference", "name": "b"}], "redirect", None),
    ("redirect", {"call_hook": "/next"}, "call_hook", None),
    ("sip:request", {"method": "info", "content_type": "text/plain", "content": "hi",
                     "headers": {"X-Reason": "test"}}, "sip_request", None),
])
def test_command_update(name: str, data: object, kind: str, action: str | None) -> None:
    upd = command_update(name, data)
    assert upd.kind == kind
    if action is not None:
        assert upd.control is not None and upd.control.action == action
    if name == "conf:hold-status":
        assert upd.control is not None and upd.control.wait_hook == "/moh"
    if name == "sip:request":
        assert upd.method == "INFO" and upd.body == b"hi"
        assert upd.headers == (("X-Reason", "test"), ("Content-Type", "text/plain"))


@pytest.mark.parametrize(("name", "data", "why"), [
    ("conf:mute-status", {"conf_mute_status": "loud"}, "must be 'mute' or 'unmute'"),
    ("conf:participant-action", {"action": "dance"}, "action must be one of"),
    ("conf:participant-action", {"action": "tag"}, "tag (a non-empty string) is required"),
    ("redirect", [{"verb": "nosuchverb"}], "invalid verbs"),
    ("redirect", 5, "array of verbs"),
    ("call:status", {"call_status": "busy"}, "call_status must be"),
    ("dtmf", {"digit": "x"}, "dtmf.digit"),
    ("whisper", {}, "unknown or unsupported command 'whisper'"),
    ("sip:request", {"method": "REFER"}, "method must be one of INFO, NOTIFY, MESSAGE"),
    ("sip:request", {"method": "INFO", "content": "x"}, "content_type is required"),
    ("sip:request", {"method": "INFO", "headers": {"X-A": "1\r\nBYE: x"}}, "one line"),
    ("sip:request", {"method": "INFO", "headers": {"X A": "1"}}, "must be tokens"),
])
def test_invalid_commands(name: str, data: object, why: str) -> None:
    with pytest.raises(ControlError, match=None) as e:
        command_update(name, data)
    assert why in str(e.value)
