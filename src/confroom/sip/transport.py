"""asyncio adapters for SIP over UDP, TCP and TLS: bytes in, bytes out, no SIP logic.

Every received message is handed to one callback as `(raw bytes, Peer)`. The UDP socket is
read in bounded batches (see `_Udp`) with a large receive buffer, so that a burst waits in the
kernel instead of being dropped and never holds the event loop for long. TCP streams are
framed with `StreamFramer` (Content-Length); a stream that cannot be framed is closed.
Responses and requests to a TCP peer reuse its connection, or open a new one to it.
SIP over TLS (RFC 3261 section 26) is the same connection class on its own port with the
`[tls]` server context (peers of transport "tls"); we never dial out over TLS (a phone has
no certificate to check and cannot be reached behind NAT), so a message for a TLS peer whose
connection has gone is dropped and logged. With `--workers`, a message for a stream peer
whose connection another worker holds goes through `relay` to that worker.
TCP and TLS connections are kept within caps and deadlines by one
`confroom.connlimits.ConnectionTable` (see `SipTransports`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Final, Protocol, cast

from confroom.connlimits import ConnectionTable, Limits
from confroom.sip.message import SipParseError, StreamFramer
from confroom.sip.peer import Peer

log = logging.getLogger("confroom.sip.transport")

OnMessage = Callable[[bytes, Peer], None]


class WebSocketSender(Protocol):
    def send(self, peer: Peer, data: bytes) -> None: ...

    async def close(self) -> None: ...

DEFAULT_MAX_MESSAGE_BYTES = 65536
# what SipTransports uses unless the server passes limits sized from the descriptor limit
DEFAULT_LIMITS = Limits(max_total=1000, max_per_source=100, message_timeout=10.0,
                        idle_timeout=300.0)
# pending connections the kernel queues for accept (asyncio's default of 100 makes a burst of
# connects wait for SYN retransmissions, seconds, even when most are refused at once)
LISTEN_BACKLOG = 1024

_MAX_DATAGRAM: Final = 65535


class _Udp:
    """The SIP UDP socket, read by us in bounded batches rather than by the event loop's
    per-datagram protocol callbacks: one readiness callback handles at most `batch`
    datagrams and `budget` seconds of SIP work, then returns to the loop, so the media clock
    (and everything else) gets its turn between batches however fast datagrams arrive; what
    is not read yet waits in the kernel's receive buffer (sized by `rcvbuf`)."""

    def __init__(self, on_message: OnMessage, sock: socket.socket, batch: int,
                 budget: float) -> None:
        self.on_message = on_message
        self.sock = sock
        self.batch = batch
        self.budget = budget
        self.received = 0
        self.send_drops = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        deadline = time.perf_counter() + self.budget
        on_message = self.on_message
        for i in range(self.batch):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP port unreachable reported on the socket
                log.debug("UDP receive error: %s", e)
                continue
            self.received += 1
            try:
                on_message(data, Peer("udp", str(addr[0]), int(addr[1])))
            except Exception:  # the server must never stop serving because of one message
                log.exception("error handling a UDP message from %s", addr)
            if i & 7 == 7 and time.perf_counter() > deadline:
                return

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.send_drops += 1  # full send buffer: UDP retransmissions cover it
        except OSError as e:
            log.debug("UDP send to %s failed: %s", addr, e)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


