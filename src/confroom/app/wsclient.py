"""The WebSocket side of a jambonz WebSocket app: one socket per call (aiohttp client).

A thin adapter around `confroom.app.wsproto.WsProtocol`: `WsRequestor` opens the socket (with
the `ws.jambonz.org` subprotocol, basic auth and a `Jambonz-Signature` on the upgrade request
when the app has a webhook secret), writes what the protocol queues, feeds it what the app
sends, arms one timer for the next ack deadline, reconnects with the protocol's backoff, and
hands commands to the call (`on_command`, one at a time, in order). Requests answer with the
same `HookResult` as an HTTP hook, so the verb runner does not care which transport it uses.
`WsClient` holds what all sockets share (settings, the aiohttp session with the client TLS
context of `[webhooks] ca_file`, refusal logging, the `WsStats` counters of the metrics).
A `wss://` server whose certificate is not trusted is not retried: the call ends at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from confroom.app.hooks import SIGNATURE_HEADER, HookResult, sign
from confroom.app.wsproto import (
    DEFAULT_ACK_TIMEOUT,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_RECONNECTS,
    SUBPROTOCOL,
    Ack,
    Command,
    Outgoing,
    Refused,
    WsProtocol,
)
from confroom.config import Hook
from confroom.memory import forget_traceback
from confroom.ratelog import RateLimitedWarning

logger = logging.getLogger("confroom.app.ws")
_refusals = RateLimitedWarning(logger)

DEFAULT_HANDSHAKE_TIMEOUT = 1.5
_RC = re.compile(r"(?:^|&)rc=(\d+)")


def is_ws_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("ws", "wss")


def is_ws_hook(hook: Hook) -> bool:
    """A hook served over the socket: a ws(s):// URL or method `WS`."""
    return is_ws_url(hook.url) or hook.method.upper() == "WS"


def socket_url(url: str) -> tuple[str, int | None]:
    """The URL to connect to (fragment removed; http(s) made ws(s)) and the `#rc=N`
    reconnect count it names, if any."""
    parts = urlsplit(url)
    m = _RC.search(parts.fragment)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    return urlunsplit(parts._replace(scheme=scheme, fragment="")), int(m[1]) if m else None


@dataclass
class WsStats:
    """What the metrics endpoint reports about app sockets."""

    open: int = 0  # sockets open now
    reconnects: int = 0  # sockets opened again after a drop
    ack_timeouts: int = 0  # messages not acked in time
    refused: int = 0  # frames / commands from apps answered with jambonz:error
    lost: int = 0  # calls ended because their socket could not be (re)opened


@dataclass(frozen=True)
class WsSettings:
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_reconnects: int = DEFAULT_MAX_RECONNECTS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


class WsClient:
    """What every call's socket shares: settings and one aiohttp session."""

    def __init__(self, settings: WsSettings | None = None, user_agent: str = "confroom",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings or WsSettings()
        self.user_agent = user_agent
        self.ssl_context = ssl_context  # wss: None = aiohttp's default (system CA store)
        self.stats = WsStats()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def http_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # no total timeout (the sockets live as long as their calls) and no cap on
            # connections (one per call; the default pool of 100 would queue calls)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None),
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0,
                                               ssl=self.ssl_context or True))
            self._loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


CommandHandler = Callable[[Command], Awaitable[str | None]]


