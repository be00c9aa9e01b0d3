"""Verb list normalisation and validation against the jambonz schemas."""

from __future__ import annotations

from typing import Any

import pytest

from confroom.app.verbs import (
    MEDIA_ONLY,
    SUPPORTED,
    VerbError,
    known_verbs,
    normalize,
    parse_verb_list,
    validate,
)


def test_both_spellings_are_equal() -> None:
    a = normalize([{"verb": "say", "text": "hi"}, {"verb": "hangup"}])
    b = normalize([{"say": {"text": "hi"}}, {"hangup": {}}])
    assert a == b == [{"verb": "say", "text": "hi"}, {"verb": "hangup"}]


def test_normalize_does_not_mutate_input() -> None:
    data: list[Any] = [{"say": {"text": "hi"}}]
    normalize(data)
    assert data == [{"say": {"text": "hi"}}]


@pytest.mark.parametrize(
    ("data", "fragment", "index"),
    [
        ({"verb": "say"}, "must be a JSON array", None),
        ("hello", "must be a JSON array", None),
        ([{"verb": "say", "text": "a"}, "hangup"], "verb #2: expected a JSON object", 1),
        ([{"verb": 3}], "'verb' must be a string", 0),
        ([{"say": "hi"}], "verb #1: expected", 0),
        ([{"say": {}, "play": {}}], "verb #1: expected", 0),
        ([{}], "verb #1: expected", 0),
    ],
)
def test_normalize_rejects(data: Any, fragment: str, index: int | None) -> None:
    with pytest.raises(VerbError) as ei:
        normalize(data)
    assert fragment in str(ei.value)
    assert ei.value.index == index


def test_supported_and_known() -> None:
    assert known_verbs() >= SUPPORTED
    assert {"gather", "dial", "sip:decline", "rest:dial"} <= known_verbs()


@pytest.mark.parametrize(
    ("verbs", "message", "index", "verb", "attribute"),
    [
        (
            [{"verb": "say", "text": "x"}, {"verb": "play"}],
            "verb #2 'play': attribute 'url' is required",
            1,
            "play",
            "url",
        ),
        (
            [{"say": {"text": "hi", "loop": True}}],
            "verb #1 'say': attribute 'loop' has wrong type (expected number or string)",
            0,
            "say",
            "loop",
        ),
        (
            [{"verb": "answer"}, {"verb": "pause", "length": 1}, {"verb": "transcribe"}],
            "verb #3 'transcribe' is not supported by confroom",
            2,
            "transcribe",
            None,
        ),
        (
            [{"verb": "pause", "lenght": 2}],
            "verb #1 'pause': unknown attribute 'lenght'",
            0,
            "pause",
            "lenght",
        ),
        (
            [{"verb": "dance"}],
            "verb #1 'dance': unknown verb",
            0,
            "dance",
            None,
        ),
        (
            [{"verb": "pause", "length": "2"}],
            "verb #1 'pause': attribute 'length' has wrong type (expected number)",
            0,
            "pause",
            "length",
        ),
        (
            [{"verb": "redirect"}],
            "verb #1 'redirect': attribute 'actionHook' is required",
            0,
            "redirect",
            "actionHook",
        ),
        (
            [{"verb": "play", "url": "x.wav", "actionHook": 5}],
            "verb #1 'play': attribute 'actionHook' has wrong type (expected string or object)",
            0,
            "play",
            "actionHook",
        ),
        (
            [{"verb": "play", "url": "x.wav", "actionHook": {"method": "GET"}}],
            "verb #1 'play': attribute 'actionHook.url' is required",
            0,
            "play",
            "actionHook.url",
        ),
        (
            [{"verb": "redirect", "actionHook": {"url": "/x", "method": "PUT"}}],
            "verb #1 'redirect': attribute 'actionHook.method' must be one of",
            0,
            "redirect",
            "actionHook.method",
        ),
        (
            [{"verb": "say", "text": "x", "synthesizer": {"voice": "en"}}],
            "verb #1 'say': attribute 'synthesizer.vendor' is required",
            0,
            "say",
            "synthesizer.vendor",
        ),
        (
            [{"verb": "play", "url": ["a.wav", 3]}],
            "verb #1 'play': attribute 'url[1]' has wrong type (expected string)",
            0,
            "play",
            "url[1]",
        ),
        (
            [{"verb": "sip:decline"}],
            "verb #1 'sip:decline': attribute 'status' is required",
            0,
            "sip:decline",
            "status",
        ),
        (
            [{"verb": "sip:decline", "status": 200}],
            "verb #1 'sip:decline': attribute 'status' must be a SIP final status 400-699",
            0,
            "sip:decline",
            "status",
        ),
        (
            [{"verb": "hangup", "headers": {"X-A": ["b"]}}],
            "verb #1 'hangup': attribute 'headers.X-A' has wrong type (expected string or number)",
            0,
            "hangup",
            "headers.X-A",
        ),
        (
            [{"verb": "conference"}],
            "verb #1 'conference': attribute 'name' is required",
            0,
            "conference",
            "name",
        ),
        (
            [{"verb": "conference", "name": "a", "record": {}}],
            "verb #1 'conference': attribute 'record.path' is required",
            0,
            "conference",
            "record.path",
        ),
        (
            [{"verb": "conference", "name": "a", "maxParticipants": "5"}],
            "verb #1 'conference': attribute 'maxParticipants' has wrong type (expected number)",
            0,
            "conference",
            "maxParticipants",
        ),
        (
            [{"verb": "conference", "name": "a", "statusEvents": "join"}],
            "verb #1 'conference': attribute 'statusEvents' has wrong type (expected array)",
            0,
            "conference",
            "statusEvents",
        ),
        (
            [{"verb": "conference", "name": "a", "beeep": True}],
            "verb #1 'conference': unknown attribute 'beeep'",
            0,
            "conference",
            "beeep",
        ),
    ],
)
def test_validation_errors(
    verbs: list[dict[str, Any]],
    message: str,
    index: int,
    verb: str,
    attribute: str | None,
) -> None:
    with pytest.raises(VerbError) as ei:
        parse_verb_list(verbs)
    assert str(ei.value).startswith(message)
    assert (ei.value.index, ei.value.verb, ei.value.attribute) == (index, verb, attribute)
    assert isinstance(ei.value, ValueError)


