"""Connection limits and quiet errors for the REST API's HTTP listener.

`GuardedListener` accepts the API's connections itself and hands each to aiohttp's request
handler through `_GuardedConnection`, a protocol that first asks a `ConnectionTable`
(`confroom.connlimits`) whether the connection may stay (caps in total and per source address;
at the total cap the connection waiting longest for its request's headers makes room) and
reports its traffic to it: the headers of a request must arrive within the header timeout
of its first byte (or of the accept), a connection idle between requests is closed after the
keep-alive timeout, and a request being handled is held (no idle close; its body read has its
own timeout in the app). One periodic loop timer sweeps the table and writes the summary line.

`QuietHttpErrors` is the logging filter on the logger given to aiohttp: a malformed request
(garbage, oversize headers: aiohttp's "Error handling request") becomes one warning line
without a traceback, at most one per interval, and the number suppressed is reported with the
next one. Errors of our own handlers keep their tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from confroom.connlimits import ConnectionTable, Limits
from confroom.ratelog import RateLimitedWarning
from confroom.sip.transport import LISTEN_BACKLOG

log = logging.getLogger("confroom.api")


class QuietHttpErrors(logging.Filter):
    """Turns aiohttp's error records (with tracebacks) into rate-limited one-line warnings."""

    def __init__(self, clock: Callable[[], float], interval: float = 10.0) -> None:
        super().__init__()
        self._clock = clock
        self._warn = RateLimitedWarning(log, interval)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Error handling request"):
            return True  # errors of our own handlers keep their tracebacks
        exc = record.exc_info[1] if record.exc_info else None
        what = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()
        what = " ".join(what.split())[:200]
        if record.levelno < logging.WARNING:  # aiohttp's debug line for a non-HTTP first line
            record.msg, record.args = "bad HTTP request: %s", (what,)
            record.exc_info = record.exc_text = None
            return True
        self._warn(self._clock(), "api: bad HTTP request: %s", what)
        return False


class _GuardedConnection(asyncio.Protocol):
    """Admits a connection against the table, then forwards everything to aiohttp's handler."""

    def __init__(self, listener: GuardedListener, inner: asyncio.Protocol) -> None:
        self.listener = listener
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        peer = t.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        table = self.listener.table
        if table.opened(t, source, self.listener.now()) is not None:
            t.abort()  # counted for the summary line
            return
        for victim in table.take_evicted():  # made room at the total cap
            victim.abort()  # type: ignore[attr-defined]
        self.admitted = True
        self.inner.connection_made(t)

    def data_received(self, data: bytes) -> None:
        if not self.admitted or self.transport is None:
            return
        table = self.listener.table
        # bytes while no request is being handled: a request's headers are on their way
        # (while one is, they are its body: only activity)
        partial = not table.held(self.transport)
        table.received(self.transport, self.listener.now(), partial=partial)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted or self.transport is None:
            return
        self.listener.table.closed(self.transport)
        self.inner.connection_lost(exc)


class GuardedListener:
    """The API's listening socket with the connection limits applied (see module docstring)."""

    def __init__(self, runner: web.AppRunner, limits: Limits) -> None:
        self.runner = runner
        self.table: ConnectionTable[asyncio.BaseTransport] = ConnectionTable(limits, "api http")
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.port = 0

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    reuse_port: bool = False) -> None:
        loop = self._loop = asyncio.get_running_loop()
        handler_factory = self.runner.server
        assert handler_factory is not None, "runner.setup() first"

        def factory() -> asyncio.Protocol:
            return _GuardedConnection(self, handler_factory())

        tls: dict[str, Any] = {}
        if ssl_context is not None:  # the handshake is part of the time the headers may take
            tls = {"ssl": ssl_context, "ssl_handshake_timeout": self.table.limits.message_timeout}
        server = await loop.create_server(factory, host, port, reuse_address=True,
                                          backlog=LISTEN_BACKLOG,
                                          reuse_port=reuse_port or None, **tls)
        self._server = server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._sweeper = loop.call_later(self.table.limits.sweep_interval, self._sweep)

    # requests being handled (called by the app's middleware)
    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and transport in self.table:
            self.table.received(transport, self.now(), completed=1, partial=False)
            self.table.hold(transport)

    def request_done(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and self.table.held(transport):
            self.table.release(transport, self.now())

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for transport, _why in self.table.sweep(now):
            transport.abort()  # type: ignore[attr-defined]
        line = self.table.summary(now)
        if line is not None:
            log.warning("%s", line)
        self._sweeper = self._loop.call_later(self.table.limits.sweep_interval, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            self._server = None
