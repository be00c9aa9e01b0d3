"""`WsRequestor` against a real aiohttp WebSocket server on a real socket: subprotocol, basic
auth and signature on the upgrade, acks, ack timeout, refused frames answered with
jambonz:error, commands in order, reconnect with session:reconnect and queued messages,
giving up after the bounded tries, `wss://` checked against the client TLS context (an
untrusted certificate ends at once), and the `WsStats` counters the metrics read."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import WSMsgType, web

from confroom.app.hooks import SIGNATURE_HEADER, verify
from confroom.app.wsclient import WsClient, WsRequestor, WsSettings, socket_url
from confroom.app.wsproto import Command
from confroom.config import Hook
from confroom.tls import client_context

Handler = Callable[[web.WebSocketResponse, "App"], Awaitable[None]]


@dataclass
class App:
    """A WebSocket app server; `handler` runs each connection."""

    handler: Handler
    headers: list[dict[str, str]] = field(default_factory=list)
    protocols: list[str | None] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0
    sockets: list[web.WebSocketResponse] = field(default_factory=list)

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> App:
        async def ws_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(protocols=["ws.jambonz.org"])
            await ws.prepare(request)
            self.sockets.append(ws)
            self.headers.append(dict(request.headers))
            self.protocols.append(ws.ws_protocol)
            await self.handler(ws, self)
            return ws

        app = web.Application()
        app.router.add_get("/{p:.*}", ws_handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for ws in self.sockets:  # going away (1001): not a graceful close by the app
            await ws.close(code=1001)
        if self.runner is not None:
            await self.runner.cleanup()

    async def next(self, ws: web.WebSocketResponse) -> dict[str, Any]:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == WSMsgType.TEXT, msg
        obj: dict[str, Any] = json.loads(msg.data)
        self.received.append(obj)
        return obj


@dataclass
class Calls:
    commands: list[Command] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    answer: str | None = None

    async def on_command(self, cmd: Command) -> str | None:
        self.commands.append(cmd)
        return self.answer


@pytest.fixture
async def client() -> AsyncIterator[WsClient]:
    c = WsClient(WsSettings(ack_timeout=0.5, max_payload=2048, max_reconnects=2,
                            handshake_timeout=2.0))
    yield c
    await c.close()


def requestor(client: WsClient, app: App, calls: Calls, **hook: Any) -> WsRequestor:
    return WsRequestor(client, Hook(url=f"ws://127.0.0.1:{app.port}/app", **hook), "sid-1",
                       "s3cret", calls.on_command, calls.lost.append)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def test_socket_url() -> None:
    assert socket_url("wss://h/x#rc=2&rp=ct") == ("wss://h/x", 2)
    assert socket_url("http://h/x") == ("ws://h/x", None)


async def test_session_new_ack_commands_and_refusals(client: WsClient) -> None:
    done = asyncio.Event()

    async def handler(ws: web.WebSocketResponse, app: App) -> None:
        new = await app.next(ws)
        await ws.send_str(json.dumps({"type": "ack", "msgid": new["msgid"],
                                      "data": [{"verb": "say", "text": "hi"}]}))
        await ws.send_str(json.dumps({"type": "command", "command": "conf:mute-status",
                                      "data": {"conf_mute_status": "mute"}}))
        await ws.send_str(json.dumps({"type": "command", "command": "whisper", "data": {}}))
        await ws.send_str("{not json")
        await ws.send_bytes(b"\x00\x01")
        await ws.send_str(json.dumps({"type": "command", "command": "x", "data": "a" * 3000}))
        errors = [await app.next(ws) for _ in range(4)]
        assert all(e["type"] == "jambonz:error" for e in errors)
        details = sorted(e["data"]["details"] for e in errors)
        assert any("binary" in d for d in details)
        assert any("invalid JSON" in d for d in details)
        assert any("over the 2048 byte limit" in d for d in details)
        assert any("command 'whisper': no" in d for d in details)
        hook = await app.next(ws)  # a verb:hook, answered late: the caller timed out
        assert hook["hook"] == "/status" and hook["data"] == {"event": "join"}
        done.set()
        await ws.receive()  # until closed

    app = await App(handler).start()
    calls = Calls()

    async def on_command(cmd: Command) -> str | None:
        calls.commands.append(cmd)
        return "no" if cmd.name == "whisper" else None

    r = WsRequestor(client, Hook(url=f"ws://127.0.0.1:{app.port}/app", username="u",
                                 password="p"), "sid-1", "s3cret", on_command, calls.lost.append)
    try:
        result = await r.request("session:new", {"call_sid": "sid-1"})
        assert result.ok and result.verbs == [{"verb": "say", "text": "hi"}]
        headers = app.headers[0]
        assert app.protocols == ["ws.jambonz.org"]
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
        assert verify("s3cret", b"", headers[SIGNATURE_HEADER])
        assert app.received[0]["type"] == "session:new"
        assert len(app.received[0]["msgid"]) == 22 and app.received[0]["call_sid"] == "sid-1"
        await wait_until(lambda: len(calls.commands) == 2)
        assert [c.name for c in calls.commands] == ["conf:mute-status", "whisper"]
        slow = await r.request("verb:hook", {"event": "join"}, "/status")
        assert not slow.ok and slow.kind == "timeout"
        await asyncio.wait_for(done.wait(), 5)
        assert client.stats.open == 1
    finally:
        await r.close()
        await app.stop()
    assert calls.lost == []
    await wait_until(lambda: client.stats.open == 0)
    st = client.stats
    assert (st.refused, st.ack_timeouts, st.reconnects, st.lost) == (4, 1, 0, 0)


async def test_reconnect_resends_and_queues(client: WsClient) -> None:
    seen: list[list[str]] = []

    async def handler(ws: web.WebSocketResponse, app: App) -> None:
        conn = len(seen)
        types: list[str] = []
        seen.append(types)
        first = await app.next(ws)
        types.append(first["type"])
        if conn == 0:
            await ws.send_str(json.dumps({"type": "ack", "msgid": first["msgid"]}))
            hook = await app.next(ws)  # not acked: the socket drops
            types.append(hook["type"])
            assert ws._writer is not None
            ws._writer.transport.abort()  # abnormal close (no close frame)
            return
        assert first["type"] == "session:reconnect" and first["data"] == {"n": 1}
        await ws.send_str(json.dumps({"type": "ack", "msgid": first["msgid"]}))
        for _ in range(2):
            m = await app.next(ws)
            types.append(m["type"])
            if m["type"] == "verb:hook":
                await ws.send_str(json.dumps({"type": "ack", "msgid": m["msgid"],
                                              "data": [{"verb": "pause", "length": 1}]}))
        await ws.receive()

    app = await App(handler).start()
    calls = Calls()
    r = requestor(client, app, calls)
    try:
        assert (await r.request("session:new", {"n": 1})).ok
        hook = r.request("verb:hook", {"event": "join"}, "/s")
        await wait_until(lambda: r.proto.state == "down")
        r.notify("call:status", {"call_status": "in-progress"})  # queued while down
        result = await asyncio.wait_for(hook, 5)
        assert result.ok and result.verbs == [{"verb": "pause", "length": 1}]
        await wait_until(lambda: len(seen) == 2 and len(seen[1]) == 3)
        assert seen == [["session:new", "verb:hook"],
                        ["session:reconnect", "verb:hook", "call:status"]]
        assert calls.lost == []
        assert client.stats.reconnects == 1 and client.stats.open == 1
    finally:
        await r.close()
        await app.stop()


async def test_gives_up_after_bounded_tries(client: WsClient) -> None:
    async def handler(ws: web.WebSocketResponse, app: App) -> None:
        await app.next(ws)  # never acked; the app goes away (1001) and does not come back
        await ws.receive()

    app = await App(handler).start()
    calls = Calls()
    r = requestor(client, app, calls)
    first = r.request("session:new", {"n": 1})
    await wait_until(lambda: len(app.received) == 1)
    await app.stop()  # connection dropped, nothing listens any more
    result = await asyncio.wait_for(first, 10)
    assert not result.ok
    await wait_until(lambda: bool(calls.lost), timeout=10)
    assert "tries" in calls.lost[0] or "not acked" in calls.lost[0]
    assert r.gone
    assert client.stats.lost == 1 and client.stats.open == 0
    await r.close()


def _tls_app_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """(server context of the app, the CA that issued its certificate, another CA)."""
    ca, other = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    paths = tmp_path / "ca.pem", tmp_path / "other.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    other.cert_pem.write_to_path(str(paths[1]))
    return server, paths[0], paths[1]


async def test_wss_trusts_the_ca_file_and_refuses_an_untrusted_certificate(
        tmp_path: Path) -> None:
    server_ctx, ca, other = _tls_app_context(tmp_path)

    async def handler(ws: web.WebSocketResponse, app: App) -> None:
        new = await app.next(ws)
        await ws.send_str(json.dumps({"type": "ack", "msgid": new["msgid"],
                                      "data": [{"verb": "pause", "length": 1}]}))
        await ws.receive()

    app = await App(handler).start(tls=server_ctx)
    settings = WsSettings(ack_timeout=2.0, max_reconnects=3, handshake_timeout=2.0)
    good = WsClient(settings, ssl_context=client_context(ca))
    bad = WsClient(settings, ssl_context=client_context(other))
    ok_calls, bad_calls = Calls(), Calls()
    url = f"wss://127.0.0.1:{app.port}/app"
    r_ok = WsRequestor(good, Hook(url=url), "sid-ok", None, ok_calls.on_command,
                       ok_calls.lost.append)
    r_bad = WsRequestor(bad, Hook(url=url), "sid-bad", None, bad_calls.on_command,
                        bad_calls.lost.append)
    try:
        result = await r_ok.request("session:new", {"n": 1})
        assert result.ok and result.verbs == [{"verb": "pause", "length": 1}]
        failed = await asyncio.wait_for(r_bad.request("session:new", {"n": 1}), 5)
        assert not failed.ok and failed.kind == "connection"
        # not retried: a certificate does not become trusted by waiting
        assert r_bad.proto.attempts == 0 and len(bad_calls.lost) == 1
        assert "TLS certificate not trusted" in bad_calls.lost[0]
        assert "ca_file" in bad_calls.lost[0]
        assert bad.stats.lost == 1 and good.stats.lost == 0 and good.stats.open == 1
    finally:
        for r in (r_ok, r_bad):
            await r.close()
        await app.stop()
        await good.close()
        await bad.close()
