"""The `[security]` policy for an incoming call (SIP over TLS, SRTP), sans-IO.

`check_transport()` decides before the SDP is looked at: a call whose app (or the global
`[security] tls`) is "required" must come over SIP over TLS, and a `sips:` Request-URI is
only accepted over TLS (RFC 3261 section 26.2); either is refused with `403` and a Warning.
An SRTP policy of "required" is applied by `negotiate(..., require_srtp=True)`; a refusal is
`488` with `SRTP_REQUIRED_WARNING`.

SDES keys over plain UDP/TCP (RFC 4568 section 8.3 wants them only over a secure channel):
answered with SRTP (the media is still encrypted and authenticated against anybody who does
not see the signalling), with our key in the answer; `insecure_keys()` says so for the call's
log line. An operator who wants no key in clear sets `tls = "required"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["SRTP_REQUIRED_WARNING", "Refusal", "check_transport", "insecure_keys"]

SRTP_REQUIRED_WARNING: Final = (
    '302 confroom "Incompatible transport protocol: SRTP (RTP/SAVP with a=crypto) required"'
)


@dataclass(frozen=True)
class Refusal:
    """How to refuse an INVITE: status, reason phrase, Warning header value, log reason."""

    status: int
    reason: str
    warning: str
    why: str


def check_transport(transport: str, request_uri: str, tls_policy: str) -> Refusal | None:
    """None when an INVITE received over `transport` to `request_uri` may proceed."""
    if transport in ("tls", "wss"):
        return None
    if request_uri[:5].lower() == "sips:":
        return Refusal(403, "SIPS Requires TLS",
                       '399 confroom "a sips: URI needs SIP over TLS"', "sips over plain")
    if tls_policy == "required":
        return Refusal(403, "TLS Required", '399 confroom "SIP over TLS is required"',
                       "tls required")
    return None


def insecure_keys(transport: str) -> bool:
    """True when SDES keys received and sent over `transport` travel in clear."""
    return transport not in ("tls", "wss")