class WsRequestor:
    """One call's socket to its app (see the module docstring). `on_command` returns None
    when the command was carried out, else what was wrong (sent back as `jambonz:error`);
    `on_lost` is called once when the socket is gone for good while the call still needs it
    (connect or reconnect failed, `session:reconnect` not acked); `on_closed` when the app
    closed it normally (1000: jambonz then sends it nothing more)."""

    def __init__(self, client: WsClient, hook: Hook, call_sid: str, secret: str | None,
                 on_command: CommandHandler, on_lost: Callable[[str], None],
                 on_closed: Callable[[], None] | None = None) -> None:
        s = client.settings
        self.client = client
        self.hook = hook
        self.url, rc = socket_url(hook.url)
        self.call_sid = call_sid
        self.secret = secret
        self.proto = WsProtocol(call_sid, ack_timeout=s.ack_timeout, max_payload=s.max_payload,
                                max_reconnects=min(rc, 5) if rc is not None else s.max_reconnects)
        self.on_command = on_command
        self.on_lost = on_lost
        self.on_closed = on_closed  # the app closed its socket with 1000
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._waiters: dict[str, asyncio.Future[HookResult]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._commands: asyncio.Queue[Command] | None = None
        self._command_task: asyncio.Task[None] | None = None
        self._closing = False
        self.gone = False  # the app closed the socket (1000) or it could not be reconnected

    # ---- what the call asks -----------------------------------------------------------------

    def handles(self, hook: Hook) -> bool:
        """Is `hook` sent over this socket? Everything but absolute http(s) URLs is."""
        return urlsplit(hook.url).scheme.lower() not in ("http", "https")

    def same_server(self, url: str) -> bool:
        """Is the absolute ws(s) `url` on this socket's server (scheme, host and port)?"""
        a, b = urlsplit(socket_url(url)[0]), urlsplit(self.url)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def hook_name(self, hook: Hook) -> str:
        """The `hook` field of a message: relative URLs as given, our own URL as a path."""
        url = hook.url
        if is_ws_url(url):
            full = urlsplit(urljoin(self.url, url))
            mine = urlsplit(self.url)
            if (full.scheme, full.netloc) == (mine.scheme, mine.netloc):
                return full.path or "/"
        return url

    def request(self, type_: str, data: Any, hook: str | None = None) -> Awaitable[HookResult]:
        """Send a message that waits for an ack; resolves with the ack's verbs (or a failed
        `HookResult` on timeout, closed socket)."""
        fut: asyncio.Future[HookResult] = asyncio.get_running_loop().create_future()
        if self.gone or self.proto.state == "closed":
            fut.set_result(self._failure(f"{type_}: the socket is closed", "connection"))
            return fut
        msg = self.proto.message(type_, data, hook)
        self._waiters[msg.msgid] = fut
        self._start()
        self._flush()
        return fut

    def notify(self, type_: str, data: Any) -> None:
        """Send a message that is not acked (`call:status`, `jambonz:error`)."""
        if self.gone or self.proto.state == "closed":
            return
        self.proto.message(type_, data)
        self._start()
        self._flush()

    async def close(self) -> None:
        """The call is over: write what is queued, close with 1000, stop."""
        if self._closing:
            return
        self._closing = True
        if self._command_task is not None:
            self._command_task.cancel()
        ws = self._ws
        if ws is not None and not ws.closed:
            try:
                for frame in self.proto.take_frames(time.monotonic()):
                    await ws.send_str(frame)
                await ws.close(code=1000)
            except (aiohttp.ClientError, OSError, RuntimeError) as e:
                forget_traceback(e)
        for msg in self.proto.close():
            self._resolve(msg, self._failure(f"{msg.type}: the call ended", "connection"))
        for task in (self._task, self._writer):
            if task is not None and not task.done():
                task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._wake.set()

    @property
    def closing(self) -> bool:
        """close() was called: the call is over."""
        return self._closing

    # ---- socket ----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        headers = {"User-Agent": self.client.user_agent}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, b"", int(time.time()))
        if self.hook.username is not None:
            creds = f"{self.hook.username}:{self.hook.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(creds).decode("ascii")
        s = self.client.settings
        async with asyncio.timeout(s.handshake_timeout):
            return await self.client.http_session().ws_connect(
                self.url, protocols=(SUBPROTOCOL,), headers=headers,
                max_msg_size=max(4 * s.max_payload, 1 << 20), autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=s.handshake_timeout),
            )

    async def _run(self) -> None:
        try:
            while not self._closing:
                try:
                    ws = await self._connect()
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                    forget_traceback(e)
                    what = "connect" if self.proto.reconnects == 0 else "reconnect"
                    if isinstance(e, aiohttp.ClientConnectorCertificateError):
                        self._give_up(  # retrying cannot help
                            f"could not {what} to {self.url}: TLS certificate not trusted "
                            f"({_cert_why(e)}; the trusted CAs are [webhooks] ca_file, else "
                            "the system store)")
                        return
                    delay = self.proto.connect_failed()
                    if delay is None:
                        self._give_up(f"could not {what} to {self.url} after "
                                      f"{self.proto.attempts} tries: {_why(e)}")
                        return
                    logger.info("call_sid=%s: ws %s to %s failed (%s); retry in %.1f s",
                                self.call_sid, what, self.url, _why(e), delay)
                    await asyncio.sleep(delay)
                    continue
                self._ws = ws
                self.client.stats.open += 1
                if self.proto.state == "down":
                    self.client.stats.reconnects += 1
                    logger.info("call_sid=%s: ws reconnected to %s", self.call_sid, self.url)
                self.proto.connected()
                if self._writer is None:
                    self._writer = asyncio.get_running_loop().create_task(self._write_loop())
                self._flush()
                try:
                    code = await self._read(ws)
                finally:
                    self._ws = None
                    self.client.stats.open -= 1
                if self.closing:
                    return
                if code == 1000:
                    logger.info("call_sid=%s: the app closed its socket (1000): no more "
                                "messages are sent to it", self.call_sid)
                    self.gone = True
                    self._fail_all("the app closed the socket")
                    if self.on_closed is not None:
                        self.on_closed()
                    return
                delay = self.proto.dropped()
                if delay is None:
                    self._give_up(f"socket to {self.url} dropped (code {code}) and the "
                                  "reconnect tries are used up")
                    return
                logger.warning("call_sid=%s: ws to %s dropped (code %s); reconnecting in "
                               "%.1f s", self.call_sid, self.url, code, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: never leave the call hanging on it
            logger.exception("call_sid=%s: ws requestor failed", self.call_sid)
            self._give_up("internal error in the ws requestor")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> int | None:
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                ev = self.proto.feed_text(frame.data)
            elif frame.type == aiohttp.WSMsgType.BINARY:
                ev = self.proto.feed_binary(len(frame.data))
            else:  # ERROR (e.g. a frame over aiohttp's hard cap): the socket is done
                break
            if isinstance(ev, Ack):
                self._on_ack(ev)
            elif isinstance(ev, Command):
                self._queue_command(ev)
            elif isinstance(ev, Refused):
                self._refuse(ev.details, ev.content)
        return ws.close_code

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            ws = self._ws
            if ws is None or ws.closed:
                continue
            frames = self.proto.take_frames(time.monotonic())
            self._arm()
            try:
                for frame in frames:
                    await ws.send_str(frame)
            except (aiohttp.ClientError, OSError, RuntimeError) as e:
                forget_traceback(e)  # the reader sees the drop and reconnects

    def _flush(self) -> None:
        self._wake.set()

    # ---- acks, timeouts, commands ------------------------------------------------------------

    def _on_ack(self, ev: Ack) -> None:
        self._resolve(ev.message, _ack_result(ev.verbs, self.url))
        self._flush()  # a session:reconnect ack lets the held messages go
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.proto.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - time.monotonic())
            self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for ex in self.proto.expire(time.monotonic()):
            msg = ex.message
            self.client.stats.ack_timeouts += 1
            logger.warning("call_sid=%s: no ack for %s (msgid %s) within %g s", self.call_sid,
                           msg.type, msg.msgid, self.proto.ack_timeout)
            self._resolve(msg, self._failure(
                f"no ack for {msg.type} within {self.proto.ack_timeout:g} s", "timeout"))
            if msg.type == "session:reconnect":
                self._give_up("session:reconnect was not acked")
        self._flush()
        self._arm()

    def _queue_command(self, cmd: Command) -> None:
        if self._commands is None:
            self._commands = asyncio.Queue()
            self._command_task = asyncio.get_running_loop().create_task(self._command_loop())
        self._commands.put_nowait(cmd)

    async def _command_loop(self) -> None:
        assert self._commands is not None
        while True:
            cmd = await self._commands.get()
            try:
                problem = await self.on_command(cmd)
            except Exception:
                logger.exception("call_sid=%s: command %s failed", self.call_sid, cmd.name)
                problem = "internal error"
            if problem is not None:
                self._refuse(f"command {cmd.name!r}: {problem}",
                             _short({"command": cmd.name, "data": cmd.data}))

    def _refuse(self, details: str, content: str) -> None:
        self.client.stats.refused += 1
        _refusals(time.monotonic(), "call_sid=%s: refused from the ws app %s: %s",
                  self.call_sid, self.url, details)
        self.notify("jambonz:error", {"msg": "InvalidMessage", "details": details,
                                      "content": content})

    # ---- ends ------------------------------------------------------------------------------

    def _resolve(self, msg: Outgoing, result: HookResult) -> None:
        fut = self._waiters.pop(msg.msgid, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _failure(self, error: str, kind: str) -> HookResult:
        return HookResult(ok=False, status=None, verbs=None, error=error, url=self.url,
                          kind=kind)

    def _fail_all(self, why: str) -> None:
        for msg in self.proto.close():
            self._resolve(msg, self._failure(f"{msg.type}: {why}", "connection"))

    def _give_up(self, why: str) -> None:
        self.gone = True
        self._fail_all(why)
        if not self._closing:
            self.client.stats.lost += 1
            logger.error("call_sid=%s: ws app lost: %s; ending the call", self.call_sid, why)
            self.on_lost(why)


def _why(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _cert_why(e: aiohttp.ClientConnectorCertificateError) -> str:
    cert_error = e.certificate_error
    if isinstance(cert_error, ssl.SSLCertVerificationError):
        return cert_error.verify_message or str(cert_error)
    return str(cert_error)


def _short(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)[:200]


def _ack_result(data: Any, url: str) -> HookResult:
    if data is None:
        verbs: list[dict[str, Any]] | None = []
    elif isinstance(data, list) and all(isinstance(v, dict) for v in data):
        verbs = data
    elif isinstance(data, dict):
        verbs = [data]
    else:
        return HookResult(ok=False, status=None, verbs=None, url=url, kind="bad_response",
                          error=f"ack data is JSON {type(data).__name__}, expected verbs")
    return HookResult(ok=True, status=None, verbs=verbs, error=None, url=url)
