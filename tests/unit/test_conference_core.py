"""Conference registry, service and audio routing, driven directly (no network, no SIP)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from confroom.app.control import CallInfo
from confroom.app.hooks import HookResult
from confroom.conference.audio import ConferenceAudio, MixBus
from confroom.conference.model import Conference, ConferenceRegistry, Member
from confroom.conference.service import ConferenceService, iso_now
from confroom.config import AppConfig, Hook
from confroom.media.engine import MediaEngine
from confroom.media.frames import FrameTable
from confroom.media.session import MediaSession

APP = AppConfig(call_hook=Hook("http://127.0.0.1:9/call"), account_sid="acct")


class RecordingHooks:
    """Stands in for the webhook client at the service boundary: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def call(self, hook: Hook, body: Mapping[str, Any], *, base_url: str | None,
                   secret: str | None) -> HookResult:
        self.sent.append((hook.url, dict(body)))
        return HookResult(ok=True, status=200, verbs=[], error=None, url=hook.url)

    def events(self) -> list[tuple[str, int, str]]:
        return [(b["event"], b["members"], b.get("call_sid", "")) for _, b in self.sent]


def member(sid: str, **kw: Any) -> Member:
    info = CallInfo(call_sid=sid, call_id=f"{sid}@t", from_user=sid, to_user="1000",
                    caller_name="", originating_sip_ip="127.0.0.1", originating_sip_port=5070,
                    local_sip_address="127.0.0.1:5060", account_sid="acct",
                    application_sid="app")
    return Member(call_sid=sid, info=info, media=MediaSession(local_port=0), app=APP, **kw)


