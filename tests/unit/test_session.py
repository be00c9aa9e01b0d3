"""CallSession with a recording fake call and a real aiohttp hook server."""

from __future__ import annotations

import asyncio
import json
import logging
import wave
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from confroom.app import verbs_impl
from confroom.app.control import CallInfo
from confroom.app.hooks import WebhookClient, verify
from confroom.app.session import CallSession, notify_call_status, to_hook
from confroom.app.verbs_impl import local_media_path, loop_count
from confroom.config import AppConfig, Config, Hook
from confroom.media import tts
from confroom.media.sources import Source
from toolcheck import require_tool

# ------------------------------------------------------------------------------- fakes


MAX_FRAMES = 3000  # 60 s


class FakeCall:
    """Implements CallControl; records what the session did.

    With `blocking=False`, play() drains the source synchronously and returns True.
    With `blocking=True`, play() waits until stop_playback() or the call ends."""

    def __init__(self, app: AppConfig, *, blocking: bool = False, max_plays: int = 0) -> None:
        self.info = CallInfo(
            call_sid="c0ffee00-0000-4000-8000-000000000001",
            call_id="call-1@10.0.0.9",
            from_user="alice",
            to_user="1000",
            caller_name="Alice",
            originating_sip_ip="10.0.0.9",
            originating_sip_port=5062,
            local_sip_address="127.0.0.1:5060",
            account_sid=app.account_sid,
            application_sid=app.application_sid,
            call_status="ringing",
            sip_status=180,
            sip_reason="Ringing",
            sip={"headers": {"From": "<sip:alice@10.0.0.9>"}, "body": ""},
        )
        self.app = app
        self.blocking = blocking
        self.max_plays = max_plays
        self.events: list[tuple[Any, ...]] = []
        self.dtmf_listener: Any = None  # set by a running gather
        self._answered = False
        self._ended = asyncio.Event()
        self._stop: asyncio.Event | None = None

    @property
    def answered(self) -> bool:
        return self._answered

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def plays(self) -> list[int]:
        return [e[1] for e in self.events if e[0] == "play"]

    async def answer(self) -> None:
        if self._answered or self.ended:
            return
        self._answered = True
        self.info.call_status = "in-progress"
        self.events.append(("answer",))

    async def play(self, source: Source) -> bool:
        if self.ended:
            return False
        if not self._answered:
            await self.answer()
        if self.blocking:
            self._stop = asyncio.Event()
            stop = asyncio.ensure_future(self._stop.wait())
            end = asyncio.ensure_future(self._ended.wait())
            await asyncio.wait({stop, end}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            end.cancel()
            self.events.append(("play", -1))
            return False
        frames = 0
        while (frame := source.read()) is not None:
            assert frame.dtype == np.int16 and frame.shape == (160,)
            frames += 1
            if frames >= MAX_FRAMES:  # an endless source: the caller gives up and hangs up
                self.events.append(("play", frames))
                self._end()
                return False
        self.events.append(("play", frames))
        await asyncio.sleep(0)
        if self.max_plays and len(self.plays()) >= self.max_plays:
            self._end()
            return False
        return True

    def stop_playback(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def wait_ended(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ended.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _end(self) -> None:
        self._ended.set()

    async def hangup(self, headers: Mapping[str, str] | None = None) -> None:
        if self.ended:
            return
        self.events.append(("hangup", dict(headers or {})))
        self._end()

    async def decline(
        self, status: int, reason: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        if self.ended:
            return
        self.events.append(("decline", status, reason, dict(headers or {})))
        self._end()


@dataclass
class AppServer:
    base: str
    routes: dict[str, Any] = field(default_factory=dict)  # path -> JSON value | (status, text)
    bodies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    headers: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    raw: dict[str, list[bytes]] = field(default_factory=dict)


@pytest.fixture
async def server() -> AsyncIterator[AppServer]:
    srv = AppServer(base="")

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        srv.raw.setdefault(request.path, []).append(raw)
        srv.bodies.setdefault(request.path, []).append(json.loads(raw) if raw else {})
        srv.headers.setdefault(request.path, []).append(dict(request.headers))
        reply = srv.routes.get(request.path, [])
        if callable(reply):
            response: web.StreamResponse = await reply(request)
            return response
        if isinstance(reply, tuple):
            return web.Response(status=reply[0], text=reply[1])
        return web.json_response(reply)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield srv
    await runner.cleanup()


@pytest.fixture
async def hooks() -> AsyncIterator[WebhookClient]:
    client = WebhookClient(timeout=2.0)
    yield client
    await client.close()


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    d = tmp_path / "media"
    d.mkdir()
    write_wav(d / "hello.wav", 800)  # 0.1 s = 5 frames
    (d / "sub").mkdir()
    write_wav(d / "sub" / "beep.wav", 1600)  # 0.2 s = 10 frames
    return d


def write_wav(path: Path, samples: int, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.ones(samples, dtype=np.int16) * 1000).tobytes())


@pytest.fixture(autouse=True)
def fake_tts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str]]:
    """Replace the TTS engine: each text becomes a WAV of len(text) frames."""
    calls: list[tuple[str, str]] = []

    async def synth(text: str, voice: str, cache_dir: Path, **kw: Any) -> Path:
        calls.append((text, voice))
        p = tmp_path / f"tts-{len(calls)}.wav"
        write_wav(p, 160 * len(text))
        return p

    monkeypatch.setattr(verbs_impl, "synthesize", synth)
    return calls


def make(
    server: AppServer,
    hooks: WebhookClient,
    media_dir: Path,
    *,
    secret: str | None = None,
    blocking: bool = False,
    max_plays: int = 0,
    verbs_file: Path | None = None,
) -> tuple[CallSession, FakeCall]:
    if verbs_file is not None:
        app = AppConfig(verbs_file=verbs_file)
    else:
        app = AppConfig(call_hook=Hook(url=server.base + "/app/call"), webhook_secret=secret)
    config = Config(media_dir=media_dir, cache_dir=media_dir.parent / "cache", apps=(app,))
    call = FakeCall(app, blocking=blocking, max_plays=max_plays)
    return CallSession(call, hooks, config), call


# ------------------------------------------------------------------------------- tests


async def test_verbs_run_in_order_then_hangup(
    server: AppServer, hooks: WebhookClient, media_dir: Path, fake_tts: list[tuple[str, str]]
) -> None:
    server.routes["/app/call"] = [
        {"verb": "say", "text": "hi"},
        {"pause": {"length": 0.1}},
        {"verb": "play", "url": "hello.wav"},
        {"verb": "say", "text": ["abc", "defg"], "synthesizer": {"vendor": "google"}},
    ]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [
        ("answer",),
        ("play", 2),  # "hi"
        ("play", 5),  # pause 0.1 s of silence
        ("play", 5),  # hello.wav
        ("play", 7),  # "abc" + "defg"
        ("hangup", {}),
    ]
    assert fake_tts == [("hi", "en-us"), ("abc", "en-us"), ("defg", "en-us")]
    body = server.bodies["/app/call"][0]
    assert body["call_sid"] == call.info.call_sid
    assert body["from"] == "alice" and body["to"] == "1000"
    assert body["sip"]["headers"]["From"] == "<sip:alice@10.0.0.9>"


async def test_action_hook_replaces_rest(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "play", "url": "hello.wav", "actionHook": "/played"},
        {"verb": "say", "text": "never"},
    ]
    server.routes["/played"] = [{"verb": "pause", "length": 0.04}, {"verb": "hangup"}]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("answer",), ("play", 5), ("play", 2), ("hangup", {})]
    body = server.bodies["/played"][0]
    assert body["reason"] == "playCompleted"
    assert body["call_sid"] == call.info.call_sid
    assert body["call_status"] == "in-progress"
    assert isinstance(body["playback_milliseconds"], int)
    assert isinstance(body["playback_seconds"], int)
    assert isinstance(body["playback_last_offset_pos"], str)


