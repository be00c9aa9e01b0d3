"""SIP over WebSocket (RFC 7118): the `/sip` endpoint on the HTTP server's port.

A thin aiohttp adapter, no SIP logic. A client must offer the WebSocket subprotocol `sip`
(else 400 before the upgrade). Every text or binary frame is one SIP message, handed to the
same callback as UDP/TCP/TLS messages with a `Peer` of transport `ws` (plain HTTP) or `wss`
(HTTPS) and the client's socket address; whatever the SIP layer sends to that peer (responses
and requests, e.g. our BYE) goes back as one text frame on the same connection, since a
browser's Contact host (`*.invalid`) cannot be reached otherwise.

Bad input is closed clearly and never reaches the SIP layer: a frame that is not a SIP
message closes with 1003 and a reason, a frame larger than `max_message_bytes` with 1009
(aiohttp's own check, before the frame is buffered whole). Refusals are logged rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSCloseCode, WSMsgType, web

from confroom.ratelog import RateLimitedWarning
from confroom.sip.message import SipParseError, parse_message
from confroom.sip.peer import Peer
from confroom.sip.transport import OnMessage

log = logging.getLogger("confroom.sip.websocket")

SUBPROTOCOL = "sip"
PATH = "/sip"
# a browser's connection is checked with a ping this often (closed when it does not answer)
HEARTBEAT = 30.0


class SipWebSocket:
    """The WebSocket connections of SIP clients, by `Peer`. `handle` is the aiohttp handler
    for `GET /sip`; `send(peer, data)` writes to a connection (dropped, counted, when it has
    gone: a browser reconnects and re-registers, we never dial it)."""

    def __init__(self, on_message: OnMessage, *, secure: bool,
                 max_message_bytes: int = 65536) -> None:
        self.on_message = on_message
        self.transport = "wss" if secure else "ws"
        self.max_message_bytes = max_message_bytes
        self._conns: dict[Peer, web.WebSocketResponse] = {}
        self.dropped = 0  # messages for a connection that had gone
        self.refused = 0  # connections closed for bad input or refused at the upgrade
        self._warn = RateLimitedWarning(log)
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _refuse(self, peer: str, why: str) -> None:
        self.refused += 1
        self._warn(time.monotonic(), "SIP over WebSocket: %s (from %s)", why, peer)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                   .split(",")]
        if SUBPROTOCOL not in offered:
            self._refuse(str(request.remote), "no 'sip' subprotocol offered")
            return web.json_response(
                {"error": "SIP over WebSocket needs the subprotocol 'sip' (RFC 7118)"},
                status=400)
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), heartbeat=HEARTBEAT,
                                   max_msg_size=self.max_message_bytes)
        await ws.prepare(request)
        peername = request.transport.get_extra_info("peername") if request.transport else None
        host, port = (str(peername[0]), int(peername[1])) if peername else ("0.0.0.0", 0)
        peer = Peer(self.transport, host, port)
        self._conns[peer] = ws
        log.debug("SIP over WebSocket: %s:%d connected", host, port)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data = msg.data.encode("utf-8")
                elif msg.type == WSMsgType.BINARY:
                    data = bytes(msg.data)
                elif msg.type == WSMsgType.ERROR:  # e.g. a frame over max_msg_size: 1009
                    exc = ws.exception()  # its code is the one sent (close_code says 1006)
                    self._refuse(f"{host}:{port}", f"closed "
                                 f"({getattr(exc, 'code', ws.close_code)}): {exc}")
                    break
                else:
                    continue
                try:
                    parse_message(data)
                except SipParseError as e:
                    self._refuse(f"{host}:{port}", f"closed: not a SIP message ({e.reason})")
                    await ws.close(code=WSCloseCode.UNSUPPORTED_DATA,
                                   message=b"not a SIP message")
                    break
                try:
                    self.on_message(data, peer)
                except Exception:  # one message never stops the endpoint
                    log.exception("error handling a SIP message over WebSocket from %s", peer)
        finally:
            if self._conns.get(peer) is ws:
                del self._conns[peer]
        return ws

    def send(self, peer: Peer, data: bytes) -> None:
        ws = self._conns.get(peer)
        if ws is None or ws.closed:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1st, 2nd, 4th, ...
                log.warning("no WebSocket connection to %s:%s: SIP message dropped (%d so "
                            "far)", peer.host, peer.port, self.dropped)
            return
        # send_str writes the frame at once; its task only waits when the peer stopped
        # reading (aiohttp's write-buffer limit), which the heartbeat and limits cover
        task = asyncio.get_running_loop().create_task(
            ws.send_str(data.decode("utf-8", errors="replace")))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("SIP over WebSocket send failed: %s", task.exception())

    async def close(self) -> None:
        for ws in list(self._conns.values()):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        self._conns.clear()
