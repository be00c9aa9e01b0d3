"""WebhookClient against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from confroom.app.hooks import HookResult, WebhookClient, parse_response, sign, verify
from confroom.cli import build_parser
from confroom.config import ConfigError, Hook, load
from confroom.tls import client_context
from gccheck import confroom_garbage, no_automatic_gc

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class HookServer:
    base: str
    seen: list[Seen] = field(default_factory=list)
    routes: dict[str, Handler] = field(default_factory=dict)


@pytest.fixture
async def server() -> AsyncIterator[HookServer]:
    hs = HookServer(base="")

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        hs.seen.append(
            Seen(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        handler = hs.routes.get(request.path)
        if handler is None:
            return web.json_response([{"verb": "say", "text": "default"}])
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hs.base = f"http://127.0.0.1:{port}"
    yield hs
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[WebhookClient]:
    c = WebhookClient(timeout=0.3)
    yield c
    await c.close()


def text_route(text: str, status: int = 200) -> Handler:
    async def h(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, status=status, content_type="application/json")

    return h


async def test_post_json_body(server: HookServer, client: WebhookClient) -> None:
    body = {"call_sid": "abc", "sip_status": 100, "sip": {"headers": {"To": "x"}}}
    res = await client.call(Hook(url=server.base + "/call"), body, base_url=None, secret=None)
    assert res.ok and res.status == 200
    assert res.verbs == [{"verb": "say", "text": "default"}]
    assert res.url == server.base + "/call"
    seen = server.seen[0]
    assert seen.method == "POST"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body == json.dumps(body, separators=(",", ":")).encode()
    assert "Jambonz-Signature" not in seen.headers
    assert "Authorization" not in seen.headers


async def test_get_query_string(server: HookServer, client: WebhookClient) -> None:
    body = {"call_sid": "abc", "sip_status": 100, "from": "alice", "nested": {"a": [1, 2]}}
    hook = Hook(url=server.base + "/status?x=1", method="GET")
    res = await client.call(hook, body, base_url=None, secret=None)
    assert res.ok
    seen = server.seen[0]
    assert seen.method == "GET"
    assert seen.body == b""
    assert seen.query == {
        "x": "1",
        "call_sid": "abc",
        "sip_status": "100",
        "from": "alice",
        "nested": '{"a":[1,2]}',
    }


async def test_basic_auth(server: HookServer, client: WebhookClient) -> None:
    hook = Hook(url=server.base + "/call", username="user", password="pa:ss")
    res = await client.call(hook, {}, base_url=None, secret=None)
    assert res.ok
    auth = server.seen[0].headers["Authorization"]
    assert auth.startswith("Basic ")
    assert base64.b64decode(auth[6:]).decode() == "user:pa:ss"


async def test_signature_post(server: HookServer, client: WebhookClient) -> None:
    body = {"call_sid": "abc"}
    before = int(time.time())
    res = await client.call(Hook(url=server.base + "/call"), body, base_url=None, secret="s3cret")
    assert res.ok
    seen = server.seen[0]
    header = seen.headers["Jambonz-Signature"]
    t = int(header.split(",")[0].removeprefix("t="))
    assert before <= t <= int(time.time())
    assert header == sign("s3cret", seen.body, t)
    assert verify("s3cret", seen.body, header)
    assert not verify("other", seen.body, header)
    assert not verify("s3cret", seen.body + b" ", header)


async def test_signature_get_signs_empty_body(server: HookServer, client: WebhookClient) -> None:
    hook = Hook(url=server.base + "/call", method="GET")
    res = await client.call(hook, {"a": "b"}, base_url=None, secret="k")
    assert res.ok
    assert verify("k", b"", server.seen[0].headers["Jambonz-Signature"])


def test_sign_and_verify_helpers() -> None:
    header = sign("secret", b'{"a":1}', 1700000000)
    assert header.startswith("t=1700000000,v1=")
    assert len(header.split("v1=")[1]) == 64
    assert verify("secret", b'{"a":1}', header, now=1700000010)
    assert not verify("secret", b'{"a":1}', header, now=1700001000)  # too old
    assert verify("secret", b'{"a":1}', header, tolerance=None)
    assert not verify("secret", b'{"a":1}', "garbage")


@pytest.mark.parametrize(
    ("hook_url", "base_path", "expected_path"),
    [
        ("/confWait", "/app/call", "/confWait"),
        ("confWait", "/app/call", "/app/confWait"),
        ("../other", "/app/sub/call", "/app/other"),
    ],
)
async def test_relative_url(
    server: HookServer,
    client: WebhookClient,
    hook_url: str,
    base_path: str,
    expected_path: str,
) -> None:
    res = await client.call(Hook(url=hook_url), {}, base_url=server.base + base_path, secret=None)
    assert res.ok
    assert server.seen[0].path == expected_path
    assert res.url == server.base + expected_path


async def test_relative_url_without_base(client: WebhookClient) -> None:
    res = await client.call(Hook(url="/confWait"), {}, base_url=None, secret=None)
    assert not res.ok and res.status is None
    assert res.error is not None and "base URL" in res.error


async def test_timeout(
    server: HookServer, client: WebhookClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.json_response([])

    server.routes["/slow"] = slow
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="confroom.app.hooks"):
        res = await client.call(Hook(url=server.base + "/slow"), {}, base_url=None, secret=None)
    assert time.monotonic() - t0 < 1.5
    assert not res.ok and res.status is None and res.verbs is None
    assert res.error is not None and "timed out" in res.error
    assert f"hook {server.base}/slow failed: timed out" in caplog.text


async def test_http_500(
    server: HookServer, client: WebhookClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/err"] = text_route("oops", status=500)
    with caplog.at_level(logging.WARNING, logger="confroom.app.hooks"):
        res = await client.call(Hook(url=server.base + "/err"), {}, base_url=None, secret=None)
    assert not res.ok and res.status == 500
    assert res.error == "HTTP status 500"
    assert f"hook {server.base}/err failed: HTTP status 500" in caplog.text


async def test_connection_refused(client: WebhookClient) -> None:
    # Grab a free port, then close it so nothing listens there.
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    res = await client.call(Hook(url=f"http://127.0.0.1:{port}/x"), {}, base_url=None, secret=None)
    assert not res.ok and res.status is None
    assert res.error is not None and "connection error" in res.error


async def test_invalid_json(server: HookServer, client: WebhookClient) -> None:
    server.routes["/bad"] = text_route("[{not json")
    res = await client.call(Hook(url=server.base + "/bad"), {}, base_url=None, secret=None)
    assert not res.ok and res.status == 200
    assert res.error is not None and "not valid JSON" in res.error


async def test_single_object_verb(server: HookServer, client: WebhookClient) -> None:
    server.routes["/one"] = text_route('{"verb": "hangup"}')
    server.routes["/two"] = text_route('{"say": {"text": "hi"}}')
    r1 = await client.call(Hook(url=server.base + "/one"), {}, base_url=None, secret=None)
    r2 = await client.call(Hook(url=server.base + "/two"), {}, base_url=None, secret=None)
    assert r1.ok and r1.verbs == [{"verb": "hangup"}]
    assert r2.ok and r2.verbs == [{"say": {"text": "hi"}}]


@pytest.mark.parametrize("text", ["", "  \n", "[]"])
async def test_empty_response(server: HookServer, client: WebhookClient, text: str) -> None:
    server.routes["/empty"] = text_route(text)
    res = await client.call(Hook(url=server.base + "/empty"), {}, base_url=None, secret=None)
    assert res == HookResult(ok=True, status=200, verbs=[], error=None, url=server.base + "/empty")


async def test_204_no_content(server: HookServer, client: WebhookClient) -> None:
    async def nc(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    server.routes["/nc"] = nc
    res = await client.call(Hook(url=server.base + "/nc"), {}, base_url=None, secret=None)
    assert res.ok and res.verbs == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"a": 1, "b": 2}', "not a verb"),
        ('"hello"', "expected an array"),
        ("[1, 2]", "item #1"),
    ],
)
def test_parse_response_errors(text: str, fragment: str) -> None:
    verbs, error = parse_response(text)
    assert verbs is None
    assert error is not None and fragment in error


async def test_session_reused(server: HookServer, client: WebhookClient) -> None:
    for _ in range(3):
        assert (await client.call(Hook(url=server.base + "/a"), {}, base_url=None, secret=None)).ok
    first = client._session
    assert (await client.call(Hook(url=server.base + "/a"), {}, base_url=None, secret=None)).ok
    assert client._session is first
    await client.close()
    assert client._session is None


# ---- body cap, failure kinds, latency, no reference cycles ----------------------------------


def streamed(total: int, *, announce: bool = False) -> tuple[Handler, list[int]]:
    """A route answering `total` bytes of a JSON-looking body in 64 KiB writes (chunked, or with
    Content-Length when `announce`); the list gets how many bytes were written before the
    client went away."""
    written: list[int] = []

    async def h(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if announce:
            resp.content_length = total
        await resp.prepare(request)
        chunk = b" " * 65536
        sent = 0
        try:
            while sent < total:
                await resp.write(chunk[: total - sent])
                sent += min(len(chunk), total - sent)
        except (ConnectionError, RuntimeError):
            pass
        written.append(sent)
        return resp

    return h, written


@pytest.mark.parametrize("announce", [False, True], ids=["chunked", "content-length"])
async def test_an_answer_over_max_body_fails_without_being_read(
    server: HookServer, announce: bool, caplog: pytest.LogCaptureFixture
) -> None:
    total = 50 * 1024 * 1024
    server.routes["/big"], written = streamed(total, announce=announce)
    c = WebhookClient(timeout=10.0, max_body=100_000)
    try:
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="confroom.app.hooks"):
            res = await c.call(Hook(url=server.base + "/big"), {}, base_url=None, secret=None)
        took = time.monotonic() - t0
    finally:
        await c.close()
    assert not res.ok and res.kind == "too_large" and res.status == 200
    assert res.error == "response larger than 100000 bytes"
    assert f"hook {server.base}/big failed: response larger than 100000 bytes" in caplog.text
    assert took < 5.0
    for _ in range(100):  # the server notices the closed connection a little later
        if written:
            break
        await asyncio.sleep(0.05)
    assert written and written[0] < total // 4, f"{written} bytes were sent: the read went on"
    assert c.stats.failures == {"too_large": 1}


async def test_an_answer_at_max_body_is_read(server: HookServer) -> None:
    verbs = json.dumps([{"verb": "say", "text": "x" * 1000}]).encode()
    server.routes["/fit"] = text_route(verbs.decode())
    c = WebhookClient(timeout=2.0, max_body=len(verbs))
    try:
        res = await c.call(Hook(url=server.base + "/fit"), {}, base_url=None, secret=None)
    finally:
        await c.close()
    assert res.ok and res.verbs == [{"verb": "say", "text": "x" * 1000}]


async def test_failures_are_counted_by_kind_and_every_call_timed(server: HookServer) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.json_response([])

    server.routes["/slow"] = slow
    server.routes["/500"] = text_route("boom", 500)
    server.routes["/bad"] = text_route("[{no")
    server.routes["/big"], _ = streamed(300_000)
    c = WebhookClient(timeout=0.3, max_body=200_000)
    urls = {"timeout": server.base + "/slow", "http_status": server.base + "/500",
            "bad_response": server.base + "/bad", "too_large": server.base + "/big",
            "connection": "http://127.0.0.1:9/x", "bad_url": "relative/path", "ok": server.base}
    try:
        kinds = {want: (await c.call(Hook(url=url), {}, base_url=None, secret=None)).kind
                 for want, url in urls.items()}
    finally:
        await c.close()
    assert kinds == {**{k: k for k in urls}, "ok": None}
    assert c.stats.failures == dict.fromkeys(set(urls) - {"ok"}, 1)
    assert c.stats.latency.count == len(urls) - 1  # a URL that cannot be called is not timed
    assert 0.3 <= c.stats.latency.total < 3.0


async def test_failed_hooks_leave_no_reference_cycles(server: HookServer) -> None:
    server.routes["/500"] = text_route("boom", 500)
    server.routes["/bad"] = text_route("[{no")
    server.routes["/big"], _ = streamed(300_000)
    c = WebhookClient(timeout=0.3, max_body=200_000)
    try:
        await c.call(Hook(url=server.base), {}, base_url=None, secret=None)  # warm up
        with no_automatic_gc():
            for url in ("http://127.0.0.1:9/x", server.base + "/500", server.base + "/bad",
                        server.base + "/big"):
                res = await c.call(Hook(url=url), {"call_sid": "x"}, base_url=None, secret=None)
                assert not res.ok
            assert confroom_garbage() == []
    finally:
        await c.close()


def test_max_body_setting(tmp_path: Path) -> None:
    assert load(None, env={}).webhook_max_body == 1024 * 1024
    toml = tmp_path / "c.toml"
    toml.write_text("[webhooks]\nmax_body = 5000\n")
    assert load(toml, env={}).webhook_max_body == 5000
    assert load(toml, env={"CONFROOM_WEBHOOK_MAX_BODY": "6000"}).webhook_max_body == 6000
    args = build_parser().parse_args(["serve", "--webhook-max-body", "7000"])
    assert load(toml, env={}, overrides={"webhook_max_body": args.webhook_max_body}
                ).webhook_max_body == 7000
    for bad_env in ({"CONFROOM_WEBHOOK_MAX_BODY": "0"}, {"CONFROOM_WEBHOOK_MAX_BODY": "1MB"}):
        with pytest.raises(ConfigError, match="WEBHOOK_MAX_BODY"):
            load(None, env=bad_env)
    toml.write_text('[webhooks]\nmax_body = "big"\n')
    with pytest.raises(ConfigError, match=r"webhooks\.max_body"):
        load(toml, env={})


async def test_an_answer_stalling_mid_body_is_a_timeout_not_a_bad_body(
    server: HookServer, client: WebhookClient
) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'[{"verb": ')
        await asyncio.sleep(1.0)
        return resp

    server.routes["/stall"] = stall
    res = await client.call(Hook(url=server.base + "/stall"), {}, base_url=None, secret=None)
    # status None: the call hook's caller gets 480 (unreachable app), not 500 (app error)
    assert not res.ok and res.kind == "timeout" and res.status is None


async def test_https_hook_trusts_the_ca_file_context(tmp_path: Path) -> None:
    """An https hook whose certificate comes from the `[webhooks] ca_file` CA is called; with
    another CA's bundle it fails as a connection error (the same context serves wss apps)."""
    ca, other = trustme.CA(), trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response([{"verb": "hangup"}])

    app = web.Application()
    app.router.add_post("/call", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    good = WebhookClient(ssl_context=client_context(tmp_path / "ca.pem"))
    bad = WebhookClient(ssl_context=client_context(tmp_path / "other.pem"))
    hook = Hook(f"https://127.0.0.1:{port}/call")
    try:
        ok = await good.call(hook, {"a": 1}, base_url=None, secret=None)
        assert ok.ok and ok.verbs == [{"verb": "hangup"}]
        failed = await bad.call(hook, {"a": 1}, base_url=None, secret=None)
        assert not failed.ok and failed.kind == "connection"
        assert failed.error is not None and "certificate verify failed" in failed.error
    finally:
        await good.close()
        await bad.close()
        await runner.cleanup()
