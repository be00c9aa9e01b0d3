"""Outbound calls, the asyncio side: REST create-call requests become SIP INVITEs and calls.

`parse_create_call` checks a jambonz `POST /v1/Accounts/{account_sid}/Calls` body (pure).
`OutboundCalls` (owned by the server) places a call: the policy of `confroom.outbound` first
(target allowed? under the account's concurrency cap and the call rate?), then - in a task -
the next hop's address, an RTP port, the INVITE through the server's `SipCore`, the ring
timeout (CANCEL when it runs out), and on answer a `Call` with `direction: outbound` whose app
(`call_hook`) runs in a `CallSession` exactly as for an inbound call. Call-status hooks report
trying / ringing / early-media / in-progress and the final status (busy, no-answer, failed,
completed). The SIP events of outbound legs (`OutboundProgress`, `OutboundAnswered`,
`OutboundFailed`) arrive through `on_event`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confroom.app.control import CallInfo
from confroom.app.session import notify_call_status, to_hook
from confroom.call import Call, log_call_end
from confroom.config import AppConfig, ConfigError, Hook
from confroom.media.engine import MediaError
from confroom.media.session import MediaSession
from confroom.outbound import LimitExceeded, OutboundLimiter, Refused, Route, route
from confroom.ratelog import RateLimitedWarning
from confroom.sip.core import Leg, OutboundAnswered, OutboundFailed, OutboundProgress
from confroom.sip.message import REASON_PHRASES
from confroom.sip.peer import Peer
from confroom.sip.sdp import NoCommonCodec, SdpError, build_offer, negotiate, parse_sdp

if TYPE_CHECKING:
    from confroom.server import Server

log = logging.getLogger("confroom.outbound")

__all__ = ["Attempt", "CreateCall", "CreateCallError", "Failure", "OutboundCalls",
           "check_headers", "parse_create_call"]

DEFAULT_RING_TIMEOUT = 60.0
CANCEL_GRACE = 5.0  # after a CANCEL, how long we wait for the INVITE's final response
_USER_RE = re.compile(r"^[A-Za-z0-9+._\-*#]{1,64}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]{1,64}$")
# headers an app may not set on an INVITE (the SIP stack owns them)
_RESERVED = frozenset({
    "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length",
    "content-type", "route", "record-route", "authorization", "proxy-authorization", "allow",
    "user-agent", "require", "proxy-require", "supported", "expires", "content-encoding",
})
_FINAL_STATUS = {486: "busy", 600: "busy", 603: "busy", 480: "no-answer", 408: "no-answer",
                 487: "no-answer"}


class CreateCallError(ValueError):
    """A create-call body that cannot be used; the message says why (HTTP 400)."""


@dataclass(frozen=True)
class CreateCall:
    from_user: str
    to: Mapping[str, Any]
    call_hook: Hook
    call_status_hook: Hook | None = None
    timeout: float = DEFAULT_RING_TIMEOUT
    headers: tuple[tuple[str, str], ...] = ()
    tag: Mapping[str, Any] = field(default_factory=dict)
    caller_name: str = ""


def check_headers(value: object, where: str = "headers") -> tuple[tuple[str, str], ...]:
    """Custom SIP headers of a create-call body or a `dial` verb: {name: value} of printable
    values, none of the headers the SIP stack owns."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise CreateCallError(f"{where}: expected an object of header names to values")
    out: list[tuple[str, str]] = []
    for name, v in value.items():
        if not isinstance(name, str) or not _TOKEN_RE.match(name):
            raise CreateCallError(f"{where}: {name!r} is not a header name")
        if name.lower() in _RESERVED:
            raise CreateCallError(f"{where}: {name} is set by confroom and cannot be given")
        text = str(v)
        if len(text) > 1024 or any(not ch.isprintable() for ch in text):
            raise CreateCallError(f"{where}.{name}: printable text of at most 1024 characters")
        out.append((name, text))
    if len(out) > 20:
        raise CreateCallError(f"{where}: at most 20 headers")
    return tuple(out)


