"""The SIP transaction layer (RFC 3261 section 17, amended by RFC 6026), sans-IO.

This module owns request/response matching, retransmission and the transaction
timers for both server and client transactions.  It does no I/O and never reads the
clock: the caller feeds it messages with :meth:`TransactionLayer.receive` and the
current time (``now``, seconds, any monotonic origin), and drains what the layer
wants to do next:

* :meth:`TransactionLayer.datagrams_to_send` - ``(peer, bytes)`` pairs to write,
* :meth:`TransactionLayer.next_event` - events for the transaction user (TU),
* :meth:`TransactionLayer.get_timer` / :meth:`TransactionLayer.handle_timer` - the
  earliest absolute deadline, and firing every timer due.

Timers live in one heap of ``(deadline, seq, tx, kind)`` entries with lazy
invalidation: each transaction remembers the sequence number of its live
retransmission timer and of its live timeout timer, and a heap entry whose number no
longer matches is skipped when it reaches the top.  Terminated transactions are
dropped from the lookup tables, so ``len(layer)`` returns to 0 once traffic settles.

Beyond the RFC state machines:

* A new INVITE is answered with ``100 Trying`` at once.
* An INVITE server transaction retransmits its 2xx itself (RFC 3261 13.3.1.4 puts
  that in the UAS core; doing it here keeps the core simple) until the ACK for it
  arrives (matched by Call-ID, CSeq number and the To-tag of the 2xx) or 64*T1
  passes.  After the ACK, the transaction is reported "terminated" but its key is
  remembered until 64*T1 after the 2xx so that a late INVITE retransmission is
  absorbed instead of starting a new call (the purpose of RFC 6026's Timer L).
* When the TU sends a CANCEL for an INVITE client transaction that is still waiting
  for a final response, that INVITE transaction gets a 64*T1 guard timer
  (RFC 3261 9.1): if no final response arrives, it times out instead of leaking.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Any

from confroom.sip.message import Headers, Request, Response, make_response
from confroom.sip.peer import Peer

__all__ = [
    "MAGIC_COOKIE",
    "AckReceived",
    "ClientTransaction",
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "ServerTransaction",
    "StrayResponse",
    "TransactionLayer",
    "TransactionTimeout",
]

MAGIC_COOKIE = "z9hG4bK"

# Transaction states (RFC 3261 17 + RFC 6026 "accepted").
CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
ACCEPTED = "accepted"
COMPLETED = "completed"
CONFIRMED = "confirmed"
TERMINATED = "terminated"

# Heap entry kinds.
_RETRANSMIT = 0
_TIMEOUT = 1

# Timer D: "at least 32 seconds" for unreliable transports (RFC 3261 17.1.1.2).
_TIMER_D = 32.0


# --------------------------------------------------------------------------- transactions


class ServerTransaction:
    """A server transaction: one request received and the responses we send to it."""

    __slots__ = (
        "_ack_key",
        "_interval",
        "_invite",
        "_last_bytes",
        "_retx_seq",
        "_timeout_seq",
        "cancelled",
        "key",
        "last_response",
        "method",
        "peer",
        "request",
        "state",
    )

    def __init__(self, request: Request, peer: Peer, key: tuple[Any, ...]) -> None:
        self.request: Request = request
        self.peer: Peer = peer
        self.method: str = request.method
        self.key: tuple[Any, ...] = key
        self._invite: bool = request.method == "INVITE"
        self.state: str = PROCEEDING if self._invite else TRYING
        self.last_response: Response | None = None
        self.cancelled: bool = False
        self._last_bytes: bytes | None = None
        self._interval: float = 0.0
        self._retx_seq: int = 0
        self._timeout_seq: int = 0
        self._ack_key: tuple[str, int, str | None] | None = None

    def __repr__(self) -> str:
        return (
            f"<ServerTransaction {self.method} {self.state} "
            f"{self.peer.transport}:{self.peer.host}:{self.peer.port} key={self.key!r}>"
        )


class ClientTransaction:
    """A client transaction: one request we sent and the responses to it."""

    __slots__ = (
        "_ack_bytes",
        "_bytes",
        "_cancel_guard",
        "_interval",
        "_invite",
        "_retx_seq",
        "_timeout_seq",
        "final_response",
        "key",
        "method",
        "peer",
        "request",
        "state",
    )

    def __init__(self, request: Request, peer: Peer, key: tuple[Any, ...]) -> None:
        self.request: Request = request
        self.peer: Peer = peer
        self.method: str = request.method
        self.key: tuple[Any, ...] = key
        self._invite: bool = request.method == "INVITE"
        self.state: str = CALLING if self._invite else TRYING
        self.final_response: Response | None = None
        self._bytes: bytes = b""
        self._ack_bytes: bytes | None = None
        self._cancel_guard: bool = False  # a CANCEL was sent: the timeout is the guard
        self._interval: float = 0.0
        self._retx_seq: int = 0
        self._timeout_seq: int = 0

    def __repr__(self) -> str:
        return (
            f"<ClientTransaction {self.method} {self.state} "
            f"{self.peer.transport}:{self.peer.host}:{self.peer.port} key={self.key!r}>"
        )


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request (any method but ACK) that the TU must answer with ``respond()``.

    For a CANCEL, ``cancels`` is the INVITE server transaction it matches (same key
    apart from the method), or None.  That transaction's ``cancelled`` is set only if
    it had no final response yet (state "proceeding"); otherwise the CANCEL has no
    effect on it and ``respond()`` with a 487 is ignored.
    """

    tx: ServerTransaction
    cancels: ServerTransaction | None = None


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx; ``invite_tx`` is the accepted INVITE transaction it matched."""

    request: Request
    peer: Peer
    invite_tx: ServerTransaction | None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response to a request we sent (provisional, final, or a 2xx-to-INVITE repeat)."""

    tx: ClientTransaction
    response: Response


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Client: Timer B/F fired.  Server INVITE: the final response was never ACKed."""

    tx: ServerTransaction | ClientTransaction


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response that matched no client transaction."""

    response: Response
    peer: Peer


