"""`IceLite`: the ICE-lite responder (RFC 8445 section 2.5) of one WebRTC call, sans-IO.

A lite agent never sends checks; it answers the browser's STUN Binding requests on the call's
RTP port. A request is answered (success, with XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY keyed
with our ice-pwd, FINGERPRINT) only when its USERNAME is `<our ufrag>:<theirs>` and its
MESSAGE-INTEGRITY checks out with our password; anything else gets no answer and is counted
(`rejected`), so a stranger cannot make us send to an address of its choice. The address of
the latest valid check (the browser nominates with USE-CANDIDATE; with one host candidate on
our side every valid check is the same pair) is `selected`: where media and DTLS go. The STUN
encoding is `aioice.stun`'s; only the responder logic is here.

`is_stun(first_byte)` is the RFC 7983 demultiplexing test (0-3: STUN, 20-63: DTLS, 128-191:
RTP/RTCP).
"""

from __future__ import annotations

import secrets

from aioice import stun

__all__ = ["IceLite", "is_dtls", "is_stun"]


def is_stun(first_byte: int) -> bool:
    return first_byte < 4


def is_dtls(first_byte: int) -> bool:
    return 20 <= first_byte <= 63


class IceLite:
    """Our ICE credentials for one call and the checks received (see the module docstring)."""

    __slots__ = (
        "_key",
        "answered",
        "local_pwd",
        "local_ufrag",
        "rejected",
        "remote_ufrag",
        "selected",
    )

    def __init__(self, remote_ufrag: str | None = None) -> None:
        # RFC 8445 section 5.3: ufrag >= 24 bits, pwd >= 128 bits of randomness (ice-chars)
        self.local_ufrag = secrets.token_hex(4)
        self.local_pwd = secrets.token_hex(16)
        self._key = self.local_pwd.encode()
        self.remote_ufrag = remote_ufrag  # from the offer's a=ice-ufrag (checked when given)
        self.answered = 0
        self.rejected = 0
        self.selected: tuple[str, int] | None = None

    def handle(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        """The response to send back to `addr` for the STUN datagram `data`, or None."""
        try:
            msg = stun.parse_message(data)
        except ValueError:
            self.rejected += 1
            return None
        if msg.message_method != stun.Method.BINDING or \
                msg.message_class != stun.Class.REQUEST:
            return None  # indications (keepalives) and stray responses need no answer
        username = msg.attributes.get("USERNAME")
        if not isinstance(username, str):
            self.rejected += 1
            return None
        ours, _, theirs = username.partition(":")
        if ours != self.local_ufrag or (self.remote_ufrag is not None
                                        and theirs != self.remote_ufrag):
            self.rejected += 1
            return None
        if "MESSAGE-INTEGRITY" not in msg.attributes or \
                not msg.check_message_integrity(self._key):
            self.rejected += 1
            return None
        resp = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                            transaction_id=msg.transaction_id)
        resp.attributes["XOR-MAPPED-ADDRESS"] = addr
        resp.add_message_integrity(self._key)
        self.answered += 1
        self.selected = addr
        return bytes(resp)
