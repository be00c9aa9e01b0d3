"""The REST API's listener against real sockets: connection caps, header/body/keep-alive
timeouts, bad requests logged as one rate-limited line without a traceback, the Server header
setting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from confroom.api import ApiServer
from confroom.app.control import CallInfo
from confroom.app.hooks import HookResult
from confroom.conference.service import ConferenceService
from confroom.connlimits import Limits
from confroom.media.engine import MediaEngine

TOKEN = "t0ken"
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Hooks:
    async def call(self, *a: Any, **kw: Any) -> HookResult:  # pragma: no cover - unused
        return HookResult(ok=True, status=200, verbs=[], error=None, url="")


@dataclass
class FakeCall:
    info: CallInfo


@dataclass
class FakeServer:
    conferences: ConferenceService
    calls: dict[str, Any] = field(default_factory=dict)


@dataclass
class Api:
    server: ApiServer
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self, source: str = "127.0.0.1") -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", self.server.port,
                                             local_addr=(source, 0))
        self.writers.append(w)
        return r, w

    async def get(self, path: str, token: str | None = TOKEN) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{self.server.port}{path}", headers=headers) as r:
            await r.read()
            return r


async def make_api(limits: Limits, **kw: Any) -> ApiServer:
    engine = MediaEngine("127.0.0.1", 41020, 41030, 0)

    def spawn(coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    fake = FakeServer(ConferenceService(engine, Hooks(), spawn))  # type: ignore[arg-type]
    fake.calls["c1"] = FakeCall(CallInfo(
        call_sid="c1", call_id="c1@t", from_user="u", to_user="1000", caller_name="",
        originating_sip_ip="127.0.0.1", originating_sip_port=5070,
        local_sip_address="127.0.0.1:5060", account_sid="a", application_sid="app"))
    srv = ApiServer(fake, "127.0.0.1", 0, TOKEN, limits=limits, **kw)  # type: ignore[arg-type]
    await srv.start()
    return srv


ApiFactory = Callable[..., Awaitable[Api]]
SHORT = Limits(max_total=10, max_per_source=10, message_timeout=0.6, idle_timeout=1.2)


@pytest.fixture
async def api_factory() -> AsyncIterator[ApiFactory]:
    made: list[Api] = []

    async def make(limits: Limits = SHORT, **kw: Any) -> Api:
        a = Api(await make_api(limits, **kw))
        made.append(a)
        return a

    yield make
    for a in made:
        for w in a.writers:
            w.close()
        await a.server.stop()


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory()


async def closed_by_server(conn: Conn, timeout: float = 5.0) -> bool:
    """True when the server closes (EOF or reset) within `timeout`; data is read past."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    try:
        while True:
            data = await asyncio.wait_for(conn[0].read(4096), max(0.01, end - loop.time()))
            if data == b"":
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def request_on(conn: Conn) -> bytes:
    """A complete keep-alive request on a raw connection; the status line of its answer."""
    conn[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status = await asyncio.wait_for(conn[0].readline(), 5)
    while (await asyncio.wait_for(conn[0].readline(), 5)) not in (b"\r\n", b""):
        pass
    return status


async def test_connection_caps(api_factory: ApiFactory,
                               caplog: pytest.LogCaptureFixture) -> None:
    api = await api_factory(Limits(max_total=3, max_per_source=2, message_timeout=30.0,
                                   idle_timeout=30.0))
    caplog.set_level(logging.WARNING, "confroom.api")
    kept = [await api.connect("127.0.0.1"), await api.connect("127.0.0.1")]
    over_source = await api.connect("127.0.0.1")
    assert await closed_by_server(over_source)
    kept.append(await api.connect("127.0.0.2"))
    for conn in kept:  # each has had a request answered: none waits for one
        assert (await request_on(conn)).startswith(b"HTTP/1.1 200")
    over_total = await api.connect("127.0.0.3")
    assert await closed_by_server(over_total)
    assert api.server.connection_count == 3
    async with asyncio.timeout(5):
        while not any("refused 2 connection(s)" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.05)
    for w in api.writers[:2]:
        w.close()
    await asyncio.sleep(0.2)
    r = await api.get("/health")  # a slot is free again
    assert r.status == 200


async def test_slow_clients_cannot_lock_out_a_request_at_the_total_cap(
        api_factory: ApiFactory) -> None:
    api = await api_factory(Limits(max_total=4, max_per_source=4, message_timeout=30.0,
                                   idle_timeout=30.0))
    slow = []
    for i in range(4):  # the total cap, all sending a request's headers slowly
        conn = await api.connect(f"127.0.0.{i + 2}")
        conn[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        slow.append(conn)
    await asyncio.sleep(0.1)
    r = await api.get("/health")  # makes room by dropping the longest-waiting slow one
    assert r.status == 200
    assert await closed_by_server(slow[0])
    assert api.server.connection_count <= 4


async def test_slow_and_idle_clients_are_cut_off_while_requests_work(api: Api) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    silent = await api.connect()
    slow_headers = await api.connect()
    slow_headers[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    kept_alive = await api.connect()
    kept_alive[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status = await asyncio.wait_for(kept_alive[0].readline(), 5)
    assert status.startswith(b"HTTP/1.1 200")
    r = await api.get("/v1/Accounts/a/Conferences")
    assert r.status == 200
    assert await closed_by_server(silent)
    assert await closed_by_server(slow_headers)
    assert 0.6 <= loop.time() - t0 < 3.0
    assert await closed_by_server(kept_alive)  # idle after its response: keep-alive timeout
    assert 1.2 <= loop.time() - t0 < 4.0
    assert api.server.connection_count == 0


async def test_a_body_that_does_not_arrive_gets_408(api_factory: ApiFactory) -> None:
    api = await api_factory(body_timeout=0.5)
    loop = asyncio.get_running_loop()
    conn = await api.connect()
    t0 = loop.time()
    conn[1].write(b"PUT /v1/Accounts/a/Calls/c1 HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mu")
    status = await asyncio.wait_for(conn[0].readline(), 5)
    assert status.split()[1] == b"408"
    assert loop.time() - t0 >= 0.5
    assert await closed_by_server(conn)


async def test_garbage_and_oversize_requests_log_one_line_without_traceback(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for payload in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
        b"GET /health HTTP/1.1\r\nBad Header Line\r\n\r\n",
    ):
        conn = await api.connect()
        conn[1].write(payload)
        assert await closed_by_server(conn)
    for _ in range(5):
        r = await api.get("/v1/Accounts/a/Conferences", token=None)
        assert r.status == 401
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], [r.getMessage() for r in problems]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    bad = [m for m in warnings if "bad HTTP request" in m]
    refused = [m for m in warnings if "bearer token" in m]
    assert len(bad) == 1 and len(refused) == 1, warnings  # rate-limited: one per interval


async def test_server_header_is_configurable(api_factory: ApiFactory) -> None:
    api = await api_factory(server_header="acme-pbx")
    r = await api.get("/health")
    assert r.headers.get("Server") == "acme-pbx"
    r = await api.get("/v1/Accounts/a/Conferences", token=None)
    assert r.headers.get("Server") == "acme-pbx"


async def test_server_header_can_be_omitted(api_factory: ApiFactory) -> None:
    api = await api_factory(server_header="")
    r = await api.get("/health")
    assert "Server" not in r.headers


async def test_server_header_default(api: Api) -> None:
    r = await api.get("/health")
    assert r.headers.get("Server") == "confroom/0.1"
