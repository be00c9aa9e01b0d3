"""`Call`: one call (inbound, or outbound once answered), tying its SIP leg, its media session
and its verb runner together.

It implements `CallControl` for the app layer, turns SIP and media happenings (BYE, CANCEL,
re-INVITE, DTMF, RTP timeout) into call state, and reports each `call_status` change (log line
and the app's call-status hook). All signalling goes through the `Signalling` protocol, which
the server implements on top of the sans-IO `SipCore`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from confroom.app.control import CallInfo
from confroom.config import AppConfig
from confroom.media.session import MediaSession
from confroom.media.sources import Source
from confroom.media.srtp import SrtpContext, new_key
from confroom.sip.core import Leg
from confroom.sip.message import REASON_PHRASES
from confroom.sip.sdp import (
    Negotiated,
    NoCommonCodec,
    SdpError,
    build_answer,
    negotiate,
    parse_sdp,
)
from confroom.sip.transaction import ServerTransaction
from confroom.sip.webrtc_sdp import WebRtcOffer, split_webrtc, webrtc_answer

if TYPE_CHECKING:
    from confroom.app.session import CallSession

log = logging.getLogger("confroom.call")

# call_status for a final response we send to an unanswered call
_DECLINE_STATUS = {486: "busy", 600: "busy", 480: "no-answer", 408: "no-answer", 487: "no-answer"}


def log_call_end(call_sid: str, status: str, reason: str, duration: float) -> None:
    """The one `call end` log line every call gets (duration: seconds since answer)."""
    log.info("call end call_sid=%s status=%s reason=%s duration=%.1f",
             call_sid, status, reason.replace(" ", "-"), duration)


class Signalling(Protocol):
    """What a call may ask of the SIP side (implemented by the server)."""

    def sip_ring(self, leg: Leg) -> None: ...
    def sip_answer(self, leg: Leg, sdp: bytes) -> bool: ...
    def sip_reject(self, leg: Leg, status: int, reason: str | None,
                   headers: list[tuple[str, str]]) -> bool: ...
    def sip_bye(self, leg: Leg, headers: list[tuple[str, str]]) -> bool: ...
    def sip_request(self, leg: Leg, method: str, headers: list[tuple[str, str]],
                    body: bytes) -> bool: ...
    def sip_respond_reinvite(self, leg: Leg, tx: ServerTransaction, status: int,
                             sdp: bytes | None) -> None: ...
    def call_finished(self, call: Call) -> None: ...


class Call:
    """One call; see the module docstring."""

    def __init__(
        self,
        *,
        info: CallInfo,
        app: AppConfig,
        leg: Leg,
        media: MediaSession,
        negotiated: Negotiated,
        signalling: Signalling,
        local_media_host: str,
        on_status: Callable[[Call], None] | None = None,
        srtp_key: bytes | None = None,
        webrtc_offer: WebRtcOffer | None = None,
    ) -> None:
        self.info = info
        self.app = app
        self.leg = leg
        self.media = media
        self.negotiated = negotiated
        self._sig = signalling
        self._media_host = local_media_host
        self._on_status = on_status
        self._answered = False
        self._ended = asyncio.Event()
        self._play_future: asyncio.Future[bool] | None = None
        self._sdp_session_id = random.randint(1, 2**31)
        self._sdp_version = 1
        self._srtp_key = srtp_key  # our SDES key (SRTP calls: media.srtp protects with it)
        self._webrtc_offer = webrtc_offer  # a browser's ICE/DTLS parameters (WebRTC calls)
        self.started_at = time.time()
        self.answered_at: float | None = None
        self.session_kill: Callable[[], None] | None = None  # set by the runner
        self.session: CallSession | None = None  # the verb runner (live control reaches it)
        # who gets the caller's digits besides the log (a running `gather`)
        self.dtmf_listener: Callable[[str], None] | None = None
        media.on_play_done = self._on_play_done
        media.on_dtmf = self.on_dtmf
        media.on_timeout = self._on_rtp_timeout
        media.update(
            negotiated.codec, negotiated.payload_type, negotiated.dtmf_payload_type,
            negotiated.remote_host, negotiated.remote_port, negotiated.remote_direction,
        )

    # ---- CallControl ------------------------------------------------------------------------

    @property
    def answered(self) -> bool:
        return self._answered

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def ring(self) -> None:
        self._sig.sip_ring(self.leg)
        self._set_status("ringing", 180, "Ringing")

    async def answer(self) -> None:
        if self._answered or self.ended:
            return
        sdp = self._answer_sdp()
        if not self._sig.sip_answer(self.leg, sdp):
            # CANCELled (or otherwise gone) before we could answer
            return
        self._answered = True
        self.answered_at = time.time()
        self._set_status("in-progress", 200, "OK")

    def outbound_answered(self) -> None:
        """An outbound call's callee answered (its 200 OK is ACKed): the call is up."""
        self._answered = True
        self.answered_at = time.time()
        self._set_status("in-progress", 200, "OK")

    async def play(self, source: Source) -> bool:
        if self.ended:
            return False
        if not self._answered:
            await self.answer()
            if not self._answered:
                return False
        self.stop_playback()
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._play_future = fut
        self.media.play(source)
        return await fut

    def stop_playback(self) -> None:
        if self._play_future is not None:
            self.media.stop()
            self._resolve_play(False)

    async def wait_ended(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ended.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def hangup(self, headers: Mapping[str, str] | None = None) -> None:
        if self.ended:
            return
        hdrs = list((headers or {}).items())
        if self._answered:
            self._sig.sip_bye(self.leg, hdrs)
            self.finish("completed", "hangup")
        else:
            self._sig.sip_reject(self.leg, 480, None, hdrs)
            self.finish("no-answer", "hangup before answer", sip_status=480)

    def send_request(self, method: str, headers: Mapping[str, str], body: bytes) -> bool:
        """Send an in-dialog INFO/NOTIFY/MESSAGE; False when the call cannot carry it now."""
        if self.ended or not self._answered:
            return False
        return self._sig.sip_request(self.leg, method, list(headers.items()), body)

    async def decline(
        self, status: int, reason: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        if self.ended:
            return
        if self._answered:
            log.warning("call_sid=%s: sip:decline on an answered call: hanging up instead",
                        self.info.call_sid)
            await self.hangup(headers)
            return
        self._sig.sip_reject(self.leg, status, reason, list((headers or {}).items()))
        self.finish(_DECLINE_STATUS.get(status, "failed"), f"declined {status}",
                    sip_status=status, sip_reason=reason)

    # ---- SIP happenings -----------------------------------------------------------------------

    def on_cancelled(self) -> None:
        self.finish("no-answer", "cancelled", sip_status=487, sip_reason="Request Terminated")

    def on_remote_bye(self) -> None:
        self.finish("completed", "caller hung up")

    def on_ack_timeout(self) -> None:
        log.warning("call_sid=%s: no ACK for our 200 OK; ending the call", self.info.call_sid)
        self._sig.sip_bye(self.leg, [])
        self.finish("failed", "no ACK")

    def on_reinvite(self, tx: ServerTransaction, body: bytes) -> None:
        if self.ended:
            self._sig.sip_respond_reinvite(self.leg, tx, 481, None)
            return
        if body.strip():
            old = self.negotiated.crypto
            try:
                policy = self.media.codec_policy
                offer, rtc = split_webrtc(parse_sdp(body))
                if (rtc is None) != (self._webrtc_offer is None):
                    raise NoCommonCodec("a call cannot switch between WebRTC and RTP")
                neg = negotiate(offer, supported=policy.codecs,
                                require_srtp=old is not None, prefer_ours=policy.prefer_ours)
                if old is None and neg.crypto is not None:
                    raise NoCommonCodec("a plain RTP call cannot switch to SRTP")
            except (SdpError, NoCommonCodec) as e:
                log.warning("call_sid=%s: re-INVITE refused: %s", self.info.call_sid, e)
                self._sig.sip_respond_reinvite(self.leg, tx, 488, None)
                return
            if neg.crypto is not None and neg.crypto != old:
                # new remote key (or suite): a fresh context, and a fresh key of ours with it
                self._srtp_key = new_key()
                self.media.srtp = SrtpContext(neg.crypto.suite, self._srtp_key, neg.crypto.key,
                                              label=f"call_sid={self.info.call_sid}")
                log.info("call_sid=%s: srtp re-keyed by re-INVITE", self.info.call_sid)
            if neg.codec != self.negotiated.codec:
                log.info("call_sid=%s codec %s -> %s", self.info.call_sid,
                         self.negotiated.codec, neg.codec)
            self.negotiated = neg
            self.media.update(neg.codec, neg.payload_type, neg.dtmf_payload_type,
                              neg.remote_host, neg.remote_port, neg.remote_direction)
            log.info("call_sid=%s media direction=%s", self.info.call_sid, neg.remote_direction)
        self._sdp_version += 1
        self._sig.sip_respond_reinvite(self.leg, tx, 200, self._answer_sdp())

    def on_dtmf(self, digit: str) -> None:
        log.info("dtmf call_sid=%s digit=%s", self.info.call_sid, digit)
        listener = self.dtmf_listener
        if listener is not None:
            listener(digit)

    def on_info_dtmf(self, digit: str) -> None:
        """A digit from a SIP INFO (application/dtmf-relay or application/dtmf): like an RFC 4733
        digit it goes to the listener and to the media tap (a dial bridge or a conference),
        which passes it on as RFC 4733 to the other side."""
        self.on_dtmf(digit)
        tap = self.media.dtmf_tap
        if tap is not None:
            tap(digit)

    def _on_rtp_timeout(self) -> None:
        if self.ended:
            return
        log.warning("call_sid=%s: no RTP received for the timeout; ending the call",
                    self.info.call_sid)
        if self._answered:
            self._sig.sip_bye(self.leg, [])
        else:
            self._sig.sip_reject(self.leg, 408, None, [])
        self.finish("completed", "rtp timeout")

    # ---- internals ----------------------------------------------------------------------------

    def _answer_sdp(self) -> bytes:
        sdp = build_answer(
            self.negotiated, local_host=self._media_host, local_port=self.media.local_port,
            session_id=self._sdp_session_id, version=self._sdp_version, srtp_key=self._srtp_key,
        )
        rtc, offer = self.media.webrtc, self._webrtc_offer
        if rtc is not None and offer is not None:
            sdp = webrtc_answer(sdp, offer, ufrag=rtc.ice.local_ufrag, pwd=rtc.ice.local_pwd,
                                fingerprint=rtc.dtls.local_fingerprint, host=self._media_host,
                                port=self.media.local_port)
        return sdp

    def _on_play_done(self, finished: bool) -> None:
        self._resolve_play(finished)

    def _resolve_play(self, value: bool) -> None:
        fut = self._play_future
        self._play_future = None
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _set_status(self, status: str, sip_status: int | None = None,
                    sip_reason: str | None = None) -> None:
        self.info.call_status = status
        if sip_status is not None:
            self.info.sip_status = sip_status
        if sip_reason is not None:
            self.info.sip_reason = sip_reason
        if self._on_status is not None:
            self._on_status(self)

    def finish(self, status: str, reason: str, *, sip_status: int | None = None,
               sip_reason: str | None = None) -> None:
        """The call is over: stop media and the verb runner, report, and release resources."""
        if self.ended:
            return
        self._ended.set()
        self._resolve_play(False)
        self.dtmf_listener = None
        if self.session_kill is not None:
            self.session_kill()
        if sip_status is not None and sip_reason is None:
            sip_reason = REASON_PHRASES.get(sip_status, "")
        self._set_status(status, sip_status, sip_reason)
        duration = time.time() - self.answered_at if self.answered_at else 0.0
        if self.media.srtp is not None:
            log.info("srtp call_sid=%s %s", self.info.call_sid, self.media.srtp.summary())
        log_call_end(self.info.call_sid, status, reason, duration)
        self._sig.call_finished(self)
