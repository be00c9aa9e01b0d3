"""asyncio adapters for SIP over UDP, TCP and TLS: bytes in, bytes out, no SIP logic.

Every received message is handed to one callback as `(raw bytes, Peer)`. TCP streams are
framed with `StreamFramer` (Content-Length); a stream that cannot be framed is closed.
Responses and requests to a TCP peer reuse its connection, or open a new one to it.
SIP over TLS (RFC 3261 section 26) is the same connection class on its own port with the
`[tls]` server context (peers of transport "tls"); we never dial out over TLS (a phone has
no certificate to check and cannot be reached behind NAT), so a message for a TLS peer whose
connection has gone is dropped and logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import cast

from confroom.sip.message import SipParseError, StreamFramer
from confroom.sip.peer import Peer

log = logging.getLogger("confroom.sip.transport")

OnMessage = Callable[[bytes, Peer], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            self.on_message(data, Peer("udp", str(addr[0]), int(addr[1])))
        except Exception:  # the server must never stop serving because of one message
            log.exception("error handling a UDP message from %s", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    kind = "tcp"  # the Peer transport of its messages

    def __init__(self, owner: SipTransports) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.kind, str(host), int(port))
        self.owner._tcp[self.peer] = self

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        try:
            messages = self.framer.feed(data)
        except SipParseError as e:
            log.warning("closing %s connection from %s:%s: %s",
                        self.kind.upper(), self.peer.host, self.peer.port, e.reason)
            self.transport.close()
            return
        for raw in messages:
            try:
                self.owner.on_message(raw, self.peer)
            except Exception:
                log.exception("error handling a %s message from %s", self.kind.upper(),
                              self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.owner._tcp.get(self.peer) is self:
            del self.owner._tcp[self.peer]

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class _TlsConnection(_TcpConnection):
    """A SIP over TLS connection: TCP framing over the TLS transport asyncio gives us."""

    kind = "tls"


_TLS_HANDSHAKE_TIMEOUT = 10.0


class SipTransports:
    """The listening sockets of one SIP endpoint (UDP and/or TCP on the same port, TLS on
    its own port)."""

    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self._udp: _Udp | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp: dict[Peer, _TcpConnection] = {}
        self._pending: dict[Peer, list[bytes]] = {}
        self._tls_server: asyncio.Server | None = None
        self.port = 0
        self.tls_port = 0  # 0 = no TLS listener
        self._tls_drops = 0

    @property
    def tcp_connections(self) -> int:
        """TCP (and TLS) connections open now (accepted and dialled)."""
        return len(self._tcp)

    async def start(
        self, host: str, port: int, transports: tuple[str, ...], tls_port: int = 0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        if "udp" in transports:
            _, proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self.on_message), local_addr=(host, port)
            )
            self._udp = proto
            assert proto.transport is not None
            port = port or int(proto.transport.get_extra_info("sockname")[1])
        if "tcp" in transports:
            self._tcp_server = await loop.create_server(
                lambda: _TcpConnection(self), host=host, port=port, reuse_address=True
            )
            port = port or int(self._tcp_server.sockets[0].getsockname()[1])
        self.port = port
        if tls_port and tls_context is not None:
            self._tls_server = await loop.create_server(
                lambda: _TlsConnection(self), host=host, port=tls_port, reuse_address=True,
                ssl=tls_context, ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT,
            )
            self.tls_port = int(self._tls_server.sockets[0].getsockname()[1])

    def send(self, peer: Peer, data: bytes) -> None:
        if peer.transport == "udp":
            if self._udp is not None and self._udp.transport is not None:
                self._udp.transport.sendto(data, (peer.host, peer.port))
            return
        conn = self._tcp.get(peer)
        if conn is not None:
            conn.write(data)
            return
        if peer.transport == "tls":
            self._tls_drops += 1
            if self._tls_drops & (self._tls_drops - 1) == 0:  # 1st, 2nd, 4th, 8th, ...
                log.warning("no TLS connection to %s:%s: message dropped (%d so far; we do "
                            "not dial out over TLS)", peer.host, peer.port, self._tls_drops)
            return
        queue = self._pending.get(peer)
        if queue is not None:
            queue.append(data)
            return
        self._pending[peer] = [data]
        asyncio.get_running_loop().create_task(self._connect(peer))

    async def _connect(self, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _TcpConnection(self), peer.host, peer.port), 5.0
            )
        except (OSError, TimeoutError) as e:
            log.warning("cannot connect to %s:%s over TCP: %s", peer.host, peer.port, e)
            self._pending.pop(peer, None)
            return
        # Responses are keyed by the address we dialled, whatever the socket reports.
        self._tcp[peer] = conn
        for data in self._pending.pop(peer, []):
            conn.write(data)

    async def close(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
        if self._tls_server is not None:
            self._tls_server.close()
        for conn in list(self._tcp.values()):
            if conn.transport is not None:
                conn.transport.close()
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
        if self._tls_server is not None:
            await self._tls_server.wait_closed()
