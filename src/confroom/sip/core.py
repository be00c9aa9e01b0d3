"""The sans-IO SIP user agent core: dialogs and call signalling on top of the transactions.

`SipCore` is fed parsed-or-raw messages and the current time; it answers what it can on its own
(OPTIONS: 200, or 503 while draining; CANCEL, BYE, in-dialog INFO, errors such as
400/481/405/420/482/483) and reports call-level events (`IncomingCall`, `CallConfirmed`,
`CallEnded`, ...) for the layer above, which
acts through `ring`, `answer`, `reject`, `bye` and `respond_reinvite`. Like the transaction layer
it never touches a socket or a clock: the adapter drains `datagrams_to_send()`, arms
`get_timer()` and calls `handle_timer(now)`.

In-dialog requests we send (BYE) go to the address the dialog's INVITE came from (the first
Record-Route hop when that is an IP literal), which keeps calls from phones behind NAT working.

Outbound calls (UAC): `invite()` sends an INVITE as a client transaction and reports
`OutboundProgress` (1xx; a 183 may carry early-media SDP), `OutboundAnswered` (2xx: the core
ACKs it, and re-ACKs retransmitted 2xx) or `OutboundFailed` (a final error, a timeout, or 487
after `cancel()`). A 401/407 is answered once per challenge with digest credentials when the
call has them (a new INVITE, CSeq + 1). `cancel()` before any provisional response waits for
one (RFC 3261 9.1); a 200 that crosses our CANCEL is ACKed and ended with BYE at once. The
answered dialog is an ordinary `Leg` (`outbound=True`): re-INVITE and BYE from the callee, and
`bye()` from us, work as on inbound legs.

SIP over TLS: a dialog whose INVITE came over TLS gets our TLS port in Contact and Via
(`;transport=tls`, or a `sips:` Contact when the INVITE's Request-URI was `sips:`, RFC 3261
12.1.1), and its BYE goes back over the same connection. SIP over WebSocket (RFC 7118,
transports `ws`/`wss`) likewise: our HTTP port in Via and Contact (`;transport=ws`), and every
request of the dialog back on the client's connection.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from confroom.ratelog import RateLimitedWarning
from confroom.sip.digest import (
    Credentials,
    DigestError,
    authorization,
    parse_challenge,
)
from confroom.sip.message import (
    Headers,
    Request,
    Response,
    SipParseError,
    make_response,
    new_branch,
    new_tag,
    parse_message,
    parse_name_addr,
)
from confroom.sip.peer import Peer
from confroom.sip.transaction import (
    AckReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    TransactionLayer,
    TransactionTimeout,
)

log = logging.getLogger("confroom.sip")

ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
# what live call control may send inside a dialog (`SipCore.request`)
IN_DIALOG_REQUESTS: Final = frozenset({"INFO", "NOTIFY", "MESSAGE"})
KNOWN_UNSUPPORTED: Final = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "REFER", "PUBLISH", "UPDATE", "PRACK"}
)
USER_AGENT: Final = "confroom/0.1"


@dataclass(eq=False)
class Leg:
    """One inbound call's dialog (early until ACKed, then confirmed)."""

    call_id: str
    local_tag: str
    remote_tag: str
    peer: Peer  # where the INVITE came from; in-dialog requests go back there
    invite: Request
    invite_tx: ServerTransaction | None
    local_uri: str  # the To header of the INVITE, without parameters (our identity)
    remote_uri: str  # the From header of the INVITE, without parameters
    remote_target: str  # Contact URI of the caller
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int = 0
    state: str = "early"  # early | answered | confirmed | terminated
    final_status: int | None = None
    # SDP body of our 2xx (retransmitted answers of re-INVITEs reuse the tx layer)
    pending_reinvite: ServerTransaction | None = None
    # headers of a BYE asked for before the ACK arrived (sent on ACK or 2xx timeout)
    pending_bye: list[tuple[str, str]] | None = None
    # ---- outbound (UAC) legs only
    outbound: bool = False
    invite_ctx: ClientTransaction | None = None  # our INVITE's client transaction
    credentials: Credentials | None = None
    auth_tries: int = 0
    provisional: bool = False  # a 1xx arrived (CANCEL may be sent)
    cancel_requested: bool = False
    cancel_sent: bool = False
    ack: Request | None = None  # the ACK of our 2xx (re-sent for 2xx retransmissions)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)


# ---- events reported to the layer above -------------------------------------------------


@dataclass(frozen=True)
class IncomingCall:
    leg: Leg
    request: Request


@dataclass(frozen=True)
class CallCancelled:
    leg: Leg


