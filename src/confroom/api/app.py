"""The REST API's aiohttp application: routes, bearer-token auth, JSON errors, `ApiServer`.

A thin adapter: request bodies are parsed and carried out by `confroom.conference.control`
(sans-IO), conferences are found through the `ConferenceService`, calls through the server's
`calls` map. Every `/v1` route and `/metrics` need `Authorization: Bearer <token>` (401
otherwise); `/health` and `/openapi.json` are open. Every error is JSON:
`{"error": "<what is wrong>"}`.

Routes (documented in `openapi.json`):
  POST     /v1/Accounts/{account_sid}/Calls              create an outbound call (201 {"sid"})
  PUT|POST /v1/Accounts/{account_sid}/Calls/{call_sid}   live call control (`confroom.callupdate`)
  GET      /v1/Accounts/{account_sid}/Conferences         names of the conferences in progress
  GET      /v1/Accounts/{account_sid}/Conferences/{name}  one conference with its participants
  DELETE   /v1/Accounts/{account_sid}/Conferences/{name}  end it (members go to actionHook)
  GET      /health                                        {"status": "ok", "calls", "conferences"}
  GET      /openapi.json                                  the OpenAPI document
  GET      /metrics                   Prometheus text format (`confroom.api.metrics`), when given
  GET      /sip                       SIP over WebSocket (`confroom.sip.websocket`), when given
  GET      /phone, /dashboard, /static/*, /v1/Events   browser pages and their live feed
                                      (`confroom.web`)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from importlib import resources
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from confroom.api.guard import GuardedListener, QuietHttpErrors
from confroom.api.metrics import CONTENT_TYPE
from confroom.callupdate import LiveCall, UpdateError, apply_update, parse_update
from confroom.conference.control import ControlError, conference_detail
from confroom.conference.service import ConferenceService
from confroom.conference.shared import SharedStateError
from confroom.connlimits import Limits
from confroom.outbound import LimitExceeded, Refused
from confroom.outcall import CreateCall, CreateCallError, parse_create_call
from confroom.ratelog import RateLimitedWarning
from confroom.web import add_routes

log = logging.getLogger("confroom.api")
# the logger aiohttp's request handlers write to (QuietHttpErrors filters it while serving)
http_log = logging.getLogger("confroom.api.http")

MAX_BODY = 64 * 1024
# at stop, requests still being handled get this long before they are cancelled (the live feed
# and the `/sip` WebSockets are closed before, so this is a backstop; aiohttp's default is 60 s)
SHUTDOWN_TIMEOUT = 2.0
USER_AGENT = "confroom/0.1"  # the default Server header (the SIP User-Agent's default)
# used when ApiServer is given no limits (the server passes limits sized from its fd limit)
DEFAULT_LIMITS = Limits(max_total=256, max_per_source=32, message_timeout=10.0,
                        idle_timeout=15.0)


class CallCreator(Protocol):
    def create(self, account_sid: str, req: CreateCall) -> str: ...


class ServerLike(Protocol):
    """What the API needs of the server (`confroom.server.Server` fits)."""

    @property
    def outbound(self) -> CallCreator: ...

    @property
    def calls(self) -> Mapping[str, LiveCall]: ...

    @property
    def conferences(self) -> ConferenceService: ...


SERVER = web.AppKey("server", ServerLike)
TOKEN = web.AppKey("token", str)
METRICS = web.AppKey("metrics", CollectorRegistry)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
SERVER_HEADER = web.AppKey("server_header", str)
GUARD = web.AppKey("guard", GuardedListener)
REFUSED_WARNING = web.AppKey("refused_warning", RateLimitedWarning)


@cache
def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document (the `openapi.json` shipped in this package)."""
    text = (resources.files("confroom.api") / "openapi.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the listener's connection table a request is being handled (no idle close)."""
    guard = request.app.get(GUARD)
    if guard is None:
        return await handler(request)
    guard.request_started(request.transport)
    try:
        return await handler(request)
    finally:
        guard.request_done(request.transport)


@web.middleware
async def _auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/") or request.path in ("/v1", "/metrics"):
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        expected = request.app[TOKEN]
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            request.app[REFUSED_WARNING](
                time.monotonic(), "api: %s %s refused: %s bearer token (from %s)",
                request.method, request.path[:100], "wrong" if token else "missing",
                request.remote)
            return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                         **{"WWW-Authenticate": 'Bearer realm="confroom"'})
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.status, e.reason)


def _server(request: web.Request) -> ServerLike:
    return request.app[SERVER]


