"""Hook bodies validate against the jambonz callback schemas."""

from __future__ import annotations

import pytest

from confroom.app.control import CallInfo
from confroom.app.payload import call_fields, session_new_body
from confroom.app.verbs import CALLBACK_BASE, validator_for


def make_info(**kw: object) -> CallInfo:
    info = CallInfo(
        call_sid="5c3a4e2a-1111-4222-8333-444455556666",
        call_id="abc123@10.0.0.1",
        from_user="alice",
        to_user="1000",
        caller_name="Alice",
        originating_sip_ip="10.0.0.1",
        originating_sip_port=5062,
        local_sip_address="127.0.0.1:5060",
        account_sid="acct",
        application_sid="app",
        sip={
            "headers": {
                "From": "<sip:alice@10.0.0.1>;tag=1",
                "To": "<sip:1000@127.0.0.1>",
                "Call-ID": "abc123@10.0.0.1",
                "Via": ["SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1", "SIP/2.0/UDP x;branch=z2"],
                "X-Custom": "yes",
            },
            "body": "v=0\r\n",
            "uri": "sip:1000@127.0.0.1",
        },
    )
    for k, v in kw.items():
        setattr(info, k, v)
    return info


EXPECTED_KEYS = {
    "call_sid",
    "direction",
    "from",
    "to",
    "call_id",
    "sip_status",
    "sip_reason",
    "call_status",
    "account_sid",
    "application_sid",
    "caller_name",
    "originating_sip_ip",
    "originating_sip_port",
    "local_sip_address",
}


def test_call_fields_values() -> None:
    f = call_fields(make_info(call_status="in-progress", sip_status=200, sip_reason="OK"))
    assert set(f) == EXPECTED_KEYS
    assert f["from"] == "alice" and f["to"] == "1000"
    assert f["direction"] == "inbound"
    assert f["call_status"] == "in-progress"
    assert f["sip_status"] == 200 and f["sip_reason"] == "OK"
    assert f["call_id"] == "abc123@10.0.0.1"
    assert f["originating_sip_port"] == 5062


@pytest.mark.parametrize(
    "status",
    ["trying", "ringing", "early-media", "in-progress", "completed", "failed", "busy", "no-answer"],
)
def test_call_fields_validate_call_status_schema(status: str) -> None:
    v = validator_for(CALLBACK_BASE + "call-status")
    body = call_fields(make_info(call_status=status))
    assert list(v.iter_errors(body)) == []
    base = validator_for(CALLBACK_BASE + "base")
    assert list(base.iter_errors(body)) == []


def test_bad_status_would_fail_schema() -> None:
    # Sanity check that the validator is really applied.
    v = validator_for(CALLBACK_BASE + "call-status")
    assert list(v.iter_errors(call_fields(make_info(call_status="ringing-ish"))))


def test_session_new_body_validates() -> None:
    body = session_new_body(make_info())
    v = validator_for(CALLBACK_BASE + "session-new")
    assert list(v.iter_errors(body)) == []
    assert set(body) >= EXPECTED_KEYS
    sip = body["sip"]
    assert sip["headers"]["X-Custom"] == "yes"
    assert sip["headers"]["Via"].count("SIP/2.0/UDP") == 2
    assert sip["body"] == "v=0\r\n"
    assert sip["method"] == "INVITE"
    assert sip["uri"] == "sip:1000@127.0.0.1"
    assert sip["source_address"] == "10.0.0.1" and sip["source_port"] == 5062
    assert body["caller_id"] == "alice"


def test_session_new_body_with_empty_sip() -> None:
    body = session_new_body(make_info(sip={}))
    assert body["sip"]["headers"] == {} and body["sip"]["body"] == ""
    assert list(validator_for(CALLBACK_BASE + "session-new").iter_errors(body)) == []
