"""Which `--workers` process owns a SIP message: the sans-IO routing decision.

The workers of one machine share the SIP port (SO_REUSEPORT), and the kernel hands each
datagram to one of them by a hash of its source address, which changes when a caller changes
its source port and for every flow when the set of workers changes (one dies or restarts).
So a worker decides for every message it reads whose it is, without any lookup:

- Every branch and tag a worker makes ends with its mark `.w<index>`
  (`confroom.sip.message.set_owner_mark`). A request in a dialog carries our tag in its To
  header (ours as UAS and as UAC alike), and a response carries our branch in its top Via:
  the mark names the owner (ACKs, BYEs, re-INVITEs, INFOs, CANCEL of our INVITE's responses,
  responses to our BYE, INVITE, OPTIONS, INFO...).
- A request without a To tag over UDP (a new INVITE, its retransmissions, its CANCEL) goes
  to `crc32(Call-ID) % count`: every worker computes the same owner, so a retransmission or a
  CANCEL that lands elsewhere finds the worker that took the call and no second call is made,
  whatever the kernel does. When that worker cannot be reached (dead, not restarted yet) the
  next index is tried, wrapping round. The Call-ID hash also spreads calls that all come from
  one address (a trunk, an SBC) over the workers, which the kernel's hash would not.
- A request without a To tag over a stream (TCP, TLS, WebSocket) stays with the worker that
  holds the connection (a stream is never re-hashed; its answers must go back on it anyway);
  so does anything else without our mark (OPTIONS pings, REGISTER, garbage).

A forwarded message is handled where it arrives and never forwarded again.

`owners_of_bytes` makes the same decision from the raw bytes without parsing the whole
message (a forwarded message is parsed again by its owner, so a full parse here would be paid
twice); it gives up (None) on anything unusual, and the caller then parses and asks `owners`.
"""

from __future__ import annotations

import re
import zlib
from typing import Final

from confroom.sip.message import Request, Response, SipParseError
from confroom.sip.peer import Peer

MARK_PREFIX: Final = "w"
_NOT_MINE: Final[tuple[int, ...]] = ()


def worker_mark(index: int) -> str:
    """The mark worker `index` puts at the end of its branches and tags."""
    return f"{MARK_PREFIX}{index}"


def marked_worker(token: str | None) -> int | None:
    """The worker index in a branch or tag we made (`...<.w3>`), else None."""
    if not token:
        return None
    head, dot, mark = token.rpartition(".")
    if not dot or not head or len(mark) < 2 or mark[0] != MARK_PREFIX:
        return None
    digits = mark[1:]
    if not digits.isdigit() or len(digits) > 4:
        return None
    return int(digits)


def call_id_worker(call_id: str, count: int) -> int:
    """The worker that takes a new call with this Call-ID (same answer in every process)."""
    return zlib.crc32(call_id.encode("utf-8", "surrogateescape")) % count


def owners(msg: Request | Response, peer: Peer, index: int, count: int) -> tuple[int, ...]:
    """The workers to offer `msg` to, in order, when worker `index` of `count` read it from
    `peer`: () means "handle it here". The caller forwards to the first one it can reach
    and handles the message itself when it reaches `index` in the list or runs out."""
    if count <= 1:
        return _NOT_MINE
    try:
        if isinstance(msg, Response):
            owner = marked_worker(msg.top_via.branch)
        else:
            to_tag = msg.to_tag
            if to_tag is not None:
                owner = marked_worker(to_tag)
            elif msg.method in ("INVITE", "CANCEL") and not peer.reliable:
                first = call_id_worker(msg.call_id, count)
                if first == index:
                    return _NOT_MINE
                return tuple((first + k) % count for k in range(count))
            else:
                return _NOT_MINE
    except SipParseError:
        return _NOT_MINE  # the core answers it (400) or drops it
    if owner is None or owner == index or owner >= count:
        return _NOT_MINE
    return (owner,)


_TAG = re.compile(rb";\s*tag\s*=\s*([^;,\s]+)", re.IGNORECASE)
_BRANCH = re.compile(rb";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)
_TO: Final = (b"to", b"t")
_VIA: Final = (b"via", b"v")
_CALL_ID: Final = (b"call-id", b"i")


def owners_of_bytes(data: bytes, peer: Peer, index: int,
                    count: int) -> tuple[int, ...] | None:
    """`owners` decided on the raw message, reading only its start line and its first To
    (request) or Via (response) header and Call-ID; None when it cannot tell cheaply
    (folded or repeated headers, no blank line, anything odd): then parse and ask `owners`."""
    if count <= 1:
        return _NOT_MINE
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    start = lines[0]
    response = start.startswith(b"SIP/2.0 ")
    method = b"" if response else start.partition(b" ")[0]
    if not response and (not method or not start.endswith(b" SIP/2.0")):
        return None
    want = _VIA if response else _TO
    value: bytes | None = None
    call_id: bytes | None = None
    for line in lines[1:]:
        if not line or line[0] in b" \t":
            return None  # folded: leave it to the parser
        name, colon, rest = line.partition(b":")
        if not colon:
            return None
        name = name.rstrip().lower()
        if name in want:
            if value is not None:
                return None  # a second one: the parser knows which counts
            value = rest
        elif name in _CALL_ID:
            if call_id is not None:
                return None
            call_id = rest.strip()
    if value is None or not call_id or not call_id.isascii():
        return None
    if response:
        first_via = value.partition(b",")[0]
        m = _BRANCH.search(first_via)
        owner = marked_worker(m.group(1).decode("ascii", "replace")) if m else None
    else:
        params = value.rpartition(b">")[2] if b"<" in value else value
        if b'"' in params:
            return None
        m = _TAG.search(params)
        if m is not None:
            owner = marked_worker(m.group(1).decode("ascii", "replace"))
        elif method in (b"INVITE", b"CANCEL") and not peer.reliable:
            first = zlib.crc32(call_id) % count
            if first == index:
                return _NOT_MINE
            return tuple((first + k) % count for k in range(count))
        else:
            return _NOT_MINE
    if owner is None or owner == index or owner >= count:
        return _NOT_MINE
    return (owner,)