async def test_empty_action_hook_continues(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "play", "url": "hello.wav", "actionHook": "/played"},
        {"verb": "play", "url": "sub/beep.wav"},
    ]
    server.routes["/played"] = []
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.plays() == [5, 10]
    assert call.names()[-1] == "hangup"


async def test_failed_action_hook_continues(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/app/call"] = [
        {"verb": "play", "url": "hello.wav", "actionHook": "/broken"},
        {"verb": "play", "url": "sub/beep.wav"},
    ]
    server.routes["/broken"] = (503, "nope")
    session, call = make(server, hooks, media_dir)
    with caplog.at_level(logging.WARNING):
        await session.run()
    assert call.plays() == [5, 10]
    assert f"{server.base}/broken" in caplog.text


async def test_call_hook_failure_declines_480(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/app/call"] = (500, "boom")
    session, call = make(server, hooks, media_dir)
    with caplog.at_level(logging.ERROR, logger="confroom.app.session"):
        await session.run()
    assert call.events == [("decline", 480, "Temporarily Unavailable", {})]
    assert f"call hook {server.base}/app/call failed: HTTP status 500" in caplog.text


async def test_call_hook_unreachable_declines_480(hooks: WebhookClient, media_dir: Path) -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    session, call = make(AppServer(base=f"http://127.0.0.1:{port}"), hooks, media_dir)
    await session.run()
    assert call.events == [("decline", 480, "Temporarily Unavailable", {})]


async def test_invalid_verbs_decline_500(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/app/call"] = [{"verb": "say", "text": "hi"}, {"pause": {"lenght": 3}}]
    session, call = make(server, hooks, media_dir)
    with caplog.at_level(logging.ERROR, logger="confroom.app.session"):
        await session.run()
    assert call.events == [("decline", 500, "Server Internal Error", {})]
    assert "verb #2 'pause': unknown attribute 'lenght'" in caplog.text
    assert f"{server.base}/app/call" in caplog.text


async def test_invalid_json_declines_500(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = (200, "[{oops")
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("decline", 500, "Server Internal Error", {})]


async def test_invalid_action_hook_verbs_hang_up_answered_call(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/app/call"] = [
        {"verb": "play", "url": "hello.wav", "actionHook": "/played"},
        {"verb": "say", "text": "never"},
    ]
    server.routes["/played"] = [{"verb": "play", "url": 5}]
    session, call = make(server, hooks, media_dir)
    with caplog.at_level(logging.ERROR, logger="confroom.app.session"):
        await session.run()
    assert call.events == [("answer",), ("play", 5), ("hangup", {})]
    assert "verb #1 'play': attribute 'url' has wrong type" in caplog.text


async def test_redirect(server: AppServer, hooks: WebhookClient, media_dir: Path) -> None:
    server.routes["/app/call"] = [
        {"verb": "redirect", "actionHook": "next"},  # relative to /app/call
        {"verb": "say", "text": "never"},
    ]
    server.routes["/app/next"] = [{"verb": "play", "url": "hello.wav"}]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("answer",), ("play", 5), ("hangup", {})]
    body = server.bodies["/app/next"][0]
    assert body["call_sid"] == call.info.call_sid and "sip" not in body


async def test_failed_redirect_hangs_up(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "answer"},
        {"verb": "redirect", "actionHook": "/gone"},
        {"verb": "say", "text": "never"},
    ]
    server.routes["/gone"] = (404, "no")
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("answer",), ("hangup", {})]