async def _json_body(request: web.Request) -> Any:
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT]):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="the request body did not arrive in time",
                                     headers={"Connection": "close"}) from None
    if not raw.strip():
        raise ControlError("the request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ControlError(f"the request body is not valid JSON: {e}") from None


async def update_call(request: web.Request) -> web.Response:
    srv = _server(request)
    account_sid = request.match_info["account_sid"]
    call_sid = request.match_info["call_sid"]
    call = srv.calls.get(call_sid)
    svc = srv.conferences
    if call is None and svc.shared is not None:
        return await _update_remote_call(request, account_sid, call_sid)
    if call is None or call.info.account_sid != account_sid:
        return error(404, f"no call {call_sid} in account {account_sid}")
    try:
        upd = parse_update(await _json_body(request))
    except ControlError as e:
        return error(400, str(e))
    try:
        summary = await apply_update(srv.conferences, call, upd)
    except UpdateError as e:
        return error(e.status, str(e))
    return web.json_response(summary, status=202)


async def _update_remote_call(request: web.Request, account_sid: str, call_sid: str,
                              ) -> web.Response:
    """Cluster: the call is not on this node; the node that has it carries the update out."""
    shared = _server(request).conferences.shared
    assert shared is not None
    try:
        body = await _json_body(request)
        parse_update(body)  # a bad body is refused here, not sent round the cluster
    except ControlError as e:
        return error(400, str(e))
    try:
        done = await shared.update_call(account_sid, call_sid, body)
    except SharedStateError as e:
        return error(503, str(e))
    if done is None:
        return error(404, f"no call {call_sid} in account {account_sid} on any node of the "
                          "cluster")
    return web.json_response(done[1], status=done[0])


async def create_call(request: web.Request) -> web.Response:
    """jambonz create-call: 201 {"sid": call_sid}; the call proceeds in the background."""
    account_sid = request.match_info["account_sid"]
    try:
        req = parse_create_call(await _json_body(request))
    except (ControlError, CreateCallError) as e:
        return error(400, str(e))
    try:
        sid = _server(request).outbound.create(account_sid, req)
    except LookupError as e:
        return error(404, str(e))
    except Refused as e:
        return error(403, f"outbound call refused: {e}")
    except LimitExceeded as e:
        return error(429, str(e), **{"Retry-After": str(e.retry_after)})
    except RuntimeError as e:
        return error(503, str(e))
    return web.json_response({"sid": sid}, status=201)


async def list_conferences(request: web.Request) -> web.Response:
    svc = _server(request).conferences
    account = request.match_info["account_sid"]
    if svc.shared is not None:
        try:
            return web.json_response(await svc.shared.conference_names(account))
        except SharedStateError as e:
            return error(503, str(e))
    return web.json_response(svc.registry.names(account))


def _conference(request: web.Request) -> Any:
    account_sid = request.match_info["account_sid"]
    name = request.match_info["name"]
    return _server(request).conferences.registry.get(account_sid, name)


async def get_conference(request: web.Request) -> web.Response:
    shared = _server(request).conferences.shared
    if shared is not None:
        try:
            detail = await shared.conference_detail(request.match_info["account_sid"],
                                                    request.match_info["name"])
        except SharedStateError as e:
            return error(503, str(e))
        if detail is None:
            return error(404, f"no conference {request.match_info['name']!r} in progress")
        return web.json_response(detail)
    conf = _conference(request)
    if conf is None:
        return error(404, f"no conference {request.match_info['name']!r} in progress")
    return web.json_response(conference_detail(conf, time.time()))


async def delete_conference(request: web.Request) -> web.Response:
    shared = _server(request).conferences.shared
    if shared is not None:
        try:
            summary = await shared.end_conference(request.match_info["account_sid"],
                                                  request.match_info["name"])
        except SharedStateError as e:
            return error(503, str(e))
        if summary is None:
            return error(404, f"no conference {request.match_info['name']!r} in progress")
        return web.json_response(summary, status=202)
    conf = _conference(request)
    if conf is None:
        return error(404, f"no conference {request.match_info['name']!r} in progress")
    affected = list(conf.members)
    _server(request).conferences.end(conf, "ended by the REST API")
    return web.json_response({"action": "end", "friendly_name": conf.name,
                              "conference_sid": conf.sid, "call_sids": affected}, status=202)


async def health(request: web.Request) -> web.Response:
    srv = _server(request)
    return web.json_response({"status": "ok", "calls": len(srv.calls),
                              "conferences": len(srv.conferences.registry.all())})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS])  # collected now, from the server's state
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    value = request.app[SERVER_HEADER]
    if value:
        response.headers["Server"] = value
    else:
        response.headers.popall("Server", None)