def parse_create_call(body: object) -> CreateCall:
    """Validate a jambonz create-call body (raises CreateCallError)."""
    if not isinstance(body, Mapping):
        raise CreateCallError("the request body must be a JSON object")
    frm = body.get("from")
    if not isinstance(frm, str) or not _USER_RE.match(frm):
        raise CreateCallError("'from' is required: the caller id (a number or SIP user)")
    to = body.get("to")
    if not isinstance(to, Mapping) or to.get("type") not in ("phone", "sip"):
        raise CreateCallError("'to' is required: {\"type\": \"phone\", \"number\": ...} or "
                              "{\"type\": \"sip\", \"sipUri\": ...}")
    if body.get("application_sid") is not None and body.get("call_hook") is None:
        raise CreateCallError("'application_sid' is not supported by confroom: give a "
                              "'call_hook'")
    try:
        hook = to_hook(body.get("call_hook"))
        status_hook = (to_hook(body["call_status_hook"]) if body.get("call_status_hook")
                       else None)
    except ConfigError as e:
        raise CreateCallError(f"'call_hook' / 'call_status_hook': {e}") from None
    for h in (hook, status_hook):
        if h is not None and not h.url.startswith(("http://", "https://")):
            raise CreateCallError(f"hook {h.url!r}: an http(s) URL is required")
    timeout = body.get("timeout", DEFAULT_RING_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            1 <= timeout <= 600):
        raise CreateCallError("'timeout': seconds to ring, 1-600")
    tag = body.get("tag", {})
    if not isinstance(tag, Mapping):
        raise CreateCallError("'tag': expected an object")
    name = body.get("callerName", body.get("caller_name", ""))
    if not isinstance(name, str) or len(name) > 64 or any(
            not ch.isprintable() or ch in '"\\' for ch in name):
        raise CreateCallError("'callerName': printable text without quotes, 64 characters "
                              "at most")
    return CreateCall(from_user=frm, to=to, call_hook=hook, call_status_hook=status_hook,
                      timeout=float(timeout), headers=check_headers(body.get("headers")),
                      tag=dict(tag), caller_name=name)


class Attempt:
    """One outbound INVITE in progress (until answered or failed); `cancel()` gives up."""

    def __init__(self, info: CallInfo, app: AppConfig, rt: Route, media: MediaSession) -> None:
        self.info = info
        self.app = app
        self.route = rt
        self.media = media
        self.leg: Leg | None = None
        self.outcome: asyncio.Future[OutboundAnswered | OutboundFailed] = (
            asyncio.get_running_loop().create_future())
        self.cancelled = asyncio.Event()
        self.session_id = random.randint(1, 2**31)

    def cancel(self) -> None:
        """Stop ringing (CANCEL): the call then fails with the reason "cancelled"."""
        self.cancelled.set()


@dataclass(frozen=True)
class Failure:
    """How an outbound call that was never answered ended: its final call_status (busy,
    no-answer, failed), the SIP status behind it and a reason for the log."""

    status: str
    sip_status: int
    reason: str