Event = RequestReceived | AckReceived | ResponseReceived | TransactionTimeout | StrayResponse

_HeapEntry = tuple[float, int, "ServerTransaction | ClientTransaction", int]


# --------------------------------------------------------------------------- helpers


def _server_key(request: Request, method: str) -> tuple[Any, ...]:
    """The RFC 3261 17.2.3 matching key of a received request, for ``method``."""
    via = request.top_via
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    # RFC 2543 peer: no usable branch.  Match on the dialog-ish identifiers plus the
    # whole top Via (as its parsed fields).
    return (
        "rfc2543",
        request.call_id,
        request.cseq[0],
        request.from_tag,
        (via.transport.upper(), via.host.lower(), via.port, branch),
        method,
    )


def _build_ack(request: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response (RFC 3261 17.1.1.3)."""
    src = request.headers
    headers = Headers()
    top_via = src.get("Via")  # the first Via element only
    if top_via is not None:
        headers.add("Via", top_via)
    headers.add("Max-Forwards", "70")
    for route in src.get_all("Route"):
        headers.add("Route", route)
    from_value = src.get("From")
    if from_value is not None:
        headers.add("From", from_value)
    to_value = response.headers.get("To")
    if to_value is None:
        to_value = src.get("To")
    if to_value is not None:
        headers.add("To", to_value)
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", f"{request.cseq[0]} ACK")
    return Request("ACK", request.uri, headers, b"")


# --------------------------------------------------------------------------- the layer


class TransactionLayer:
    """All server and client transactions of one SIP endpoint (sans-IO)."""

    def __init__(self, *, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0) -> None:
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self._timeout_64 = 64.0 * t1
        self._server: dict[tuple[Any, ...], ServerTransaction] = {}
        self._client: dict[tuple[Any, ...], ClientTransaction] = {}
        # (Call-ID, CSeq number, To-tag of the 2xx) -> INVITE server tx in "accepted".
        self._accepted: dict[tuple[str, int, str | None], ServerTransaction] = {}
        # Server txs kept in ``_server`` after termination only to absorb retransmissions.
        self._tombstones = 0
        self._out: list[tuple[Peer, bytes]] = []
        self._events: deque[Event] = deque()
        self._heap: list[_HeapEntry] = []
        self._seq = 0
        self._live_timers = 0

    # ----------------------------------------------------------------- public API

    def __len__(self) -> int:
        return len(self._server) - self._tombstones + len(self._client)

    def datagrams_to_send(self) -> list[tuple[Peer, bytes]]:
        """Drain the queue of messages to write, in order."""
        out = self._out
        self._out = []
        return out

    def next_event(self) -> Event | None:
        """The next event for the TU (FIFO), or None."""
        if self._events:
            return self._events.popleft()
        return None

    def get_timer(self) -> float | None:
        """The earliest absolute deadline of a live timer, or None."""
        heap = self._heap
        while heap:
            deadline, seq, tx, kind = heap[0]
            if (tx._retx_seq if kind == _RETRANSMIT else tx._timeout_seq) == seq:
                return deadline
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at or before ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, seq, tx, kind = heapq.heappop(heap)
            if kind == _RETRANSMIT:
                if tx._retx_seq != seq:
                    continue
                tx._retx_seq = 0
                self._live_timers -= 1
                if isinstance(tx, ServerTransaction):
                    self._server_retransmit(tx, deadline, now)
                else:
                    self._client_retransmit(tx, deadline, now)
            else:
                if tx._timeout_seq != seq:
                    continue
                tx._timeout_seq = 0
                self._live_timers -= 1
                if isinstance(tx, ServerTransaction):
                    self._server_timeout(tx)
                else:
                    self._client_timeout(tx)

    def receive(self, msg: Request | Response, peer: Peer, now: float) -> None:
        """Feed one parsed message received from ``peer``."""
        if isinstance(msg, Request):
            if msg.method == "ACK":
                self._receive_ack(msg, peer, now)
            else:
                self._receive_request(msg, peer, now)
        else:
            self._receive_response(msg, peer, now)

    def respond(self, tx: ServerTransaction, response: Response, now: float) -> None:
        """Send ``response`` on server transaction ``tx`` and advance its state."""
        state = tx.state
        if state in (TERMINATED, CONFIRMED, COMPLETED):
            return
        status = response.status
        if state == ACCEPTED:
            # RFC 6026: further 2xx responses from the TU are sent; nothing else is.
            if 200 <= status < 300:
                self._set_last_response(tx, response)
                self._out.append((tx.peer, tx._last_bytes or b""))
                self._register_accepted(tx, response)
            return
        self._set_last_response(tx, response)
        self._out.append((tx.peer, tx._last_bytes or b""))
        if status < 200:
            if not tx._invite:
                tx.state = PROCEEDING
            return
        reliable = tx.peer.reliable
        if tx._invite:
            if status < 300:
                tx.state = ACCEPTED
                self._register_accepted(tx, response)
            else:
                tx.state = COMPLETED
            # 2xx: retransmit until ACK (13.3.1.4), Timer L (RFC 6026).
            # 3xx-6xx: Timer G, Timer H.
            if not reliable:
                tx._interval = self.t1
                self._set_retransmit(tx, now + self.t1)
            self._set_timeout(tx, now + self._timeout_64)
        else:
            tx.state = COMPLETED
            if reliable:
                self._terminate_server(tx)
            else:
                self._set_timeout(tx, now + self._timeout_64)  # Timer J

    def request(self, request: Request, peer: Peer, now: float) -> ClientTransaction:
        """Send a new request as a client transaction.

        The request must already carry its top Via with a fresh branch.  An ACK is not
        a transaction: it is sent once and an already-terminated ClientTransaction is
        returned for it.
        """
        method = request.method
        branch = request.top_via.branch
        key: tuple[Any, ...] = (branch, method)
        tx = ClientTransaction(request, peer, key)
        tx._bytes = request.to_bytes()
        self._out.append((peer, tx._bytes))
        if method == "ACK":
            tx.state = TERMINATED
            return tx
        old = self._client.get(key)
        if old is not None:
            # The TU reused a branch: the old transaction cannot be matched any more.
            self._terminate_client(old)
        self._client[key] = tx
        if not peer.reliable:
            tx._interval = self.t1
            self._set_retransmit(tx, now + self.t1)  # Timer A / Timer E
        self._set_timeout(tx, now + self._timeout_64)  # Timer B / Timer F
        if method == "CANCEL":
            invite = self._client.get((branch, "INVITE"))
            if (
                invite is not None
                and invite.state in (CALLING, PROCEEDING)
                and not invite._cancel_guard
            ):
                # RFC 3261 9.1: give up on the INVITE 64*T1 after the CANCEL.  In
                # calling, Timer B (earlier) is kept and survives a later provisional.
                invite._cancel_guard = True
                if invite.state == PROCEEDING:
                    self._set_timeout(invite, now + self._timeout_64)
        return tx

    def send(self, msg: Request | Response, peer: Peer) -> None:
        """Queue a message outside any transaction (e.g. a stateless response)."""
        self._out.append((peer, msg.to_bytes()))

    # ----------------------------------------------------------------- server side

    def _receive_request(self, request: Request, peer: Peer, now: float) -> None:
        method = request.method
        key = _server_key(request, method)
        tx = self._server.get(key)
        if tx is not None:
            # A retransmission: re-send the last response, if any (tombstones absorb).
            if tx.state != TERMINATED and tx.state != CONFIRMED:
                data = tx._last_bytes
                if data is not None:
                    self._out.append((tx.peer, data))
            return
        tx = ServerTransaction(request, peer, key)
        self._server[key] = tx
        if tx._invite:
            self._set_last_response(tx, make_response(request, 100))
            self._out.append((peer, tx._last_bytes or b""))
            self._events.append(RequestReceived(tx))
            return
        if method == "CANCEL":
            invite_key = (*key[:-1], "INVITE")
            invite = self._server.get(invite_key)
            if invite is not None and invite.state == PROCEEDING:
                invite.cancelled = True
            self._events.append(RequestReceived(tx, invite))
            return
        self._events.append(RequestReceived(tx))

    def _receive_ack(self, ack: Request, peer: Peer, now: float) -> None:
        tx = self._server.get(_server_key(ack, "INVITE"))
        if tx is not None:
            state = tx.state
            if state == COMPLETED:
                # ACK for our non-2xx final: absorb, stop Timer G and H, start Timer I.
                tx.state = CONFIRMED
                self._cancel_retransmit(tx)
                if tx.peer.reliable:
                    self._terminate_server(tx)
                else:
                    self._set_timeout(tx, now + self.t4)
                return
            if state == ACCEPTED:
                # Same key as the INVITE: an RFC 2543 peer (or a branch-reusing one)
                # acknowledging our 2xx.
                self._ack_accepted(tx, ack, peer)
                return
            return  # retransmitted ACK in confirmed / tombstone / bogus: absorb
        call_id = ack.call_id
        cseq_num = ack.cseq[0]
        to_tag = ack.to_tag
        tx = self._accepted.get((call_id, cseq_num, to_tag))
        if tx is not None and tx.state == ACCEPTED:
            self._ack_accepted(tx, ack, peer)
            return
        self._events.append(AckReceived(ack, peer, None))

    def _ack_accepted(self, tx: ServerTransaction, ack: Request, peer: Peer) -> None:
        """The ACK for the 2xx of accepted INVITE ``tx`` arrived."""
        self._events.append(AckReceived(ack, peer, tx))
        self._cancel_retransmit(tx)
        if tx._ack_key is not None:
            if self._accepted.get(tx._ack_key) is tx:
                del self._accepted[tx._ack_key]
            tx._ack_key = None
        # Terminated for the TU, but keep the key until Timer L fires so that a late
        # INVITE retransmission is absorbed rather than seen as a new call.
        tx.state = TERMINATED
        if tx._timeout_seq:
            self._tombstones += 1
        else:
            self._drop_server(tx)

    def _register_accepted(self, tx: ServerTransaction, response: Response) -> None:
        req = tx.request
        ack_key = (req.call_id, req.cseq[0], response.to_tag)
        old = tx._ack_key
        if old is not None and old != ack_key and self._accepted.get(old) is tx:
            # A 2xx with another To-tag replaces the previous one.
            del self._accepted[old]
        tx._ack_key = ack_key
        self._accepted[ack_key] = tx

    def _set_last_response(self, tx: ServerTransaction, response: Response) -> None:
        tx.last_response = response
        tx._last_bytes = response.to_bytes()

    def _server_retransmit(self, tx: ServerTransaction, deadline: float, now: float) -> None:
        if tx.state != ACCEPTED and tx.state != COMPLETED:
            return
        data = tx._last_bytes
        if data is not None:
            self._out.append((tx.peer, data))
        interval = min(tx._interval * 2.0, self.t2)
        tx._interval = interval
        self._set_retransmit(tx, self._next_deadline(deadline, interval, now))

    def _server_timeout(self, tx: ServerTransaction) -> None:
        state = tx.state
        if state == TERMINATED:
            # Tombstone of an ACKed 2xx: Timer L ran out, forget the key.
            self._tombstones -= 1
            self._drop_server(tx)
            return
        if tx._invite and state in (ACCEPTED, COMPLETED):
            # Timer L / Timer H: the final response was never acknowledged.
            self._terminate_server(tx)
            self._events.append(TransactionTimeout(tx))
            return
        # Timer I (confirmed) or Timer J (non-INVITE completed).
        self._terminate_server(tx)

    def _terminate_server(self, tx: ServerTransaction) -> None:
        if tx.state == TERMINATED:
            return
        tx.state = TERMINATED
        self._cancel_retransmit(tx)
        self._cancel_timeout(tx)
        if tx._ack_key is not None:
            if self._accepted.get(tx._ack_key) is tx:
                del self._accepted[tx._ack_key]
            tx._ack_key = None
        self._drop_server(tx)

    def _drop_server(self, tx: ServerTransaction) -> None:
        if self._server.get(tx.key) is tx:
            del self._server[tx.key]

    # ----------------------------------------------------------------- client side

    def _receive_response(self, response: Response, peer: Peer, now: float) -> None:
        branch = response.top_via.branch
        tx = self._client.get((branch, response.cseq[1]))
        if tx is None:
            self._events.append(StrayResponse(response, peer))
            return
        status = response.status
        state = tx.state
        if tx._invite:
            if state in (CALLING, PROCEEDING):
                if status < 200:
                    if state == CALLING:
                        tx.state = PROCEEDING
                        self._cancel_retransmit(tx)  # Timer A
                        if not tx._cancel_guard:
                            self._cancel_timeout(tx)  # Timer B
                    self._events.append(ResponseReceived(tx, response))
                    return
                tx.final_response = response
                self._cancel_retransmit(tx)
                self._cancel_timeout(tx)
                self._events.append(ResponseReceived(tx, response))
                if status < 300:
                    tx.state = ACCEPTED
                    self._set_timeout(tx, now + self._timeout_64)  # Timer M
                else:
                    tx.state = COMPLETED
                    tx._ack_bytes = _build_ack(tx.request, response).to_bytes()
                    self._out.append((tx.peer, tx._ack_bytes))
                    if tx.peer.reliable:
                        self._terminate_client(tx)
                    else:
                        self._set_timeout(tx, now + _TIMER_D)
                return
            if state == ACCEPTED:
                if 200 <= status < 300:
                    self._events.append(ResponseReceived(tx, response))
                return
            if state == COMPLETED:
                if status >= 300 and tx._ack_bytes is not None:
                    self._out.append((tx.peer, tx._ack_bytes))
                return
            return
        # Non-INVITE.
        if state in (TRYING, PROCEEDING):
            if status < 200:
                tx.state = PROCEEDING
                self._events.append(ResponseReceived(tx, response))
                return
            tx.final_response = response
            tx.state = COMPLETED
            self._cancel_retransmit(tx)
            self._cancel_timeout(tx)
            self._events.append(ResponseReceived(tx, response))
            if tx.peer.reliable:
                self._terminate_client(tx)
            else:
                self._set_timeout(tx, now + self.t4)  # Timer K
        # completed: retransmitted finals are absorbed.

    def _client_retransmit(self, tx: ClientTransaction, deadline: float, now: float) -> None:
        state = tx.state
        if tx._invite:
            if state != CALLING:
                return
            interval = tx._interval * 2.0  # Timer A doubles without a cap
        elif state == TRYING:
            interval = min(tx._interval * 2.0, self.t2)
        elif state == PROCEEDING:
            interval = self.t2
        else:
            return
        self._out.append((tx.peer, tx._bytes))
        tx._interval = interval
        self._set_retransmit(tx, self._next_deadline(deadline, interval, now))

    def _client_timeout(self, tx: ClientTransaction) -> None:
        state = tx.state
        if state in (CALLING, TRYING, PROCEEDING):
            # Timer B / Timer F / the CANCEL guard: no final response.
            self._terminate_client(tx)
            self._events.append(TransactionTimeout(tx))
            return
        # Timer M (accepted), Timer D (completed INVITE), Timer K (completed non-INVITE).
        self._terminate_client(tx)

    def _terminate_client(self, tx: ClientTransaction) -> None:
        if tx.state == TERMINATED:
            return
        tx.state = TERMINATED
        self._cancel_retransmit(tx)
        self._cancel_timeout(tx)
        if self._client.get(tx.key) is tx:
            del self._client[tx.key]

    # ----------------------------------------------------------------- timers

    @staticmethod
    def _next_deadline(deadline: float, interval: float, now: float) -> float:
        """Keep the schedule exact, but do not burst to catch up after a late call."""
        nxt = deadline + interval
        if nxt <= now:
            nxt = now + interval
        return nxt

    def _push(self, deadline: float, tx: ServerTransaction | ClientTransaction, kind: int) -> int:
        self._seq += 1
        seq = self._seq
        heapq.heappush(self._heap, (deadline, seq, tx, kind))
        self._live_timers += 1
        heap_len = len(self._heap)
        if heap_len > 4096 and heap_len > 4 * self._live_timers:
            self._compact()
        return seq

    def _set_retransmit(self, tx: ServerTransaction | ClientTransaction, deadline: float) -> None:
        self._cancel_retransmit(tx)
        tx._retx_seq = self._push(deadline, tx, _RETRANSMIT)

    def _set_timeout(self, tx: ServerTransaction | ClientTransaction, deadline: float) -> None:
        self._cancel_timeout(tx)
        tx._timeout_seq = self._push(deadline, tx, _TIMEOUT)

    def _cancel_retransmit(self, tx: ServerTransaction | ClientTransaction) -> None:
        if tx._retx_seq:
            tx._retx_seq = 0
            self._live_timers -= 1

    def _cancel_timeout(self, tx: ServerTransaction | ClientTransaction) -> None:
        if tx._timeout_seq:
            tx._timeout_seq = 0
            self._live_timers -= 1

    def _compact(self) -> None:
        """Drop invalidated heap entries (they otherwise linger until their deadline)."""
        self._heap[:] = [
            entry
            for entry in self._heap
            if (entry[2]._retx_seq if entry[3] == _RETRANSMIT else entry[2]._timeout_seq)
            == entry[1]
        ]
        heapq.heapify(self._heap)