def test_valid_list_of_supported_verbs() -> None:
    verbs = [
        {"answer": {}},
        {"verb": "say", "text": ["Hello", "world"], "loop": 2, "id": "s1"},
        {
            "verb": "say",
            "text": "hi",
            "synthesizer": {"vendor": "google", "language": "en-US", "voice": "x"},
            "earlyMedia": False,
            "disableTtsCache": True,
        },
        {"verb": "play", "url": "https://example.com/a.wav", "loop": "forever"},
        {
            "verb": "play",
            "url": ["file:///media/a.wav", "b.wav"],
            "timeoutSecs": 5,
            "seekOffset": 1.5,
            "earlyMedia": True,
            "actionHook": {"url": "/played", "method": "GET", "username": "u", "password": "p"},
        },
        {"pause": {"length": 1.5}},
        {"verb": "redirect", "actionHook": "/next"},
        {"verb": "sip:decline", "status": 486, "reason": "Busy Here", "headers": {"X-A": "b"}},
        {"verb": "hangup", "headers": {"X-Reason": "done", "X-N": 3}},
    ]
    out = parse_verb_list(verbs)
    assert [v["verb"] for v in out] == [
        "answer",
        "say",
        "say",
        "play",
        "play",
        "pause",
        "redirect",
        "sip:decline",
        "hangup",
    ]


def test_full_conference_verb_validates() -> None:
    conf = {
        "verb": "conference",
        "id": "c1",
        "name": "team",
        "beep": True,
        "startConferenceOnEnter": False,
        "endConferenceOnExit": True,
        "maxParticipants": 10,
        "waitHook": "/confWait",
        "enterHook": {"url": "https://example.com/enter", "method": "GET"},
        "actionHook": {"url": "/confDone", "method": "POST", "username": "u", "password": "p"},
        "statusHook": "https://example.com/status",
        "statusEvents": ["start", "end", "join", "leave", "start-talking", "end-talking"],
        "joinMuted": False,
        "memberTag": "agent",
        "speakOnlyTo": "customer",
        "distributeDtmf": True,
        "endConferenceDuration": 30,
        "record": {"path": "/tmp/rec.wav"},
    }
    assert parse_verb_list([conf]) == [conf]
    assert parse_verb_list([{"conference": {k: v for k, v in conf.items() if k != "verb"}}]) == [
        conf
    ]


def test_allowed_restricts_verbs() -> None:
    ok = [{"verb": "play", "url": "a.wav"}, {"say": {"text": "x"}}, {"pause": {"length": 1}}]
    assert len(parse_verb_list(ok, allowed=MEDIA_ONLY)) == 3
    with pytest.raises(VerbError) as ei:
        parse_verb_list([{"say": {"text": "x"}}, {"verb": "hangup"}], allowed=MEDIA_ONLY)
    assert "verb #2 'hangup' is not allowed here" in str(ei.value)
    assert (ei.value.index, ei.value.verb) == (1, "hangup")
    # Unknown verbs are still reported as such, even in a restricted list.
    with pytest.raises(VerbError, match="unknown verb"):
        parse_verb_list([{"verb": "nope"}], allowed=MEDIA_ONLY)


def test_validate_accepts_already_normalised() -> None:
    verbs = [{"verb": "hangup"}]
    assert validate(verbs) is verbs


def test_empty_list_is_valid() -> None:
    assert parse_verb_list([]) == []