@dataclass(frozen=True)
class CallConfirmed:
    """The ACK for our 2xx arrived (with the SDP answer when the INVITE had no offer)."""

    leg: Leg
    ack: Request


@dataclass(frozen=True)
class CallAckTimeout:
    """Our 2xx was never ACKed: the call must be ended (BYE)."""

    leg: Leg


@dataclass(frozen=True)
class CallEnded:
    """The caller sent BYE (already answered with 200)."""

    leg: Leg
    request: Request


@dataclass(frozen=True)
class ReInvite:
    """A re-INVITE in a confirmed dialog: answer it with `respond_reinvite`."""

    leg: Leg
    tx: ServerTransaction
    request: Request


@dataclass(frozen=True)
class DtmfInfo:
    leg: Leg
    digit: str


@dataclass(frozen=True)
class ByeDone:
    """Our BYE got a final response, or timed out (status None)."""

    leg: Leg
    status: int | None


@dataclass(frozen=True)
class OutboundProgress:
    """A provisional response to our INVITE (`sdp`: early media answer of a 183, or b"")."""

    leg: Leg
    status: int
    sdp: bytes


@dataclass(frozen=True)
class OutboundAnswered:
    """The callee answered (2xx, already ACKed): `sdp` is its answer."""

    leg: Leg
    response: Response
    sdp: bytes


@dataclass(frozen=True)
class OutboundFailed:
    """Our INVITE ended without a call: a final error (`status`), 487 after `cancel()`, or
    no response at all (`status` None)."""

    leg: Leg
    status: int | None
    reason: str


CoreEvent = (
    IncomingCall | CallCancelled | CallConfirmed | CallAckTimeout | CallEnded | ReInvite
    | DtmfInfo | ByeDone | OutboundProgress | OutboundAnswered | OutboundFailed
)


def _strip_params(name_addr_value: str) -> str:
    """`"Bob" <sip:b@h>;tag=x` -> `"Bob" <sip:b@h>` (keeps the display name)."""
    na = parse_name_addr(name_addr_value)
    na.params.clear()
    return str(na)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _bad_request(data: bytes, reason: str) -> bytes | None:
    """A best-effort 400 for a request we could not parse: copy the headers a response needs.

    Returns None when the input is not recognisably a request (then it is dropped).
    """
    try:
        text = data.decode("utf-8", errors="replace")
    except Exception:  # pragma: no cover - decode with replace never fails
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines or lines[0].upper().startswith("SIP/") or " " not in lines[0]:
        return None
    method = lines[0].split(" ", 1)[0].upper()
    if method == "ACK":
        return None  # never answer an ACK
    wanted = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
              "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}
    out: list[str] = []
    for line in lines[1:]:
        if not line.strip():
            break
        name, sep, value = line.partition(":")
        canon = wanted.get(name.strip().lower())
        if sep and canon:
            out.append(f"{canon}: {value.strip()}")
    if not any(h.startswith("Via:") for h in out):
        return None  # no way to route a response
    safe_reason = "".join(ch for ch in reason if ch.isprintable())[:120] or "Bad Request"
    head = "\r\n".join([f"SIP/2.0 400 {safe_reason}", *out, "Content-Length: 0", "", ""])
    return head.encode()