def _udp_socket(host: str, port: int, rcvbuf: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reuse_port:  # --workers: the kernel spreads datagrams by source over the workers
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf > 0:
            set_rcvbuf(sock, rcvbuf)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Ask for a `size`-byte receive buffer: SO_RCVBUFFORCE first (allowed to root, it
    ignores net.core.rmem_max), else SO_RCVBUF (capped by rmem_max). Returns the size the
    kernel reports (twice what it grants for bookkeeping, as Linux does)."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    if granted < size:
        log.warning("SIP UDP receive buffer: asked for %d bytes, the kernel gives %d "
                    "(raise net.core.rmem_max or run with CAP_NET_ADMIN)", size, granted // 2)
    return granted


class _TcpConnection(asyncio.Protocol):
    """One SIP stream connection, accepted (`dialled` None) or opened by us to `dialled`.

    Its `key` in `SipTransports` and in the limits table is the peer's address for an
    accepted connection and the address we dialled otherwise."""

    kind = "tcp"  # the Peer transport of its messages

    def __init__(self, owner: SipTransports, dialled: Peer | None = None) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.framer.max_header_bytes = owner.max_message_bytes
        self.framer.max_body_bytes = owner.max_message_bytes
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.key: Peer | None = dialled

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        peer = Peer(self.kind, str(host), int(port))
        inbound = self.key is None
        key = peer if self.key is None else self.key
        refused = self.owner.limits.opened(key, peer.host, self.owner.now(), inbound=inbound)
        if refused is not None:  # counted for the summary line, not logged one by one
            self.transport.abort()
            return
        for victim in self.owner.limits.take_evicted():  # made room at the total cap
            conn = self.owner._tcp.pop(victim, None)
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
        self.peer = peer
        self.key = key
        if inbound:
            self.owner._tcp[key] = self

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.key is None or self.transport is None:
            return
        try:
            messages = self.framer.feed(data)
        except SipParseError as e:
            log.warning("closing %s connection from %s:%s: %s", self.kind.upper(),
                        self.peer.host, self.peer.port, e.reason)
            self.transport.abort()
            return
        self.owner.limits.received(self.key, self.owner.now(), completed=len(messages),
                                   partial=self.framer.buffered > 0)
        for raw in messages:
            try:
                self.owner.on_message(raw, self.peer)
            except Exception:
                log.exception("error handling a %s message from %s", self.kind.upper(), self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        key = self.key
        if self.peer is None or key is None:
            return  # refused at once: never counted
        current = self.owner._tcp.get(key)
        if current is self:
            del self.owner._tcp[key]
        if current is self or current is None:
            self.owner.limits.closed(key)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.key is None:
            return
        transport.write(data)
        self.owner.limits.sent(self.key, self.owner.now())
        queued = transport.get_write_buffer_size()
        if queued > self.owner.max_message_bytes * 4:
            log.warning("closing %s connection to %s:%s: it does not read what we send "
                        "(%d bytes queued)", self.kind.upper(), self.key.host, self.key.port,
                        queued)
            transport.abort()


class _TlsConnection(_TcpConnection):
    """A SIP over TLS connection: TCP framing over the TLS transport asyncio gives us."""

    kind = "tls"


_TLS_HANDSHAKE_TIMEOUT = 10.0


class SipTransports:
    """The listening sockets of one SIP endpoint (UDP and/or TCP on the same port, TLS on
    its own port).

    Stream connections (TCP and TLS together) are kept within `limits` (a `ConnectionTable`:
    caps in total and per source address, message and idle deadlines) by one periodic sweep on
    the loop; a stream message may be at most `max_message_bytes` of headers plus as much body,
    and a connection that lets more than four times that pile up unread on our side is closed.
    `hold(peer)` / `release(peer)` mark a stream connection as used by a call (no idle close)."""

    def __init__(self, on_message: OnMessage, *, limits: Limits | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 udp_rcvbuf: int = 4 << 20, udp_batch: int = 64,
                 udp_budget: float = 0.004) -> None:
        self.on_message = on_message
        self.udp_rcvbuf = udp_rcvbuf
        self.udp_batch = udp_batch
        self.udp_budget = udp_budget
        self._udp: _Udp | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp: dict[Peer, _TcpConnection] = {}
        self._pending: dict[Peer, list[bytes]] = {}
        self._tls_server: asyncio.Server | None = None
        self.port = 0
        self.tls_port = 0  # 0 = no TLS listener
        self._tls_drops = 0
        self.limits: ConnectionTable[Peer] = ConnectionTable(
            limits or DEFAULT_LIMITS, "sip tcp")
        self.max_message_bytes = max_message_bytes
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # SIP over WebSocket (`confroom.sip.websocket`), served by the HTTP server when set
        self.websocket: WebSocketSender | None = None
        # --workers: sends `data` to a stream peer whose connection another worker holds;
        # False when the peer is not known as such (see `confroom.cluster.forward`)
        self.relay: Callable[[Peer, bytes], bool] | None = None

    def configure(self, limits: Limits, max_message_bytes: int) -> None:
        """Set the stream limits (before `start`)."""
        self.limits = ConnectionTable(limits, "sip tcp")
        self.max_message_bytes = max_message_bytes

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def hold(self, peer: Peer) -> None:
        """A call uses the stream connection `peer` (its in-dialog requests and our BYE travel
        on it): it is not closed for idleness until every `hold` is `release`d."""
        if peer.reliable and not peer.websocket:
            self.limits.hold(peer)

    def release(self, peer: Peer) -> None:
        if peer.reliable and not peer.websocket:
            self.limits.release(peer)

    @property
    def tcp_connections(self) -> int:
        """TCP (and TLS) connections open now (accepted and dialled)."""
        return len(self._tcp)

    async def start(
        self, host: str, port: int, transports: tuple[str, ...], tls_port: int = 0,
        tls_context: ssl.SSLContext | None = None, reuse_port: bool = False,
    ) -> None:
        loop = self._loop = asyncio.get_running_loop()
        if "udp" in transports:
            sock = _udp_socket(host, port, self.udp_rcvbuf, reuse_port)
            self._udp = _Udp(self.on_message, sock, self.udp_batch, self.udp_budget)
            port = port or int(sock.getsockname()[1])
        if "tcp" in transports:
            self._tcp_server = await loop.create_server(
                lambda: _TcpConnection(self), host=host, port=port, reuse_address=True,
                backlog=LISTEN_BACKLOG, reuse_port=reuse_port or None,
            )
            port = port or int(self._tcp_server.sockets[0].getsockname()[1])
        self.port = port
        if tls_port and tls_context is not None:
            self._tls_server = await loop.create_server(
                lambda: _TlsConnection(self), host=host, port=tls_port, reuse_address=True,
                ssl=tls_context, ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT,
                backlog=LISTEN_BACKLOG, reuse_port=reuse_port or None,
            )
            self.tls_port = int(self._tls_server.sockets[0].getsockname()[1])
        if self._tcp_server is not None or self._tls_server is not None:
            self._sweeper = loop.call_later(self.limits.limits.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        """Close the stream connections past a deadline; log the summary line when due."""
        assert self._loop is not None
        now = self._loop.time()
        for key, why in self.limits.sweep(now):
            conn = self._tcp.pop(key, None)
            if conn is not None and conn.transport is not None:
                log.debug("closing %s connection %s:%s (%s)", key.transport.upper(), key.host,
                          key.port, why)
                conn.transport.abort()
        line = self.limits.summary(now)
        if line is not None:
            log.warning("%s", line)
        self._sweeper = self._loop.call_later(self.limits.limits.sweep_interval, self._sweep)

    def send(self, peer: Peer, data: bytes) -> None:
        if (peer.reliable and self.relay is not None and peer not in self._tcp
                and self.relay(peer, data)):
            return  # another worker holds this connection (`confroom.cluster.forward`)
        self.send_here(peer, data)

    def send_relayed(self, peer: Peer, data: bytes) -> None:
        """Write what another worker sends to a stream peer on our connection to it (never
        dialling a new one, never relaying again); dropped when the connection has gone."""
        if peer.websocket or peer in self._tcp:
            self.send_here(peer, data)
        else:
            log.debug("relayed SIP message for %s:%s dropped: its connection has gone",
                      peer.host, peer.port)

    def send_here(self, peer: Peer, data: bytes) -> None:
        """Send on this process's own socket or connection (never relayed)."""
        if peer.websocket:
            if self.websocket is not None:
                self.websocket.send(peer, data)
            return
        if peer.transport == "udp":
            if self._udp is not None:
                self._udp.sendto(data, (peer.host, peer.port))
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
                loop.create_connection(lambda: _TcpConnection(self, peer), peer.host, peer.port),
                5.0,
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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._udp is not None:
            self._udp.close()
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
