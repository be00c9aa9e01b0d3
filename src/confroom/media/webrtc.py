"""`WebRtcTransport`: ICE-lite + DTLS-SRTP on one call's RTP port (rtcp-mux), sans-IO.

A WebRTC member's session (`MediaSession.webrtc`) hands every datagram whose first byte is
below 128 here (RFC 7983: STUN 0-3, DTLS 20-63); RTP/RTCP (128-191) stays on the session's
path and is SRTP. STUN checks are answered by `IceLite`; DTLS is accepted only from the
address of a valid ICE check (a stranger cannot start a handshake). What is to be sent back
collects in `outbox` (datagram, address), flushed by the media engine once per tick together
with `poll()` (DTLS retransmissions and the handshake deadline). When the handshake completes,
`srtp` is the call's SRTP context and `selected` the browser's address: only then does the
engine send it audio.

ICE consent freshness (RFC 7675): a browser keeps sending checks (Chromium every ~5 s) for as
long as it wants our media. When no valid check has come for `CONSENT_TIMEOUT` (30 s, the RFC's
value) consent is lost: `error` says so and the engine ends the call with one log line, as for
a failed handshake, so a browser tab that vanished without a BYE does not stay a member (and
we stop sending it audio).
"""

from __future__ import annotations

import logging

from confroom.media.dtls import DEFAULT_TIMEOUT, DtlsIdentity, DtlsSrtp
from confroom.media.ice import IceLite, is_dtls, is_stun
from confroom.media.srtp import SrtpContext

__all__ = ["WebRtcTransport"]

log = logging.getLogger(__name__)

CONSENT_TIMEOUT = 30.0  # s without a valid ICE check: consent lost (RFC 7675 section 5.1)


class WebRtcTransport:
    """One call's ICE-lite responder and DTLS-SRTP association (see the module docstring)."""

    __slots__ = ("consent_at", "consent_lost", "consent_timeout", "dtls", "dtls_dropped",
                 "failure_reported", "ice", "outbox")

    def __init__(self, identity: DtlsIdentity, remote_fingerprint: str,
                 remote_ufrag: str | None, now: float,
                 timeout: float = DEFAULT_TIMEOUT,
                 consent_timeout: float = CONSENT_TIMEOUT) -> None:
        self.ice = IceLite(remote_ufrag)
        self.consent_at = now  # the latest valid ICE check (the start until there is one)
        self.consent_timeout = consent_timeout
        self.consent_lost: str | None = None
        self.dtls = DtlsSrtp(identity, remote_fingerprint, now, server=True, timeout=timeout)
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.dtls_dropped = 0  # DTLS datagrams from an address without a valid ICE check
        self.failure_reported = False

    @property
    def srtp(self) -> SrtpContext | None:
        return self.dtls.srtp

    @property
    def selected(self) -> tuple[str, int] | None:
        return self.ice.selected

    @property
    def error(self) -> str | None:
        """Why the media cannot go on (handshake failed or timed out, consent lost), or None."""
        return self.dtls.error or self.consent_lost

    def handle(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """One STUN or DTLS datagram (first byte < 128) from `addr`."""
        first = data[0]
        if is_stun(first):
            resp = self.ice.handle(data, addr)
            if resp is not None:
                self.outbox.append((resp, addr))
                self.consent_at = now
        elif is_dtls(first):
            if addr != self.ice.selected:
                self.dtls_dropped += 1
                return
            for out in self.dtls.feed(data, now):
                self.outbox.append((out, addr))

    def poll(self, now: float) -> None:
        """Once per tick: DTLS retransmissions, the handshake deadline and consent."""
        if self.consent_lost is None and now - self.consent_at > self.consent_timeout:
            self.consent_lost = (f"ICE consent lost: no valid check for "
                                 f"{now - self.consent_at:.0f} s (RFC 7675)")
        if self.dtls.srtp is not None or self.dtls.error is not None:
            return
        addr = self.ice.selected
        out = self.dtls.poll(now)
        if addr is not None:
            for data in out:
                self.outbox.append((data, addr))