async def test_play_path_traversal_refused(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = media_dir.parent / "secret.wav"
    write_wav(secret, 800)
    server.routes["/app/call"] = [
        {"verb": "answer"},
        {"verb": "play", "url": "../../etc/passwd"},
        {"verb": "play", "url": ["../secret.wav", str(secret), f"file://{secret}"]},
        {"verb": "play", "url": "sub/../../secret.wav", "actionHook": "/played"},
    ]
    session, call = make(server, hooks, media_dir)
    with caplog.at_level(logging.ERROR, logger="confroom.app.verbs_impl"):
        await session.run()
    assert call.events == [("answer",), ("hangup", {})]
    assert caplog.text.count("is outside the media directory") == 5
    assert "play: path ../../etc/passwd is outside the media directory" in caplog.text
    assert server.bodies["/played"][0]["reason"] == "playFailed"


async def test_play_inside_media_dir(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "play", "url": ["hello.wav", str(media_dir / "sub" / "beep.wav")]},
        {"verb": "play", "url": f"file://{media_dir}/sub/beep.wav", "loop": 2},
        {"verb": "play", "url": "sub/beep.wav", "seekOffset": 0.1},
        {"verb": "play", "url": "missing.wav"},
    ]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.plays() == [15, 20, 5]
    assert call.names()[-1] == "hangup"