class OutboundCalls:
    """See the module docstring."""

    def __init__(self, server: Server) -> None:
        self.server = server
        cfg = server.config
        self.limiter = OutboundLimiter(cfg.outbound_max_concurrent_calls,
                                       cfg.outbound_calls_per_second)
        self._attempts: dict[int, Attempt] = {}  # id(leg) -> attempt
        self._refused_warning = RateLimitedWarning(log)
        self._limit_warning = RateLimitedWarning(log)
        self.refused: dict[str, int] = {}

    # ---- checks shared by create-call and dial -----------------------------------------------

    def check(self, account_sid: str, target: Mapping[str, Any]) -> Route:
        """Route `target` and take a slot for it (release it with `release`, or let the call
        it becomes finish). Raises Refused or LimitExceeded, both logged (rate-limited)."""
        now = time.monotonic()
        try:
            rt = route(self.server.config, target)
        except Refused as e:
            self.refused["not allowed"] = self.refused.get("not allowed", 0) + 1
            self._refused_warning(now, "outbound call refused account_sid=%s: %s", account_sid,
                                  e)
            raise
        try:
            self.limiter.acquire(account_sid, now)
        except LimitExceeded as e:
            self.refused["limit"] = self.refused.get("limit", 0) + 1
            self._limit_warning(now, "outbound call refused account_sid=%s: %s", account_sid, e)
            raise
        return rt

    def release(self, account_sid: str) -> None:
        self.limiter.release(account_sid)

    def new_info(self, account_sid: str, app: AppConfig, rt: Route, from_user: str,
                 caller_name: str = "") -> CallInfo:
        return CallInfo(
            call_sid=str(uuid.uuid4()), call_id="", from_user=from_user, to_user=rt.to_user,
            caller_name=caller_name, originating_sip_ip=rt.host, originating_sip_port=rt.port,
            local_sip_address="", account_sid=account_sid,
            application_sid=app.application_sid, direction="outbound",
        )

    # ---- REST create-call ---------------------------------------------------------------------

    def create(self, account_sid: str, req: CreateCall) -> str:
        """Check and start an outbound call; its call_sid. Raises Refused, LimitExceeded,
        LookupError (no such account) or RuntimeError (shutting down)."""
        srv = self.server
        if srv._stopping or srv.core is None or srv.admission.draining:
            raise RuntimeError("the server is shutting down (draining): no new calls")
        base = next((a for a in srv.config.apps if a.account_sid == account_sid), None)
        if base is None:
            raise LookupError(f"no account {account_sid}")
        rt = self.check(account_sid, req.to)
        app = AppConfig(name=f"{base.name}/rest", call_hook=req.call_hook,
                        call_status_hook=req.call_status_hook,
                        webhook_secret=base.webhook_secret, account_sid=account_sid,
                        application_sid=base.application_sid, tls=base.tls, srtp=base.srtp)
        info = self.new_info(account_sid, app, rt, req.from_user, req.caller_name)
        info.customer_data = dict(req.tag)
        log.info("outbound call start call_sid=%s from=%s to=%s via=%s", info.call_sid,
                 req.from_user, rt.uri, rt.trunk or rt.host)
        srv._spawn(self._run(info, app, rt, req))
        return info.call_sid

    async def _run(self, info: CallInfo, app: AppConfig, rt: Route, req: CreateCall) -> None:
        call = await self.place(info, app, rt, headers=req.headers, timeout=req.timeout)
        if isinstance(call, Call):
            await self.server.run_verbs(call)

    # ---- placing one call ---------------------------------------------------------------------

    def _status(self, info: CallInfo, app: AppConfig, status: str, sip_status: int,
                reason: str | None = None) -> None:
        info.call_status = status
        info.sip_status = sip_status
        info.sip_reason = reason or REASON_PHRASES.get(sip_status, "")
        self.server.call_statuses[status] += 1
        if app.call_status_hook is not None:
            self.server._ordered.submit(info.call_sid,
                                        notify_call_status(self.server.hooks, app, info))

    def _fail(self, info: CallInfo, app: AppConfig, status: str, sip_status: int,
              why: str) -> Failure:
        self._status(info, app, status, sip_status)
        log_call_end(info.call_sid, status, why, 0.0)
        self.release(info.account_sid)
        return Failure(status, sip_status, why)

    async def place(
        self, info: CallInfo, app: AppConfig, rt: Route, *,
        headers: tuple[tuple[str, str], ...] = (), timeout: float = DEFAULT_RING_TIMEOUT,
        on_attempt: Callable[[Attempt], None] | None = None,
    ) -> Call | Failure:
        """INVITE `rt` (its slot already taken by `check`) and wait: the answered `Call`
        (registered with the server, status in-progress; its slot is freed when it
        finishes), or how it failed (slot freed). `on_attempt` gets the attempt as soon as
        the INVITE is out (to `cancel()` it)."""
        srv = self.server
        loop = asyncio.get_running_loop()
        self._status(info, app, "trying", 100)
        try:
            addrs = await loop.getaddrinfo(rt.host, rt.port, family=socket.AF_INET,
                                           type=socket.SOCK_DGRAM)
            ip = str(addrs[0][4][0])
        except (OSError, IndexError) as e:
            log.warning("call_sid=%s: cannot resolve %s: %s", info.call_sid, rt.host, e)
            return self._fail(info, app, "failed", 503, "unresolvable host")
        try:
            media = await srv.engine.open_session()
        except (MediaError, OSError) as e:
            log.error("call_sid=%s: no RTP port for the outbound call: %s", info.call_sid, e)
            return self._fail(info, app, "failed", 503, "no RTP port")
        core = srv.core
        if core is None or srv._stopping:
            srv.engine.close_session(media)
            return self._fail(info, app, "failed", 503, "server shutting down")
        attempt = Attempt(info, app, rt, media)
        cfg = srv.config
        offer = build_offer(codecs=media.codec_policy.codecs,
                            local_host=cfg.contact_host, local_port=media.local_port,
                            session_id=attempt.session_id)
        host = cfg.contact_host if ":" not in cfg.contact_host else f"[{cfg.contact_host}]"
        display = f'"{info.caller_name}" ' if info.caller_name else ""
        peer = Peer(rt.transport, ip, rt.port)
        leg = core.invite(rt.uri, peer, f"{display}<sip:{info.from_user}@{host}>", offer,
                          loop.time(), headers=list(headers), credentials=rt.credentials)
        attempt.leg = leg
        info.call_id = leg.call_id
        info.local_sip_address = f"{core.local_host}:{core.port_for(peer)}"
        info.originating_sip_ip = ip
        self._attempts[id(leg)] = attempt
        srv.transports.hold(peer)
        log.info("outbound INVITE call_sid=%s call_id=%s to=%s peer=%s:%d/%s rtp_port=%d",
                 info.call_sid, leg.call_id, rt.uri, ip, rt.port, rt.transport,
                 media.local_port)
        srv._flush()
        if on_attempt is not None:
            on_attempt(attempt)
        try:
            outcome = await self._wait(attempt, timeout)
        finally:
            self._attempts.pop(id(leg), None)
        if isinstance(outcome, OutboundFailed):
            srv.transports.release(peer)
            srv.engine.close_session(media)
            status = outcome.status
            if outcome.reason in ("ring timeout", "cancelled"):
                why = ("no answer within the timeout" if outcome.reason == "ring timeout"
                       else "cancelled")
                return self._fail(info, app, "no-answer", 487, why)
            if status is None:
                return self._fail(info, app, "failed", 408, outcome.reason)
            return self._fail(info, app, _FINAL_STATUS.get(status, "failed"), status,
                              f"{status} {outcome.reason}")
        try:
            neg = negotiate(parse_sdp(outcome.sdp), supported=media.codec_policy.codecs)
        except (SdpError, NoCommonCodec) as e:
            log.warning("call_sid=%s: unusable SDP answer: %s", info.call_sid, e)
            srv.sip_bye(leg, [("Reason", 'SIP;cause=488;text="Unusable SDP answer"')])
            srv.transports.release(peer)
            srv.engine.close_session(media)
            return self._fail(info, app, "failed", 488, "unusable SDP answer")
        call = Call(info=info, app=app, leg=leg, media=media, negotiated=neg, signalling=srv,
                    local_media_host=cfg.contact_host, on_status=srv._status_changed)
        srv.calls[info.call_sid] = call
        srv._by_leg[id(leg)] = call
        call.outbound_answered()
        log.info("outbound call answered call_sid=%s codec=%s", info.call_sid, neg.codec)
        return call

    async def _wait(self, attempt: Attempt, timeout: float) -> OutboundAnswered | OutboundFailed:
        """The outcome of the INVITE; after `timeout` seconds, or on `attempt.cancel()`, it
        is CANCELled (reason "ring timeout" / "cancelled" unless a 200 crossed the CANCEL)."""
        outcome: asyncio.Future[Any] = asyncio.shield(attempt.outcome)
        cancelled: asyncio.Future[Any] = asyncio.ensure_future(attempt.cancelled.wait())
        try:
            await asyncio.wait({outcome, cancelled}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if attempt.outcome.done():
            return attempt.outcome.result()
        reason = "cancelled" if attempt.cancelled.is_set() else "ring timeout"
        srv = self.server
        assert srv.core is not None and attempt.leg is not None
        srv.core.cancel(attempt.leg, asyncio.get_running_loop().time())
        srv._flush()
        try:
            result = await asyncio.wait_for(asyncio.shield(attempt.outcome), CANCEL_GRACE)
        except TimeoutError:
            return OutboundFailed(attempt.leg, None, reason)
        if isinstance(result, OutboundFailed):
            return OutboundFailed(attempt.leg, result.status, reason)
        return result

    # ---- SIP events ---------------------------------------------------------------------------

    def on_event(self, ev: OutboundProgress | OutboundAnswered | OutboundFailed) -> None:
        attempt = self._attempts.get(id(ev.leg))
        if attempt is None:
            return
        if isinstance(ev, OutboundProgress):
            if ev.sdp:
                try:
                    neg = negotiate(parse_sdp(ev.sdp),
                                    supported=attempt.media.codec_policy.codecs)
                except (SdpError, NoCommonCodec):
                    return
                attempt.media.update(neg.codec, neg.payload_type, neg.dtmf_payload_type,
                                     neg.remote_host, neg.remote_port, neg.remote_direction)
                if attempt.info.call_status != "early-media":
                    self._status(attempt.info, attempt.app, "early-media", ev.status)
            elif attempt.info.call_status == "trying":
                self._status(attempt.info, attempt.app, "ringing", ev.status)
            return
        if not attempt.outcome.done():
            attempt.outcome.set_result(ev)

    def cancel_all(self) -> None:
        """Shutdown: CANCEL every INVITE still ringing."""
        core = self.server.core
        if core is None:
            return
        now = asyncio.get_running_loop().time()
        for attempt in list(self._attempts.values()):
            attempt.cancel()
            if attempt.leg is not None:
                core.cancel(attempt.leg, now)
        self.server._flush()

    def finished(self, call: Call) -> None:
        """A call ended (the server tells every call): free an outbound call's slot."""
        if call.info.direction == "outbound":
            self.release(call.info.account_sid)
