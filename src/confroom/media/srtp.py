"""`SrtpContext`: one call's SRTP (RFC 3711) keys and state, both directions, via libsrtp.

Keys come from SDES (RFC 4568, `confroom.sip.sdp.Crypto`): the remote's key unprotects what
it sends, our key (`new_key()`, fresh per call) protects what we send. The crypto is
libsrtp's (`pylibsrtp`); this module only picks the profile and keeps the counters. A packet
that fails authentication or the replay check is dropped and counted, never decoded; the
first failure of a call is logged, the total goes into the call's end line (`summary()`).
RTCP arriving on the RTP port (rtcp-mux) is dropped without counting it as a failure.
"""

from __future__ import annotations

import logging
import os
from typing import Final

import pylibsrtp

from confroom.sip.sdp import SRTP_KEY_LEN

__all__ = ["SrtpContext", "new_key"]

log = logging.getLogger(__name__)

_PROFILES: Final = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
_REPLAY_WINDOW: Final = 1024  # packets: generous for reordering, still a replay check


def new_key() -> bytes:
    """A fresh master key and salt for our direction."""
    return os.urandom(SRTP_KEY_LEN)


class SrtpContext:
    """Both directions of one call's SRTP (see the module docstring)."""

    __slots__ = ("_rx", "_tx", "auth_failures", "label", "protect_errors", "suite",
                 "unprotected")

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes, label: str = "") -> None:
        profile = _PROFILES.get(suite)
        if profile is None:
            raise ValueError(f"unsupported SRTP suite {suite!r}")
        self.suite = suite
        self.label = label  # names the call in the log
        rx = pylibsrtp.Policy(key=remote_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                              srtp_profile=profile)
        rx.window_size = _REPLAY_WINDOW
        tx = pylibsrtp.Policy(key=local_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=profile)
        self._rx = pylibsrtp.Session(rx)
        self._tx = pylibsrtp.Session(tx)
        self.unprotected = 0  # packets authenticated and decrypted
        self.auth_failures = 0  # packets dropped: authentication or replay check failed
        self.protect_errors = 0

    def unprotect(self, data: bytes) -> bytes | None:
        """The plain RTP packet, or None (dropped: not authentic, replayed, or RTCP)."""
        if len(data) >= 2 and 72 <= (data[1] & 0x7F) <= 76:
            return None  # SRTCP on a muxed port (payload types 200-204): not audio
        try:
            plain = self._rx.unprotect(data)
        except pylibsrtp.Error as e:
            self.auth_failures += 1
            if self.auth_failures == 1:
                log.warning("srtp %s: dropping unauthenticated packet(s) (%s); counted, "
                            "summarised when the call ends", self.label, e)
            return None
        self.unprotected += 1
        return plain

    def protect(self, packet: bytes) -> bytes | None:
        """The SRTP packet for a plain RTP packet of ours (None if libsrtp refuses it)."""
        try:
            return self._tx.protect(packet)
        except pylibsrtp.Error as e:
            self.protect_errors += 1
            if self.protect_errors == 1:
                log.warning("srtp %s: cannot protect a packet: %s", self.label, e)
            return None

    def summary(self) -> str:
        return (f"suite={self.suite} received={self.unprotected} "
                f"rejected={self.auth_failures} protect_errors={self.protect_errors}")