def make_service() -> tuple[ConferenceService, RecordingHooks, MediaEngine]:
    engine = MediaEngine("127.0.0.1", 41000, 41010, 0)
    hooks = RecordingHooks()

    def spawn(coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    return ConferenceService(engine, hooks, spawn), hooks, engine  # type: ignore[arg-type]


VERB = {"name": "room", "statusHook": "/status",
        "statusEvents": ["start", "end", "join", "leave", "end-talking", "start-talking"]}


async def settle() -> None:
    """Let queued hook deliveries run (they are tasks on this loop)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_registry_create_is_exclusive_and_notifies_waiters() -> None:
    reg = ConferenceRegistry()
    seen: list[str] = []
    cancel_b = reg.on_start("acct", "room", lambda c: seen.append("b"))
    reg.on_start("acct", "room", lambda c: seen.append("a"))
    cancel_b()
    conf = reg.create(Conference(account_sid="acct", name="room", started_at=0.0))
    assert seen == ["a"]
    with pytest.raises(RuntimeError):
        reg.create(Conference(account_sid="acct", name="room", started_at=0.0))
    # same name in another account is another conference
    reg.create(Conference(account_sid="other", name="room", started_at=0.0))
    assert reg.names("acct") == ["room"] and len(reg.all()) == 2
    reg.remove(conf)
    assert reg.get("acct", "room") is None


async def test_lifecycle_events_in_order_with_counts() -> None:
    svc, hooks, engine = make_service()
    a, b = member("A"), member("B")
    conf = svc.start(a, VERB)
    assert svc.registry.get("acct", "room") is conf and engine.mixers == [svc.bus]
    assert len(svc.bus.conferences) == 1
    svc.mix_in(conf, a, beep=False)
    svc.admit(conf, b)
    svc.mix_in(conf, b, beep=True)
    svc.leave(conf, a, "hangup")
    assert not conf.ended
    svc.leave(conf, b, "hangup")
    await settle()
    assert conf.ended and svc.registry.get("acct", "room") is None
    assert svc.bus.conferences == []
    assert hooks.events() == [
        ("start", 1, "A"), ("join", 1, "A"), ("join", 2, "B"),
        ("leave", 1, "A"), ("leave", 0, "B"), ("end", 0, "B"),  # end: fields of the last one
    ]
    body = hooks.sent[2][1]
    assert body["conference_sid"] == body["conferenceSid"] == conf.sid
    assert body["friendly_name"] == body["friendlyName"] == "room"
    assert isinstance(body["duration"], int) and body["duration"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["time"])
    assert hooks.sent[0][0] == "/status"


async def test_end_on_exit_ends_for_everyone_and_reports_once() -> None:
    svc, hooks, _ = make_service()
    mod = member("M", end_conference_on_exit=True)
    p1, p2 = member("P1"), member("P2")
    reasons: dict[str, str] = {}
    for m in (mod, p1, p2):
        m.on_leave = lambda r, sid=m.call_sid: reasons.__setitem__(sid, r)
    conf = svc.start(mod, VERB)
    for m in (mod, p1, p2):
        svc.admit(conf, m)
        svc.mix_in(conf, m, beep=False)
    svc.leave(conf, mod, "hangup")
    await settle()
    assert conf.ended
    assert reasons == {"M": "hangup", "P1": "ended", "P2": "ended"}
    assert [e for e, _, _ in hooks.events()].count("end") == 1


async def test_end_conference_duration_delays_the_end() -> None:
    svc, _, _ = make_service()
    mod = member("M", end_conference_on_exit=True, end_conference_duration=0.05)
    other = member("P")
    ended = asyncio.Event()
    other.on_leave = lambda r: ended.set()
    conf = svc.start(mod, VERB)
    svc.mix_in(conf, mod, beep=False)
    svc.admit(conf, other)
    svc.mix_in(conf, other, beep=False)
    svc.leave(conf, mod, "hangup")
    assert not conf.ended and conf.end_pending
    await asyncio.wait_for(ended.wait(), 2.0)
    assert conf.ended and other.leave_reason == "ended"


async def test_status_events_filter_and_talking_alias() -> None:
    svc, hooks, _ = make_service()
    verb = {"name": "room", "statusHook": "/s", "statusEvents": ["end-talking"]}
    a = member("A")
    conf = svc.start(a, verb)
    svc.emit(conf, "start-talking", a)
    svc.emit(conf, "stop-talking", a)
    svc.emit(conf, "join", a)
    await settle()
    assert [b["event"] for _, b in hooks.sent] == ["end-talking"]


def test_is_full_uses_joiner_limit_then_conference_limit() -> None:
    conf = Conference(account_sid="a", name="r", started_at=0, max_participants=3)
    conf.members = {"1": member("1"), "2": member("2")}
    assert conf.is_full(2) and not conf.is_full(None)
    conf.members["3"] = member("3")
    assert conf.is_full(None)


def test_iso_now_format() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso_now())


def tone(freq: float, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(160) / 8000.0
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def power_at(frame: np.ndarray, freq: float) -> float:
    spec = np.abs(np.fft.rfft(frame.astype(np.float64))) ** 2
    k = round(freq * 160 / 8000)
    return float(spec[k] / max(spec.sum(), 1e-9))


@pytest.mark.parametrize("shared", [True, False], ids=["one-frame-table", "own-tables"])
def test_audio_routing_mute_hold_and_coach(shared: bool) -> None:
    """Both ways the bus reaches frames: one gather from the table all sessions share (an
    engine's), or member by member when each session has a table of its own."""
    audio = ConferenceAudio(lambda m, t: None)
    bus = MixBus()
    bus.attach(audio)
    a, b, c = member("A"), member("B"), member("C", tag="agent")
    coach = member("K", speak_only_to="agent")
    if shared:
        table = FrameTable()
        for m in (a, b, c, coach):
            m.media.adopt_frames(table)
    freqs = {"A": 400.0, "B": 1000.0, "C": 2000.0, "K": 3000.0}
    for m in (a, b, c, coach):
        audio.add(m)

    def tick() -> dict[str, np.ndarray | None]:
        for m in (a, b, c, coach):
            m.media.inbound = tone(freqs[m.call_sid])
            m.media.mix_out = None
        bus.mix(0.0)
        return {m.call_sid: m.media.mix_out for m in (a, b, c, coach)}

    out = tick()
    hears = {sid: {f for s, f in freqs.items() if frame is not None and power_at(frame, f) > 0.05}
             for sid, frame in out.items()}
    assert hears["A"] == {1000.0, 2000.0}  # not the coach, not itself
    assert hears["B"] == {400.0, 2000.0}
    assert hears["C"] == {400.0, 1000.0, 3000.0}  # the agent hears the coach
    assert hears["K"] == {400.0, 1000.0, 2000.0}

    b.muted = True
    c.on_hold = True
    audio.flags_changed()
    out = tick()
    assert out["C"] is None  # on hold: hears nothing from the conference
    a_out = out["A"]
    assert a_out is not None
    assert power_at(a_out, 1000.0) < 0.01 and power_at(a_out, 2000.0) < 0.01

    audio.remove(b)
    assert b.media.mix_out is None and len(audio.members) == 3


def test_a_freed_frame_row_is_not_mixed_into_by_a_stale_member() -> None:
    """A member whose session left the shared table (the engine closed it) while still in
    the conference must not write its mix into the row a new session now holds."""
    table = FrameTable()
    audio = ConferenceAudio(lambda m, t: None)
    bus = MixBus()
    bus.attach(audio)
    a, b = member("A"), member("B")
    for m in (a, b):
        m.media.adopt_frames(table)
        audio.add(m)
    a.media.inbound = tone(400.0)
    b.media.inbound = tone(1000.0)
    bus.mix(0.0)
    old_row = b.media.frame_row
    b.media.adopt_frames(FrameTable())  # closed by the engine, still a member
    newcomer = MediaSession(40000)
    newcomer.adopt_frames(table)
    assert newcomer.frame_row == old_row
    table.set_outbound(old_row, None)
    a.media.inbound = tone(400.0)
    bus.mix(0.0)
    assert newcomer.mix_out is None  # nothing written into the reused row
    b_out = b.media.mix_out
    assert b_out is not None and power_at(b_out, 400.0) > 0.5
