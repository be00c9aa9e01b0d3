"""Live control (parse + apply), recording (path rules, incremental WAV, the listener mix),
DTMF distribution and beep-on-exit, driven directly on a ConferenceService (no network)."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from confroom.app.control import CallInfo
from confroom.app.hooks import HookResult
from confroom.conference.audio import ConferenceAudio, MixBus
from confroom.conference.control import (
    ControlError,
    ControlRequest,
    apply,
    conference_detail,
    parse_call_update,
)
from confroom.conference.model import Member
from confroom.conference.recorder import (
    BATCH_FRAMES,
    MixRecorder,
    RecordPathError,
    resolve_record_path,
)
from confroom.conference.service import ConferenceService
from confroom.config import AppConfig, Hook
from confroom.media.engine import MediaEngine
from confroom.media.session import MediaSession
from confroom.media.sources import FRAME_SAMPLES

APP = AppConfig(call_hook=Hook("http://127.0.0.1:9/call"), account_sid="acct")


class Hooks:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def call(self, hook: Hook, body: Mapping[str, Any], *, base_url: str | None,
                   secret: str | None) -> HookResult:
        self.sent.append(dict(body))
        return HookResult(ok=True, status=200, verbs=[], error=None, url=hook.url)

    def events(self) -> list[tuple[str, str]]:
        return [(b["event"], b.get("call_sid", "")) for b in self.sent]


def mk_member(sid: str, **kw: Any) -> Member:
    info = CallInfo(call_sid=sid, call_id=f"{sid}@t", from_user=f"u-{sid}", to_user="1000",
                    caller_name="", originating_sip_ip="127.0.0.1", originating_sip_port=5070,
                    local_sip_address="127.0.0.1:5060", account_sid="acct",
                    application_sid="app")
    media = MediaSession(local_port=0)
    return Member(call_sid=sid, info=info, media=media, app=APP, **kw)


def mk_service(media_dir: Path | None = None) -> tuple[ConferenceService, Hooks, MediaEngine]:
    engine = MediaEngine("127.0.0.1", 41000, 41010, 0)
    hooks = Hooks()

    def spawn(coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    svc = ConferenceService(engine, hooks, spawn, media_dir=media_dir)  # type: ignore[arg-type]
    return svc, hooks, engine


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


EVENTS = ["mute", "unmute", "hold", "unhold", "leave"]

# ---- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"conf_mute_status": "mute"}, ControlRequest("conf_mute")),
        ({"conf_mute_status": "unmute"}, ControlRequest("conf_unmute")),
        ({"mute_status": "mute"}, ControlRequest("mute")),
        ({"conf_hold_status": "hold", "waitHook": "/moh"}, ControlRequest("hold", None, "/moh")),
        ({"conf_hold_status": "unhold"}, ControlRequest("unhold")),
        ({"conferenceParticipantAction": {"action": "coach", "tag": "agent"}},
         ControlRequest("coach", "agent")),
        ({"conferenceParticipantAction": {"action": "kick"}}, ControlRequest("kick")),
        ({"conferenceParticipantAction": {"action": "hold", "waitHook": {"url": "/w"}}},
         ControlRequest("hold", None, {"url": "/w"})),
    ],
)
def test_parse_valid_bodies(body: dict[str, Any], expected: ControlRequest) -> None:
    assert parse_call_update(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({}, "needs one of"),
        ({"conf_mute_status": "loud"}, "conf_mute_status must be 'mute' or 'unmute'"),
        ({"mute_status": "mute", "conf_mute_status": "mute"}, "only one of"),
        ({"bogus": 1}, "unknown attribute 'bogus'"),
        ({"whisper": {"verb": "say"}}, "'whisper' is not supported"),
        ({"conf_hold_status": "hold", "waitHook": 5}, "waitHook"),
        ({"mute_status": "mute", "waitHook": "/x"}, "waitHook is only allowed"),
        ({"conferenceParticipantAction": "kick"}, "must be an object"),
        ({"conferenceParticipantAction": {"action": "dance"}}, "action must be one of"),
        ({"conferenceParticipantAction": {"action": "tag"}}, "tag (a non-empty string) is "
                                                             "required for 'tag'"),
        ({"conferenceParticipantAction": {"action": "mute", "tag": "x"}}, "tag is only allowed"),
        ({"conferenceParticipantAction": {"action": "kick", "x": 1}}, "unknown attribute(s) x"),
    ],
)
def test_parse_rejects_with_a_message_naming_the_problem(body: Any, message: str) -> None:
    with pytest.raises(ControlError) as e:
        parse_call_update(body)
    assert message in str(e.value)


# ---- applying -----------------------------------------------------------------------------


async def test_mute_hold_tag_coach_and_status_events() -> None:
    svc, hooks, _ = mk_service()
    a, b = mk_member("a"), mk_member("b")
    verb = {"name": "room", "statusHook": "/s", "statusEvents": EVENTS}
    conf = svc.start(a, verb)
    svc.admit(conf, b)
    svc.mix_in(conf, a, beep=False)
    svc.mix_in(conf, b, beep=False)
    assert svc.find_member("b") == (conf, b) and svc.find_member("zz") is None

    changes: list[bool] = []
    b.on_change = lambda: changes.append(b.on_hold)
    apply(svc, conf, b, ControlRequest("mute"))
    apply(svc, conf, b, ControlRequest("mute"))  # no change: no second event
    apply(svc, conf, b, ControlRequest("unmute"))
    apply(svc, conf, b, ControlRequest("hold", wait_hook="/moh"))
    assert b.on_hold and b.hold_hook == "/moh" and changes == [True]
    apply(svc, conf, b, ControlRequest("unhold"))
    assert not b.on_hold and b.hold_hook is None and changes == [True, False]
    apply(svc, conf, b, ControlRequest("tag", "agent"))
    apply(svc, conf, a, ControlRequest("coach", "agent"))
    assert b.tag == "agent" and a.speak_only_to == "agent"
    apply(svc, conf, a, ControlRequest("uncoach"))
    apply(svc, conf, b, ControlRequest("untag"))
    assert b.tag is None and a.speak_only_to is None
    await settle()
    assert hooks.events() == [("mute", "b"), ("unmute", "b"), ("hold", "b"), ("unhold", "b")]


async def test_conf_mute_spares_moderators() -> None:
    svc, _, _ = mk_service()
    mod, x, y = mk_member("mod", moderator=True), mk_member("x"), mk_member("y")
    conf = svc.start(mod, {"name": "room"})
    for m in (x, y):
        svc.admit(conf, m)
    summary = apply(svc, conf, x, ControlRequest("conf_mute"))
    assert sorted(summary["call_sids"]) == ["x", "y"]
    assert (mod.muted, x.muted, y.muted) == (False, True, True)
    apply(svc, conf, mod, ControlRequest("conf_unmute"))
    assert not (x.muted or y.muted)


async def test_kick_leaves_with_reason_kicked_and_others_stay() -> None:
    svc, _, _ = mk_service()
    a, b = mk_member("a"), mk_member("b")
    conf = svc.start(a, {"name": "room"})
    svc.admit(conf, b)
    reasons: list[str] = []
    b.on_leave = reasons.append
    apply(svc, conf, b, ControlRequest("kick"))
    assert reasons == ["kicked"] and b.leave_reason == "kicked"
    assert not conf.ended and list(conf.members) == ["a"]


async def test_conference_detail_view() -> None:
    svc, _, _ = mk_service()
    a, b = mk_member("a", tag="t"), mk_member("b")
    conf = svc.start(a, {"name": "room"})
    svc.mix_in(conf, a, beep=False)
    svc.admit(conf, b)  # admitted, not yet mixed (enterHook playing)
    d = conference_detail(conf, conf.started_at + 3.4)
    assert d["friendly_name"] == "room" and d["duration"] == 3 and d["members"] == 2
    assert d["start_time"].endswith("Z")
    pa, pb = d["participants"]
    assert pa["call_sid"] == "a" and pa["from"] == "u-a" and pa["tag"] == "t"
    assert pa["joined_at"] is not None and pb["joined_at"] is None


# ---- DTMF distribution and beep on exit ------------------------------------------------


async def test_distribute_dtmf_to_members_that_hear_the_sender() -> None:
    svc, _, _ = mk_service()
    a, b, c, held = (mk_member(x) for x in ("a", "b", "c", "held"))
    for m in (a, b, c, held):
        m.media.update("PCMU", 0, 101, "127.0.0.1", 40002)
    c.media.dtmf_payload_type = None  # c did not negotiate telephone-event
    conf = svc.start(a, {"name": "room"})
    for m in (a, b, c, held):
        if m is not a:
            svc.admit(conf, m)
        svc.mix_in(conf, m, beep=False)
    held.on_hold = True
    svc.distribute_dtmf(conf, a, "4")
    assert b.media.dtmf_tx is not None
    assert a.media.dtmf_tx is None and c.media.dtmf_tx is None and held.media.dtmf_tx is None
    b.media.dtmf_tx = None
    a.muted = True
    svc.distribute_dtmf(conf, a, "4")  # a muted member is not heard: nothing passed on
    assert b.media.dtmf_tx is None


async def test_beep_on_exit_for_members_that_joined_with_beep() -> None:
    svc, _, _ = mk_service()
    a, b, c = mk_member("a"), mk_member("b", beep=True), mk_member("c")
    conf = svc.start(a, {"name": "room"})
    for m in (a, b, c):
        if m is not a:
            svc.admit(conf, m)
        svc.mix_in(conf, m, beep=False)
    audio = svc._audio[conf.sid]
    assert not audio.beeping
    svc.leave(conf, c, "hangup")
    assert not audio.beeping
    svc.leave(conf, b, "hangup")
    assert audio.beeping


# ---- recording ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x.wav", "a/../../x.wav", "/etc/x.wav", "", "."])
def test_record_path_must_stay_inside_the_media_dir(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RecordPathError):
        resolve_record_path(tmp_path / "media", bad)


def test_record_path_relative_or_absolute_inside(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    assert resolve_record_path(media, "rec/a.wav") == (media / "rec/a.wav").resolve()
    inside = str(media.resolve() / "b.wav")
    assert resolve_record_path(media, inside) == Path(inside)


def test_recorder_writes_in_batches_and_fills_skipped_ticks(tmp_path: Path) -> None:
    writes: list[int] = []

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def writeframes(self, data: bytes) -> None:
            writes.append(len(data))
            self.inner.writeframes(data)

        def close(self) -> None:
            self.inner.close()

    path = tmp_path / "r.wav"
    rec = MixRecorder.open(path)
    rec._writer = Spy(rec._writer)
    frame = np.full(FRAME_SAMPLES, 1000, dtype=np.int16)
    for i in range(60):
        rec.write(frame, 10.0 + i * 0.02)
    rec.write(frame, 10.0 + 79 * 0.02)  # the clock skipped 19 ticks: filled with silence
    rec.close()
    assert writes == [BATCH_FRAMES * FRAME_SAMPLES * 2] * 3 + [5 * FRAME_SAMPLES * 2]
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert len(pcm) == 80 * FRAME_SAMPLES
    assert np.all(pcm[: 60 * FRAME_SAMPLES] == 1000)
    assert np.all(pcm[60 * FRAME_SAMPLES : 79 * FRAME_SAMPLES] == 0)
    assert np.all(pcm[79 * FRAME_SAMPLES :] == 1000)


def test_audio_records_what_an_untagged_silent_listener_hears(tmp_path: Path) -> None:
    audio = ConferenceAudio(lambda m, t: None)
    bus = MixBus()
    bus.attach(audio)
    path = tmp_path / "mix.wav"
    audio.recorder = MixRecorder.open(path)
    a, b, muted, coach = (mk_member(x) for x in ("a", "b", "m", "coach"))
    muted.muted = True
    coach.speak_only_to = "agent"
    levels = {a: 1000, b: 2000, muted: 4000, coach: 8000}
    bus.mix(0.0)  # nobody mixed yet: silence is recorded
    for m in levels:
        audio.add(m)
    for i in range(1, 10):
        for m, v in levels.items():
            m.media.inbound = np.full(FRAME_SAMPLES, v, dtype=np.int16)
        bus.mix(i * 0.02)
    rec = audio.stop_recording()
    assert rec is not None and rec.closed and audio.recorder is None
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert len(pcm) == 10 * FRAME_SAMPLES
    assert np.all(pcm[:FRAME_SAMPLES] == 0)
    assert np.all(pcm[FRAME_SAMPLES:] == 3000)  # a + b; not the muted one, not the coach


async def test_service_records_from_start_to_end_and_refuses_escapes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    media = tmp_path / "media"
    svc, _, engine = mk_service(media)
    a = mk_member("a")
    conf = svc.start(a, {"name": "room", "record": {"path": "recs/room.wav"}})
    svc.mix_in(conf, a, beep=False)
    for i in range(30):
        engine.tick(i * 0.02)
    svc.end(conf, "test")
    with wave.open(str(media / "recs/room.wav")) as w:
        assert w.getnframes() == 30 * FRAME_SAMPLES
    b = mk_member("b")
    conf2 = svc.start(b, {"name": "other", "record": {"path": "../escape.wav"}})
    assert "recording refused" in caplog.text and "outside the media directory" in caplog.text
    assert not (tmp_path / "escape.wav").exists()
    assert not conf2.ended  # the conference goes on without recording


def test_merge_live_joins_each_conference_across_nodes() -> None:
    """The cluster dashboard: one conference per (account, name, sid) with the participants
    of every node (each naming its node), ordered by joining; distinct conferences stay
    apart."""
    from confroom.conference.control import merge_live

    def conf(name: str, sid: str, start: str, *parts: tuple[str, str, str]) -> dict[str, Any]:
        return {"account_sid": "acct", "friendly_name": name, "conference_sid": sid,
                "start_time": start, "duration": 5, "members": len(parts),
                "participants": [{"call_sid": c, "node": n, "joined_at": j}
                                 for c, n, j in parts]}

    node0 = [conf("room", "S1", "2026-12-01T10:00:02Z", ("b", "node0", "2026-12-01T10:00:03Z")),
             conf("solo", "S2", "2026-12-01T10:00:00Z", ("s", "node0", None))]
    node1 = [conf("room", "S1", "2026-12-01T10:00:01Z", ("a", "node1", "2026-12-01T10:00:01Z"))]
    merged = merge_live([node0, node1, []])
    assert [c["friendly_name"] for c in merged] == ["room", "solo"]
    room = merged[0]
    assert room["members"] == 2 and room["start_time"] == "2026-12-01T10:00:01Z"
    assert [(p["call_sid"], p["node"]) for p in room["participants"]] == [("a", "node1"),
                                                                           ("b", "node0")]
    assert merged[1]["participants"] == [{"call_sid": "s", "node": "node0", "joined_at": None}]
    # the inputs are not changed
    assert len(node0[0]["participants"]) == 1


async def test_cluster_feed_falls_back_to_this_node_while_redis_is_unreachable() -> None:
    """The dashboard feed in a cluster: the cluster's merged view; while the cluster's Redis
    is unreachable (`SharedStateError`), this node's own conferences."""
    from types import SimpleNamespace
    from typing import cast

    from confroom.conference.shared import SharedStateError
    from confroom.web import HasConferences, cluster_snapshot

    class Shared:
        node_id = "node7"
        down = False

        async def live_conferences(self) -> list[dict[str, Any]]:
            if self.down:
                raise SharedStateError("the cluster's Redis is unreachable")
            return [{"friendly_name": "everywhere"}]

    engine = MediaEngine("127.0.0.1", 43000, 43010, 0)
    svc = ConferenceService(engine, Hooks(), lambda c: asyncio.get_running_loop().create_task(c))
    svc.start(mk_member("a"), {"name": "here"})
    shared = Shared()
    server = cast(HasConferences, SimpleNamespace(
        conferences=SimpleNamespace(shared=shared, registry=svc.registry)))
    assert await cluster_snapshot(server, "node7") == [{"friendly_name": "everywhere"}]
    shared.down = True
    local = await cluster_snapshot(server, "node7")
    assert [c["friendly_name"] for c in local] == ["here"]
    assert [p["node"] for p in local[0]["participants"]] == ["node7"]