async def test_play_url_over_http(
    server: AppServer,
    hooks: WebhookClient,
    media_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetched: list[str] = []

    async def fake_fetch(url: str, cache_dir: Path, **kw: Any) -> Path:
        fetched.append(url)
        return media_dir / "hello.wav"

    monkeypatch.setattr(verbs_impl, "fetch_audio", fake_fetch)
    server.routes["/app/call"] = [{"verb": "play", "url": "https://example.com/a.wav"}]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert fetched == ["https://example.com/a.wav"]
    assert call.plays() == [5]


async def test_pause_plays_silence(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [{"verb": "pause", "length": 1}]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("answer",), ("play", 50), ("hangup", {})]


async def test_hangup_at_end_of_list(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [{"verb": "answer"}]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("answer",), ("hangup", {})]


async def test_empty_list_hangs_up(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = []
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("hangup", {})]


async def test_hangup_verb_with_headers_stops_list(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "answer"},
        {"verb": "hangup", "headers": {"X-Reason": "done", "X-N": 3}},
        {"verb": "say", "text": "never"},
    ]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("answer",), ("hangup", {"X-Reason": "done", "X-N": "3"})]


async def test_sip_decline(server: AppServer, hooks: WebhookClient, media_dir: Path) -> None:
    server.routes["/app/call"] = [{"sip:decline": {"status": 486, "reason": "Busy Here"}}]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.events == [("decline", 486, "Busy Here", {})]