def build_app(
    server: ServerLike, token: str, metrics_registry: CollectorRegistry | None = None, *,
    body_timeout: float = 10.0, server_header: str = USER_AGENT,
    sip_websocket: Handler | None = None,
) -> web.Application:
    """The API application for `server`, guarded by bearer `token` (must not be empty);
    with `metrics_registry`, `GET /metrics` exposes it. A request body must arrive within
    `body_timeout` seconds (else 408); responses carry `Server: <server_header>` (none when
    empty); with `sip_websocket`, `GET /sip` is that handler (SIP over WebSocket, no token:
    SIP has its own admission)."""
    if not token:
        raise ValueError("the REST API needs a bearer token")
    app = web.Application(middlewares=[_guarded, _auth_and_errors], client_max_size=MAX_BODY)
    app[SERVER] = server
    app[TOKEN] = token
    app[BODY_TIMEOUT] = body_timeout
    app[SERVER_HEADER] = server_header
    app[REFUSED_WARNING] = RateLimitedWarning(log)
    app.on_response_prepare.append(_server_header)
    call = "/v1/Accounts/{account_sid}/Calls/{call_sid}"
    confs = "/v1/Accounts/{account_sid}/Conferences"
    app.router.add_post("/v1/Accounts/{account_sid}/Calls", create_call)
    app.router.add_put(call, update_call)
    app.router.add_post(call, update_call)
    app.router.add_get(confs, list_conferences, allow_head=False)
    app.router.add_get(confs + "/{name}", get_conference, allow_head=False)
    app.router.add_delete(confs + "/{name}", delete_conference)
    app.router.add_get("/health", health, allow_head=False)
    app.router.add_get("/openapi.json", openapi, allow_head=False)
    if metrics_registry is not None:
        app[METRICS] = metrics_registry
        app.router.add_get("/metrics", metrics, allow_head=False)
    if sip_websocket is not None:
        app.router.add_get("/sip", sip_websocket, allow_head=False)
    add_routes(app, server)  # the browser pages (confroom.web) and their live feed
    return app


class ApiServer:
    """Serves `build_app(server, token, metrics)` on host:port (port 0: any free port), over
    HTTPS when given an `ssl_context` (then plain HTTP to that port gets no answer), within
    `limits` (connection caps; header timeout = its message timeout, also the TLS handshake
    timeout; keep-alive timeout = its idle timeout; see `confroom.api.guard`)."""

    def __init__(self, server: ServerLike, host: str, port: int, token: str,
                 metrics: CollectorRegistry | None = None,
                 ssl_context: ssl.SSLContext | None = None, *, limits: Limits | None = None,
                 body_timeout: float = 10.0, server_header: str = USER_AGENT,
                 sip_websocket: Handler | None = None) -> None:
        self._app = build_app(server, token, metrics, body_timeout=body_timeout,
                              server_header=server_header, sip_websocket=sip_websocket)
        self._host = host
        self._want_port = port
        self.reuse_port = False  # --workers: several processes serve the same port
        self._ssl = ssl_context
        self.port = port
        self.limits = limits or DEFAULT_LIMITS
        self._runner: web.AppRunner | None = None
        self._listener: GuardedListener | None = None
        self._quiet: QuietHttpErrors | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._quiet = QuietHttpErrors(loop.time)
        http_log.addFilter(self._quiet)
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                               logger=http_log, keepalive_timeout=self.limits.idle_timeout,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        listener = GuardedListener(runner, self.limits)
        self._app[GUARD] = listener
        await runner.setup()
        try:
            await listener.start(self._host, self._want_port, self._ssl, self.reuse_port)
        except OSError:
            await runner.cleanup()
            http_log.removeFilter(self._quiet)
            raise
        self._runner = runner
        self._listener = listener
        self.port = listener.port
        log.info("REST API on %s://%s:%d (bearer token required on /v1 and /metrics)",
                 "https" if self._ssl is not None else "http", self._host, self.port)

    @property
    def connection_count(self) -> int:
        return len(self._listener.table) if self._listener is not None else 0

    async def stop_listening(self) -> None:
        """Take no new connection; the open ones (a browser's `/sip` WebSocket that is yet to
        get its BYE) go on until `stop()`."""
        if self._listener is not None:
            await self._listener.close()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        if runner is not None:
            await runner.cleanup()
        if self._quiet is not None:
            http_log.removeFilter(self._quiet)
            self._quiet = None