class SipCore:
    """Sans-IO SIP UAS: see the module docstring."""

    def __init__(
        self,
        local_host: str,
        local_port: int,
        *,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        tls_port: int = 0,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.local_host = local_host
        # the User-Agent header we send ("" = none)
        self._ua: list[tuple[str, str]] = [("User-Agent", user_agent)] if user_agent else []
        self.local_port = local_port
        self.tls_port = tls_port  # our SIP over TLS port (0: none)
        self.ws_port = 0  # the HTTP port serving SIP over WebSocket at /sip (0: none)
        self.tx = TransactionLayer(t1=t1, t2=t2, t4=t4)
        self._legs: dict[tuple[str, str, str], Leg] = {}
        self._by_invite_tx: dict[int, Leg] = {}  # id(invite server tx) -> leg
        self._bye_txs: dict[int, Leg] = {}  # id(client tx) -> leg
        self._invite_ctxs: dict[int, Leg] = {}  # id(our INVITE client tx) -> outbound leg
        self._events: deque[CoreEvent] = deque()
        self._raw_out: list[tuple[Peer, bytes]] = []
        self.stats = {"parse_errors": 0, "requests": 0, "responses": 0}
        # anybody can send garbage: one line per second at most, with the count left out
        self._malformed_warning = RateLimitedWarning(log, interval=1.0)
        # Admission of new INVITEs, asked before any dialog state exists: None admits, a
        # number refuses with 503 and that Retry-After (the transaction still answers
        # retransmissions and absorbs the ACK).
        self.gate: Callable[[Request, Peer, float], int | None] | None = None
        # Set while the node drains (SIGTERM): out-of-dialog OPTIONS get 503 with this
        # Retry-After, as an INVITE would (RFC 3261 11.2), so that a load balancer probing
        # with OPTIONS takes the node out of rotation while its calls finish.
        self.draining_retry_after: int | None = None

    # ---- inputs ---------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, peer: Peer, now: float) -> None:
        """Bytes of one SIP message (a UDP datagram or one framed TCP message)."""
        if not data.strip(b"\r\n\t "):
            return  # keep-alive
        try:
            msg = parse_message(data)
        except SipParseError as e:
            self.stats["parse_errors"] += 1
            self._malformed_warning(now, "malformed SIP from %s:%s: %s", peer.host, peer.port,
                                    e.reason)
            resp = _bad_request(data, e.reason)
            if resp is not None:
                self._raw_out.append((peer, resp))
            return
        self.receive_message(msg, peer, now)

    def receive_message(self, msg: Request | Response, peer: Peer, now: float) -> None:
        if isinstance(msg, Request):
            self.stats["requests"] += 1
            if msg.method != "ACK" and not self._check_request(msg, peer, now):
                return
        else:
            self.stats["responses"] += 1
        self.tx.receive(msg, peer, now)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        self.tx.handle_timer(now)
        self._pump(now)

    # ---- outputs --------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[Peer, bytes]]:
        out = self.tx.datagrams_to_send()
        if self._raw_out:
            out = self._raw_out + out
            self._raw_out = []
        return out

    def get_timer(self) -> float | None:
        return self.tx.get_timer()

    def next_event(self) -> CoreEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def legs(self) -> list[Leg]:
        return list(self._legs.values())

    # ---- actions of the layer above -------------------------------------------------------

    def port_for(self, peer: Peer) -> int:
        """Our port for messages to `peer` (the TLS port for TLS peers, the HTTP port for
        WebSocket peers)."""
        if peer.websocket and self.ws_port:
            return self.ws_port
        return self.tls_port if peer.transport == "tls" and self.tls_port else self.local_port

    def contact(self, peer: Peer, sips: bool = False) -> str:
        host = self.local_host if ":" not in self.local_host else f"[{self.local_host}]"
        port = self.port_for(peer)
        if peer.transport == "tls":
            if sips:
                return f"<sips:confroom@{host}:{port}>"
            return f"<sip:confroom@{host}:{port};transport=tls>"
        if peer.websocket:  # RFC 7118 section 5.2: "ws" for both ws and wss
            return f"<sip:confroom@{host}:{port};transport=ws>"
        suffix = ";transport=tcp" if peer.transport == "tcp" else ""
        return f"<sip:confroom@{host}:{port}{suffix}>"

    def _leg_contact(self, leg: Leg) -> str:
        return self.contact(leg.peer, sips=leg.invite.uri[:5].lower() == "sips:")

    def ring(self, leg: Leg, now: float, status: int = 180) -> None:
        if leg.state != "early" or leg.invite_tx is None:
            return
        resp = make_response(leg.invite, status, to_tag=leg.local_tag,
                             headers=[("Contact", self._leg_contact(leg))])
        self.tx.respond(leg.invite_tx, resp, now)
        self._pump(now)

    def answer(self, leg: Leg, sdp: bytes, now: float) -> bool:
        """Send 200 OK with `sdp`. False when the call can no longer be answered."""
        if leg.state != "early" or leg.invite_tx is None or leg.invite_tx.cancelled:
            return False
        resp = make_response(
            leg.invite, 200, to_tag=leg.local_tag,
            headers=self._common_headers(leg), body=sdp, content_type="application/sdp",
        )
        leg.state = "answered"
        leg.final_status = 200
        self.tx.respond(leg.invite_tx, resp, now)
        self._pump(now)
        return True

    def reject(
        self, leg: Leg, status: int, now: float, reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> bool:
        """Send a final error response to an unanswered INVITE."""
        if leg.state != "early" or leg.invite_tx is None:
            return False
        resp = make_response(leg.invite, status, reason, to_tag=leg.local_tag,
                             headers=headers or [])
        leg.final_status = status
        self._terminate(leg)
        self.tx.respond(leg.invite_tx, resp, now)
        self._pump(now)
        return True

    def bye(self, leg: Leg, now: float, headers: list[tuple[str, str]] | None = None) -> bool:
        """End an answered dialog with BYE. False when there is no dialog to end.

        Before the caller has ACKed our 2xx, the BYE waits for that ACK (or for the 2xx
        transaction to time out): RFC 3261 section 15 forbids sending it earlier, and a caller
        whose 200 OK was lost would otherwise get a BYE for a call it never saw answered."""
        if leg.pending_bye is not None:
            return True
        if leg.state == "answered":
            leg.pending_bye = list(headers or [])
            return True
        if leg.state != "confirmed":
            return False
        self._send_bye(leg, now, headers or [])
        return True

    def request(self, leg: Leg, now: float, method: str, headers: list[tuple[str, str]],
                body: bytes = b"") -> bool:
        """Send an in-dialog INFO, NOTIFY or MESSAGE (live call control's `sip_request`; its
        response is not reported). False when the dialog is not confirmed."""
        if method not in IN_DIALOG_REQUESTS or leg.state != "confirmed":
            return False
        req = self._in_dialog_request(leg, method, headers)
        req.body = body
        self.tx.request(req, self._dialog_peer(leg), now)
        self._pump(now)
        return True

    def _send_bye(self, leg: Leg, now: float, headers: list[tuple[str, str]]) -> None:
        req = self._in_dialog_request(leg, "BYE", headers)
        self._terminate(leg)
        ctx = self.tx.request(req, self._dialog_peer(leg), now)
        self._bye_txs[id(ctx)] = leg
        self._pump(now)

    # ---- outbound calls (UAC) ------------------------------------------------------------------

    def invite(
        self, target: str, peer: Peer, from_value: str, sdp: bytes, now: float, *,
        to_value: str | None = None, headers: list[tuple[str, str]] | None = None,
        credentials: Credentials | None = None, call_id: str | None = None,
    ) -> Leg:
        """Start an outbound call: INVITE `target` (a Request-URI) via `peer` with `sdp` as
        the offer. `from_value` is the From header without tag (e.g. `<sip:123@host>`),
        `to_value` the To header (default `<target>`). Extra `headers` go into the INVITE."""
        local_tag = new_tag()
        leg = Leg(
            call_id=call_id or f"{new_tag()}{new_tag()}@{self.local_host}",
            local_tag=local_tag,
            remote_tag="",
            peer=peer,
            invite=Request("INVITE", target, Headers()),
            invite_tx=None,
            local_uri=from_value,
            remote_uri=to_value or f"<{target}>",
            remote_target=target,
            outbound=True,
            credentials=credentials,
        )
        leg.invite = self._outbound_invite(leg, target, sdp, list(headers or []))
        self._send_invite(leg, now)
        return leg

    def _outbound_invite(self, leg: Leg, target: str, sdp: bytes,
                         extra: list[tuple[str, str]]) -> Request:
        leg.local_cseq += 1
        h = Headers()
        h.add("Via", self._via(leg.peer))
        h.add("Max-Forwards", "70")
        h.add("From", f"{leg.local_uri};tag={leg.local_tag}")
        h.add("To", leg.remote_uri)
        h.add("Call-ID", leg.call_id)
        h.add("CSeq", f"{leg.local_cseq} INVITE")
        h.add("Contact", self.contact(leg.peer))
        h.add("Allow", ALLOW)
        for name, value in self._ua:
            h.add(name, value)
        for name, value in extra:
            h.add(name, value)
        if sdp:
            h.add("Content-Type", "application/sdp")
        return Request("INVITE", target, h, sdp)

    def _via(self, peer: Peer) -> str:
        host = self.local_host if ":" not in self.local_host else f"[{self.local_host}]"
        return (f"SIP/2.0/{peer.transport.upper()} {host}:{self.port_for(peer)}"
                f";branch={new_branch()};rport")

    def _send_invite(self, leg: Leg, now: float) -> None:
        ctx = self.tx.request(leg.invite, leg.peer, now)
        leg.invite_ctx = ctx
        self._invite_ctxs[id(ctx)] = leg
        self._pump(now)

    def cancel(self, leg: Leg, now: float) -> None:
        """Give up on an outbound call that has no final response yet (CANCEL). The outcome
        is reported as usual: `OutboundFailed` (487), or - when a 200 crossed the CANCEL -
        the call is ACKed, ended with BYE and reported as `OutboundFailed` too."""
        if not leg.outbound or leg.state != "early" or leg.cancel_requested:
            return
        leg.cancel_requested = True
        if leg.provisional:
            self._send_cancel(leg, now)
        self._pump(now)

    def _send_cancel(self, leg: Leg, now: float) -> None:
        ctx = leg.invite_ctx
        if ctx is None or leg.cancel_sent:
            return
        leg.cancel_sent = True
        inv = leg.invite
        h = Headers()
        h.add("Via", inv.headers.get("Via") or "")
        h.add("Max-Forwards", "70")
        h.add("From", inv.headers.get("From") or "")
        h.add("To", inv.headers.get("To") or "")
        h.add("Call-ID", leg.call_id)
        h.add("CSeq", f"{inv.cseq[0]} CANCEL")
        for name, value in self._ua:
            h.add(name, value)
        self.tx.request(Request("CANCEL", inv.uri, h), ctx.peer, now)

    def _on_invite_response(self, leg: Leg, resp: Response, now: float) -> None:
        status = resp.status
        if leg.state == "confirmed" or leg.state == "terminated":
            # a retransmitted 2xx (our ACK was lost): ACK it again
            if 200 <= status < 300 and leg.ack is not None and resp.to_tag == leg.remote_tag:
                self.tx.send(leg.ack, self._dialog_peer(leg))
            return
        body = resp.body if resp.content_type == "application/sdp" else b""
        if status < 200:
            if status == 100:
                leg.provisional = True
            else:
                leg.provisional = True
                self._events.append(OutboundProgress(leg, status, body))
            if leg.cancel_requested:
                self._send_cancel(leg, now)
            return
        if status < 300:
            self._invite_answered(leg, resp, body, now)
            return
        ctx = leg.invite_ctx
        if ctx is not None:
            self._invite_ctxs.pop(id(ctx), None)
        if (status in (401, 407) and leg.credentials is not None and not leg.cancel_requested
                and self._retry_with_auth(leg, resp, now)):
            return
        leg.final_status = status
        leg.state = "terminated"
        reason = "cancelled" if leg.cancel_requested else (resp.reason or str(status))
        self._events.append(OutboundFailed(leg, status, reason))

    def _retry_with_auth(self, leg: Leg, resp: Response, now: float) -> bool:
        """Answer a 401/407 with credentials (once per challenge). False: give up."""
        name = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
        creds = leg.credentials
        if creds is None:
            return False
        challenge = None
        for value in resp.headers.get_all(name):
            try:
                challenge = parse_challenge(value)
            except DigestError as e:
                log.warning("call-id %s: %s challenge not usable: %s", leg.call_id, name, e)
                continue
            if challenge.algorithm.startswith("SHA-256"):
                break  # prefer SHA-256 when several are offered (RFC 8760)
        if challenge is None:
            return False
        if leg.auth_tries >= 1 and not challenge.stale:
            log.warning("call-id %s: digest credentials for %s refused (%d)", leg.call_id,
                        creds.username, resp.status)
            return False
        if leg.auth_tries >= 2:
            return False
        leg.auth_tries += 1
        old = leg.invite
        h = Headers()
        for n, v in old.headers.items():
            if n in ("Via", "CSeq", "Authorization", "Proxy-Authorization"):
                continue
            h.add(n, v)
        leg.local_cseq += 1
        h.set("CSeq", f"{leg.local_cseq} INVITE")
        hdr = "Authorization" if resp.status == 401 else "Proxy-Authorization"
        h.add(hdr, authorization(challenge, creds, "INVITE", old.uri))
        items = [("Via", self._via(leg.peer)), *h.items()]
        leg.invite = Request("INVITE", old.uri, Headers(items), old.body)
        leg.provisional = False
        self._send_invite(leg, now)
        return True

    def _invite_answered(self, leg: Leg, resp: Response, body: bytes, now: float) -> None:
        leg.remote_tag = resp.to_tag or ""
        leg.final_status = resp.status
        contacts = resp.headers.get_all("Contact")
        try:
            if contacts:
                leg.remote_target = str(parse_name_addr(contacts[0]).uri)
        except SipParseError:
            pass
        leg.route_set = list(reversed(resp.headers.get_all("Record-Route")))
        to_value = resp.headers.get("To")
        if to_value:
            leg.remote_uri = _strip_params(to_value)
        h = Headers()
        h.add("Via", self._via(self._dialog_peer(leg)))
        h.add("Max-Forwards", "70")
        for route in leg.route_set:
            h.add("Route", route)
        h.add("From", f"{leg.local_uri};tag={leg.local_tag}")
        h.add("To", f"{leg.remote_uri};tag={leg.remote_tag}" if leg.remote_tag
              else leg.remote_uri)
        h.add("Call-ID", leg.call_id)
        h.add("CSeq", f"{leg.invite.cseq[0]} ACK")
        for name, value in self._ua:
            h.add(name, value)
        leg.ack = Request("ACK", leg.remote_target, h)
        self.tx.send(leg.ack, self._dialog_peer(leg))
        if not leg.remote_tag:
            # RFC 3261 12.1.2: a 2xx without a To tag cannot make a dialog (no BYE could
            # reach it): ACKed so that it stops, and the call fails
            log.warning("call-id %s: 2xx to our INVITE without a To tag: call failed",
                        leg.call_id)
            leg.state = "terminated"
            self._forget(leg)
            self._events.append(OutboundFailed(leg, 502, "2xx without To tag"))
            return
        leg.state = "confirmed"
        self._legs[leg.key] = leg
        if leg.cancel_requested:
            # the 200 crossed our CANCEL: the call exists now, end it
            self._send_bye(leg, now, [("Reason", 'SIP;cause=487;text="Cancelled"')])
            self._events.append(OutboundFailed(leg, 487, "cancelled"))
            return
        self._events.append(OutboundAnswered(leg, resp, body))

    def respond_reinvite(
        self, leg: Leg, tx: ServerTransaction, status: int, now: float, sdp: bytes | None = None,
    ) -> None:
        headers = self._common_headers(leg) if status < 300 else []
        resp = make_response(tx.request, status, to_tag=None, headers=headers,
                             body=sdp or b"", content_type="application/sdp" if sdp else None)
        if leg.pending_reinvite is tx:
            leg.pending_reinvite = None
        self.tx.respond(tx, resp, now)
        self._pump(now)

    # ---- internals ------------------------------------------------------------------------

    def _common_headers(self, leg: Leg) -> list[tuple[str, str]]:
        return [("Contact", self._leg_contact(leg)), ("Allow", ALLOW), *self._ua]

    def _check_request(self, req: Request, peer: Peer, now: float) -> bool:
        """Checks made before the transaction layer sees a request; False when answered here."""
        mf = req.headers.get("Max-Forwards")
        if mf is not None:
            try:
                if int(mf.strip()) <= 0 and req.method not in ("OPTIONS", "CANCEL"):
                    self._stateless(req, peer, 483)
                    return False
            except ValueError:
                self._stateless(req, peer, 400, "Bad Max-Forwards")
                return False
        require = req.headers.get("Require")
        if require and req.method not in ("CANCEL",):
            self._stateless(req, peer, 420, headers=[("Unsupported", require)])
            return False
        return True

    def _stateless(
        self, req: Request, peer: Peer, status: int, reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        resp = make_response(req, status, reason, to_tag=req.to_tag or new_tag(),
                             headers=headers or [])
        self._raw_out.append((peer, resp.to_bytes()))

    def _pump(self, now: float) -> None:
        """Route transaction-layer events to dialogs and to the layer above."""
        while (ev := self.tx.next_event()) is not None:
            if isinstance(ev, RequestReceived):
                self._on_request(ev, now)
            elif isinstance(ev, AckReceived):
                self._on_ack(ev.request, now)
            elif isinstance(ev, ResponseReceived):
                self._on_response(ev.tx, ev.response, now)
            elif isinstance(ev, TransactionTimeout):
                self._on_timeout(ev.tx, now)
            elif isinstance(ev, StrayResponse):
                self._on_stray(ev.response, ev.peer)

    def _respond(self, tx: ServerTransaction, status: int, now: float, reason: str | None = None,
                 headers: list[tuple[str, str]] | None = None, to_tag: str | None = None) -> None:
        resp = make_response(tx.request, status, reason, headers=headers or [],
                             to_tag=to_tag if tx.request.to_tag is None else None)
        self.tx.respond(tx, resp, now)

    def _on_request(self, ev: RequestReceived, now: float) -> None:
        tx = ev.tx
        req = tx.request
        method = req.method
        if method == "INVITE":
            if req.to_tag is None:
                self._new_invite(tx, now)
            else:
                self._reinvite(tx, now)
        elif method == "CANCEL":
            self._cancel(tx, ev.cancels, now)
        elif method == "BYE":
            leg = self._find_leg(req)
            if leg is None:
                self._respond(tx, 481, now)
                return
            self._respond(tx, 200, now)
            if leg.state != "terminated":
                self._terminate(leg)
                self._events.append(CallEnded(leg, req))
        elif method == "OPTIONS":
            headers = [("Allow", ALLOW), ("Accept", "application/sdp"), *self._ua]
            if self.draining_retry_after is not None and req.to_tag is None:
                headers.append(("Retry-After", str(self.draining_retry_after)))
                self._respond(tx, 503, now, headers=headers, to_tag=new_tag())
            else:
                self._respond(tx, 200, now, headers=headers, to_tag=new_tag())
        elif method == "INFO":
            leg = self._find_leg(req)
            if leg is None:
                self._respond(tx, 481, now)
                return
            self._respond(tx, 200, now)
            digit = _dtmf_from_info(req)
            if digit is not None:
                self._events.append(DtmfInfo(leg, digit))
        elif method in KNOWN_UNSUPPORTED:
            self._respond(tx, 405, now, headers=[("Allow", ALLOW)], to_tag=new_tag())
        else:
            self._respond(tx, 501, now, headers=[("Allow", ALLOW)], to_tag=new_tag())

    def _new_invite(self, tx: ServerTransaction, now: float) -> None:
        req = tx.request
        from_tag = req.from_tag
        if not from_tag:
            self._respond(tx, 400, now, "Missing From tag", to_tag=new_tag())
            return
        if self.gate is not None:
            retry_after = self.gate(req, tx.peer, now)
            if retry_after is not None:
                self._respond(tx, 503, now, headers=[("Retry-After", str(retry_after))],
                              to_tag=new_tag())
                return
        # A second INVITE of the same call forked back to us (same Call-ID/From-tag/CSeq).
        for leg in self._legs.values():
            if (leg.call_id == req.call_id and leg.remote_tag == from_tag
                    and leg.invite.cseq == req.cseq and leg.state != "terminated"):
                self._respond(tx, 482, now, to_tag=new_tag())
                return
        try:
            contact_values = req.headers.get_all("Contact")
            remote_target = (str(parse_name_addr(contact_values[0]).uri) if contact_values
                             else str(parse_name_addr(req.headers.get("From") or "").uri))
            leg = Leg(
                call_id=req.call_id,
                local_tag=new_tag(),
                remote_tag=from_tag,
                peer=tx.peer,
                invite=req,
                invite_tx=tx,
                local_uri=_strip_params(req.headers.get("To") or ""),
                remote_uri=_strip_params(req.headers.get("From") or ""),
                remote_target=remote_target,
                route_set=req.headers.get_all("Record-Route"),
                remote_cseq=req.cseq[0],
            )
        except SipParseError as e:
            self._respond(tx, 400, now, e.reason, to_tag=new_tag())
            return
        self._legs[leg.key] = leg
        self._by_invite_tx[id(tx)] = leg
        self._events.append(IncomingCall(leg, req))

    def _reinvite(self, tx: ServerTransaction, now: float) -> None:
        req = tx.request
        leg = self._find_leg(req)
        if leg is None or leg.state == "terminated":
            self._respond(tx, 481, now)
            return
        if req.cseq[0] <= leg.remote_cseq:
            self._respond(tx, 500, now, "CSeq Out of Order")
            return
        leg.remote_cseq = req.cseq[0]
        if leg.pending_reinvite is not None or leg.state == "early":
            self._respond(tx, 491, now)
            return
        leg.pending_reinvite = tx
        self._events.append(ReInvite(leg, tx, req))

    def _cancel(self, tx: ServerTransaction, target: ServerTransaction | None, now: float) -> None:
        if target is None:
            self._respond(tx, 481, now)
            return
        self._respond(tx, 200, now)
        leg = self._by_invite_tx.get(id(target))
        if leg is None or leg.state != "early":
            return  # already answered or rejected: CANCEL has no effect
        leg.final_status = 487
        self._terminate(leg)
        resp = make_response(leg.invite, 487, to_tag=leg.local_tag)
        self.tx.respond(target, resp, now)
        self._events.append(CallCancelled(leg))

    def _on_ack(self, ack: Request, now: float) -> None:
        leg = self._find_leg(ack)
        if leg is None or leg.state != "answered":
            return
        leg.state = "confirmed"
        if leg.invite_tx is not None:
            self._by_invite_tx.pop(id(leg.invite_tx), None)
            leg.invite_tx = None
        if leg.pending_bye is not None:  # the layer above already hung up: now we may
            self._send_bye(leg, now, leg.pending_bye)
            return
        self._events.append(CallConfirmed(leg, ack))

    def _on_stray(self, resp: Response, peer: Peer) -> None:
        """A 2xx to our INVITE retransmitted after its transaction ended: ACK it again."""
        if resp.cseq[1] != "INVITE" or not 200 <= resp.status < 300:
            return
        to_tag, from_tag = resp.to_tag, resp.from_tag
        if to_tag is None or from_tag is None:
            return
        leg = self._legs.get((resp.call_id, from_tag, to_tag))
        if leg is not None and leg.outbound and leg.ack is not None:
            self.tx.send(leg.ack, self._dialog_peer(leg))

    def _on_response(self, ctx: ClientTransaction, resp: Response, now: float) -> None:
        out_leg = self._invite_ctxs.get(id(ctx))
        if out_leg is not None:
            self._on_invite_response(out_leg, resp, now)
            return
        if resp.status < 200:
            return
        leg = self._bye_txs.pop(id(ctx), None)
        if leg is not None:
            self._forget(leg)
            self._events.append(ByeDone(leg, resp.status))

    def _on_timeout(self, t: ServerTransaction | ClientTransaction, now: float) -> None:
        if isinstance(t, ClientTransaction):
            out_leg = self._invite_ctxs.pop(id(t), None)
            if out_leg is not None:
                if out_leg.state == "early":  # Timer B (or the CANCEL guard): no answer
                    out_leg.state = "terminated"
                    out_leg.final_status = 408
                    self._events.append(OutboundFailed(
                        out_leg, None, "cancelled" if out_leg.cancel_requested else "timeout"))
                return
            leg = self._bye_txs.pop(id(t), None)
            if leg is not None:
                self._forget(leg)
                self._events.append(ByeDone(leg, None))
            return
        leg = self._by_invite_tx.pop(id(t), None)
        if leg is None:
            return
        if leg.state == "answered":
            # 2xx never ACKed: RFC 3261 13.3.1.4, the UAS must end the dialog with BYE.
            leg.state = "confirmed"  # so that bye() is allowed
            leg.invite_tx = None
            if leg.pending_bye is not None:
                self._send_bye(leg, now, leg.pending_bye)
                return
            self._events.append(CallAckTimeout(leg))
        else:
            self._forget(leg)

    def _find_leg(self, req: Request) -> Leg | None:
        to_tag = req.to_tag
        from_tag = req.from_tag
        if to_tag is None or from_tag is None:
            return None
        return self._legs.get((req.call_id, to_tag, from_tag))

    def _terminate(self, leg: Leg) -> None:
        """The dialog is over. Its transactions finish on their own (absorbing retransmitted
        ACKs/BYEs), so the dialog state can go at once; later requests in it get 481."""
        leg.state = "terminated"
        self._forget(leg)

    def _forget(self, leg: Leg) -> None:
        self._legs.pop(leg.key, None)
        if leg.invite_ctx is not None:
            self._invite_ctxs.pop(id(leg.invite_ctx), None)
        if leg.invite_tx is not None:
            self._by_invite_tx.pop(id(leg.invite_tx), None)

    def release(self, leg: Leg) -> None:
        """The layer above is done with this call: drop any remaining dialog state."""
        if leg.state == "terminated":
            self._forget(leg)

    def _dialog_peer(self, leg: Leg) -> Peer:
        if leg.route_set and not leg.peer.websocket:
            try:
                uri = parse_name_addr(leg.route_set[0]).uri
            except SipParseError:
                return leg.peer
            if _is_ip(uri.host):
                secure = uri.scheme == "sips"
                transport = "tls" if secure else str(
                    uri.params.get("transport") or leg.peer.transport).lower()
                default_port = 5061 if transport == "tls" else 5060
                return Peer(transport, uri.host.strip("[]"), uri.port or default_port)
        return leg.peer

    def _in_dialog_request(self, leg: Leg, method: str, extra: list[tuple[str, str]]) -> Request:
        leg.local_cseq += 1
        peer = self._dialog_peer(leg)
        host = self.local_host if ":" not in self.local_host else f"[{self.local_host}]"
        h = Headers()
        h.add("Via", f"SIP/2.0/{peer.transport.upper()} {host}:{self.port_for(peer)}"
                     f";branch={new_branch()};rport")
        h.add("Max-Forwards", "70")
        for route in leg.route_set:
            h.add("Route", route)
        h.add("From", f"{leg.local_uri};tag={leg.local_tag}")
        h.add("To", f"{leg.remote_uri};tag={leg.remote_tag}")
        h.add("Call-ID", leg.call_id)
        h.add("CSeq", f"{leg.local_cseq} {method}")
        for name, value in self._ua:
            h.add(name, value)
        for name, value in extra:
            h.add(name, value)
        return Request(method, leg.remote_target, h)


def _dtmf_from_info(req: Request) -> str | None:
    """The digit of an `application/dtmf-relay` (Signal=5) or `application/dtmf` INFO body."""
    ctype = req.content_type
    body = req.body.decode("utf-8", errors="replace")
    if ctype == "application/dtmf-relay":
        for line in body.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                v = value.strip()
                return v if len(v) == 1 and v in "0123456789*#ABCDabcd" else None
    elif ctype == "application/dtmf":
        v = body.strip()
        if v.isdigit() and 0 <= int(v) <= 15:
            return "0123456789*#ABCD"[int(v)]
        if len(v) == 1 and v in "*#ABCD":
            return v
    return None