async def test_sip_decline_after_answer_hangs_up(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/app/call"] = [{"verb": "answer"}, {"verb": "sip:decline", "status": 603}]
    session, call = make(server, hooks, media_dir)
    with caplog.at_level(logging.WARNING):
        await session.run()
    assert call.events == [("answer",), ("hangup", {})]
    assert "sip:decline on an answered call" in caplog.text


async def test_verbs_file(server: AppServer, hooks: WebhookClient, media_dir: Path) -> None:
    f = media_dir.parent / "app.json"
    f.write_text(json.dumps([{"play": {"url": "hello.wav"}}, {"hangup": {}}]))
    session, call = make(server, hooks, media_dir, verbs_file=f)
    await session.run()
    assert call.events == [("answer",), ("play", 5), ("hangup", {})]


async def test_invalid_verbs_file(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = media_dir.parent / "app.json"
    f.write_text(json.dumps([{"verb": "transcribe"}]))
    session, call = make(server, hooks, media_dir, verbs_file=f)
    with caplog.at_level(logging.ERROR):
        await session.run()
    assert call.events == [("decline", 500, "Server Internal Error", {})]
    assert "verb #1 'transcribe' is not supported by confroom" in caplog.text


async def test_missing_verbs_file_declines_480(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    session, call = make(server, hooks, media_dir, verbs_file=media_dir / "nope.json")
    await session.run()
    assert call.events == [("decline", 480, "Temporarily Unavailable", {})]


async def test_signed_call_hook(server: AppServer, hooks: WebhookClient, media_dir: Path) -> None:
    server.routes["/app/call"] = []
    session, _ = make(server, hooks, media_dir, secret="topsecret")
    await session.run()
    header = server.headers["/app/call"][0]["Jambonz-Signature"]
    assert verify("topsecret", server.raw["/app/call"][0], header)


async def test_kill_stops_current_verb_and_list(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "play", "url": "hello.wav", "loop": "forever"},
        {"verb": "say", "text": "never"},
    ]
    session, call = make(server, hooks, media_dir, blocking=True)
    task = asyncio.create_task(session.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if call._stop is not None:
            break
    assert not task.done()
    call._end()  # the caller hangs up (BYE) ...
    session.kill()  # ... and the call tells its session
    await asyncio.wait_for(task, 2)
    assert call.events == [("answer",), ("play", -1)]


async def test_kill_while_waiting_for_hook(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        started.set()
        await release.wait()
        return web.json_response([])

    server.routes["/app/call"] = [{"verb": "answer"}, {"verb": "redirect", "actionHook": "/slow"}]
    server.routes["/slow"] = slow
    session, call = make(server, hooks, media_dir)
    task = asyncio.create_task(session.run())
    await asyncio.wait_for(started.wait(), 2)
    call._end()
    session.kill()
    await asyncio.wait_for(task, 1)
    release.set()
    assert call.events == [("answer",)]


async def test_play_loop_forever_until_call_ends(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [{"verb": "play", "url": "hello.wav", "loop": 0}]
    session, call = make(server, hooks, media_dir)
    await asyncio.wait_for(session.run(), 2)
    assert call.plays() == [MAX_FRAMES]
    assert "hangup" not in call.names()  # the call was already over


async def test_play_list_loop_forever_until_call_ends(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "play", "url": ["hello.wav", "sub/beep.wav"], "loop": "forever"}
    ]
    session, call = make(server, hooks, media_dir, max_plays=7)
    await asyncio.wait_for(session.run(), 2)
    assert call.plays() == [15] * 7
    assert "hangup" not in call.names()


async def test_say_loop(
    server: AppServer, hooks: WebhookClient, media_dir: Path, fake_tts: list[tuple[str, str]]
) -> None:
    server.routes["/app/call"] = [
        {"verb": "say", "text": "hello", "loop": 3, "synthesizer": {"vendor": "x", "voice": "de"}}
    ]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.plays() == [15]
    assert fake_tts == [("hello", "de")]


async def test_say_falls_back_to_default_voice(
    server: AppServer,
    hooks: WebhookClient,
    media_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    voices: list[str] = []

    async def synth(text: str, voice: str, cache_dir: Path, **kw: Any) -> Path:
        voices.append(voice)
        if voice != "en-us":
            raise RuntimeError("no such voice")
        return media_dir / "hello.wav"

    monkeypatch.setattr(verbs_impl, "synthesize", synth)
    server.routes["/app/call"] = [
        {"say": {"text": "hi", "synthesizer": {"vendor": "google", "voice": "en-US-Wavenet-D"}}}
    ]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert voices == ["en-US-Wavenet-D", "en-us"]
    assert call.plays() == [5]


async def test_play_timeout_secs_then_action_hook(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {
            "verb": "play",
            "url": "hello.wav",
            "loop": "forever",
            "timeoutSecs": 0.2,
            "actionHook": "/played",
        },
    ]
    server.routes["/played"] = [{"verb": "hangup"}]
    session, call = make(server, hooks, media_dir, blocking=True)
    await asyncio.wait_for(session.run(), 2)
    assert call.events == [("answer",), ("play", -1), ("hangup", {})]
    body = server.bodies["/played"][0]
    assert body["reason"] == "playCompleted"
    assert 150 <= body["playback_milliseconds"] < 1500


async def test_replace_verbs(server: AppServer, hooks: WebhookClient, media_dir: Path) -> None:
    server.routes["/app/call"] = [
        {"verb": "play", "url": "hello.wav"},
        {"verb": "say", "text": "never"},
    ]
    session, call = make(server, hooks, media_dir, blocking=True)
    task = asyncio.create_task(session.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if call._stop is not None:
            break
    call.blocking = False
    session.replace_verbs([{"verb": "pause", "length": 0.1}])
    await asyncio.wait_for(task, 2)
    assert call.events == [("answer",), ("play", -1), ("play", 5), ("hangup", {})]


async def test_unimplemented_verb_is_skipped(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/app/call"] = [{"verb": "conference", "name": "x"}, {"verb": "answer"}]
    session, call = make(server, hooks, media_dir)
    saved = verbs_impl.VERBS.pop("conference", None)
    try:
        with caplog.at_level(logging.WARNING):
            await session.run()
    finally:
        if saved is not None:
            verbs_impl.VERBS["conference"] = saved
    assert call.events == [("answer",), ("hangup", {})]


async def test_notify_call_status(server: AppServer, hooks: WebhookClient) -> None:
    app = AppConfig(
        call_hook=Hook(url=server.base + "/app/call"),
        call_status_hook=Hook(url="status"),
        webhook_secret="k",
    )
    call = FakeCall(app)
    coro = notify_call_status(hooks, app, call.info)
    call.info.call_status = "completed"  # the body was taken when the status changed
    res = await coro
    assert res is not None and res.ok
    body = server.bodies["/app/status"][0]
    assert body["call_status"] == "ringing" and body["call_sid"] == call.info.call_sid
    assert "sip" not in body
    assert verify(
        "k", server.raw["/app/status"][0], server.headers["/app/status"][0]["Jambonz-Signature"]
    )
    no_hook = AppConfig(call_hook=Hook(url=server.base + "/app/call"))
    assert await notify_call_status(hooks, no_hook, call.info) is None


def test_to_hook() -> None:
    assert to_hook("/x") == Hook(url="/x")
    assert to_hook({"url": "/x", "method": "get", "username": "u", "password": "p"}) == Hook(
        url="/x", method="GET", username="u", password="p"
    )
    assert to_hook({"url": "/x", "basicAuth": {"username": "u", "password": "p"}}) == Hook(
        url="/x", username="u", password="p"
    )


@pytest.mark.parametrize(
    ("value", "count"),
    [(None, 1), (3, 3), (2.7, 2), ("forever", 0), (0, 0), ("4", 4), ("bogus", 1), (-2, 1)],
)
def test_loop_count(value: Any, count: int) -> None:
    assert loop_count(value) == count


def test_local_media_path(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    assert local_media_path("a.wav", root) == (root / "a.wav").resolve()
    assert local_media_path(f"file://{root}/x%20y.wav", root) == (root / "x y.wav").resolve()
    assert local_media_path("../a.wav", root) is None
    assert local_media_path("/etc/passwd", root) is None
    assert local_media_path("file:///etc/passwd", root) is None


async def test_play_url_real_download(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    wav = (media_dir / "sub" / "beep.wav").read_bytes()

    async def audio(request: web.Request) -> web.StreamResponse:
        return web.Response(body=wav, content_type="audio/wav")

    server.routes["/audio/beep.wav"] = audio
    server.routes["/app/call"] = [{"verb": "play", "url": server.base + "/audio/beep.wav"}]
    session, call = make(server, hooks, media_dir)
    await session.run()
    assert call.plays() == [10]
    assert list((media_dir.parent / "cache").glob("url-*.wav"))


async def test_say_with_real_engine(
    server: AppServer, hooks: WebhookClient, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("espeak-ng")
    monkeypatch.setattr(verbs_impl, "synthesize", tts.synthesize)
    server.routes["/app/call"] = [{"verb": "say", "text": "Welcome to confroom."}]
    session, call = make(server, hooks, media_dir)
    await asyncio.wait_for(session.run(), 20)
    assert call.names() == ["answer", "play", "hangup"]
    assert call.plays()[0] > 25  # well over half a second of speech


# ------------------------------------------------------------------------------- gather


async def _listening(call: FakeCall, prompt: bool = True) -> Any:
    """The gather's digit listener, once it is set (and its prompt plays, if it has one)."""
    async def ready() -> Any:
        while call.dtmf_listener is None or (prompt and call._stop is None):
            await asyncio.sleep(0.005)
        return call.dtmf_listener

    return await asyncio.wait_for(ready(), 5)


async def test_gather_digit_stops_prompt_at_once_and_posts_digits(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "gather", "id": "pin-1", "numDigits": 2, "actionHook": "/app/pin",
         "play": {"url": "hello.wav"}},
        {"verb": "say", "text": "not reached: the hook's verbs replace the list"},
    ]
    server.routes["/app/pin"] = [{"verb": "hangup"}]
    session, call = make(server, hooks, media_dir, blocking=True)
    run = asyncio.create_task(session.run())
    listener = await _listening(call)
    listener("4")
    assert call._stop is not None and call._stop.is_set()  # stopped inside the callback
    listener("5")
    await asyncio.wait_for(run, 5)
    (body,) = server.bodies["/app/pin"]
    assert body["reason"] == "dtmfDetected" and body["digits"] == "45"
    assert body["call_sid"] == call.info.call_sid and body["verb_id"] == "pin-1"
    assert call.names() == ["answer", "hangup"]  # the prompt's task was cancelled mid-play
    assert call.dtmf_listener is None


async def test_gather_listen_during_prompt_false_ignores_digits_while_prompting(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "gather", "numDigits": 1, "listenDuringPrompt": False, "timeout": 0.3,
         "actionHook": "/app/done", "play": {"url": "hello.wav"}},
    ]
    server.routes["/app/done"] = [{"verb": "hangup"}]
    session, call = make(server, hooks, media_dir, blocking=True)
    run = asyncio.create_task(session.run())
    listener = await _listening(call)
    listener("1")
    assert call._stop is not None and not call._stop.is_set()  # no barge-in
    call.stop_playback()  # the prompt ends; listening starts, nothing comes: timeout
    await asyncio.wait_for(run, 5)
    (body,) = server.bodies["/app/done"]
    assert body["reason"] == "timeout" and "digits" not in body


async def test_gather_dtmf_bargein_false_keeps_the_prompt(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "gather", "finishOnKey": "#", "dtmfBargein": False, "actionHook": "/app/done",
         "play": {"url": "hello.wav"}},
    ]
    server.routes["/app/done"] = [{"verb": "hangup"}]
    session, call = make(server, hooks, media_dir, blocking=True)
    run = asyncio.create_task(session.run())
    listener = await _listening(call)
    listener("7")
    assert call._stop is not None and not call._stop.is_set()
    listener("#")
    await asyncio.wait_for(run, 5)
    assert server.bodies["/app/done"][0]["digits"] == "7"


async def test_gather_without_action_hook_continues_with_the_next_verb(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    server.routes["/app/call"] = [
        {"verb": "gather", "numDigits": 1},
        {"verb": "play", "url": "hello.wav"},
    ]
    session, call = make(server, hooks, media_dir)
    run = asyncio.create_task(session.run())
    listener = await _listening(call, prompt=False)
    listener("3")
    await asyncio.wait_for(run, 5)
    assert call.names() == ["answer", "play", "hangup"]


async def test_leave_outside_a_conference_does_nothing(
    server: AppServer, hooks: WebhookClient, media_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/app/call"] = [{"verb": "leave"}, {"verb": "play", "url": "hello.wav"}]
    session, call = make(server, hooks, media_dir)
    with caplog.at_level(logging.INFO):
        await session.run()
    assert call.names() == ["answer", "play", "hangup"]
    assert "leave: the call is not in a conference" in caplog.text


async def test_append_verbs_runs_after_the_list_without_interrupting(
    server: AppServer, hooks: WebhookClient, media_dir: Path
) -> None:
    """A queued redirect (`queueCommand: true`): the running verb is not interrupted; when it
    ends the queued verbs run, then the list ends."""
    server.routes["/app/call"] = [{"verb": "pause", "length": 0.3}]
    session, call = make(server, hooks, media_dir, blocking=True)
    task = asyncio.create_task(session.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if call._stop is not None:
            break
    session.append_verbs([{"verb": "pause", "length": 0.1}])
    await asyncio.sleep(0.05)
    assert not session.interrupted and not task.done()
    call.blocking = False
    assert call._stop is not None
    call._stop.set()  # the pause's audio ends by itself
    await asyncio.wait_for(task, 2)
    assert call.events == [("answer",), ("play", -1), ("play", 5), ("hangup", {})]
