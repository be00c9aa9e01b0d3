"""A small SIP-over-TLS user agent for the e2e tests (Debian's SIPp is built without TLS).

`TlsSipCall` opens one TLS connection (Python `ssl`, the server's certificate checked against
the test CA; plain TCP when given no CA file), sends an INVITE with an SDP offer (plain or
RTP/SAVP with an SDES a=crypto line), ACKs the final response, can send BYE, and answers the
server's BYE with 200. Messages are written by hand here and read with a Content-Length
framer of its own, so the server's SIP code is checked by an independent peer.
`srtp_pair()` gives the SRTP functions an `RtpPeer` needs (libsrtp through pylibsrtp).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pylibsrtp

SUITE = "AES_CM_128_HMAC_SHA1_80"


@dataclass
class SipMessage:
    first_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int | None:
        parts = self.first_line.split(" ", 2)
        return int(parts[1]) if parts[0] == "SIP/2.0" else None

    @property
    def method(self) -> str | None:
        return None if self.first_line.startswith("SIP/2.0") else self.first_line.split(" ")[0]

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def _parse(raw: bytes) -> SipMessage:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return SipMessage(lines[0], headers, body)


@dataclass
class TlsSipCall:
    """One call over its own TLS connection to host:port (see the module docstring)."""

    host: str
    port: int
    cafile: Path | None  # None: plain TCP
    from_user: str = "tls-caller"
    messages: list[SipMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=10)
        self.transport = "TLS" if self.cafile is not None else "TCP"
        if self.cafile is not None:
            ctx = ssl.create_default_context(cafile=str(self.cafile))
            self.sock: socket.socket = ctx.wrap_socket(raw, server_hostname=self.host)
        else:
            self.sock = raw
        # One SSL object is not safe to read and write from two threads at once: the reader
        # thread and the writers share `_io`, and reads wait at most 50 ms for data.
        self.sock.settimeout(0.05)
        self.local_port = int(self.sock.getsockname()[1])
        self.call_id = f"{random.getrandbits(64):x}@tls-e2e"
        self.from_tag = f"{random.getrandbits(32):x}"
        self.to_tag: str | None = None
        self.remote_target = ""
        self.cseq = 1
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._io = threading.Lock()
        self.bye_received = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, daemon=True, name="sip-tls")
        self._thread.start()

    # -- I/O ------------------------------------------------------------------------------

    def _write(self, text: str, body: bytes = b"") -> None:
        data = text.replace("\n", "\r\n").encode() + body
        with self._io:
            self.sock.sendall(data)

    def _read_loop(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                with self._io:
                    chunk = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                time.sleep(0.005)  # let a writer take the lock
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while True:
                buf = buf.lstrip(b"\r\n")
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                m = re.search(rb"(?im)^(content-length|l)\s*:\s*(\d+)", buf[:end])
                size = int(m.group(2)) if m else 0
                if len(buf) < end + 4 + size:
                    break
                msg = _parse(buf[: end + 4 + size])
                buf = buf[end + 4 + size :]
                if msg.method == "BYE":
                    self._reply(msg, 200, "OK")
                    self.bye_received.set()
                with self._cond:
                    self.messages.append(msg)
                    self._cond.notify_all()

    def _reply(self, req: SipMessage, status: int, reason: str) -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in req.all("Via")]
        lines += [f"{n}: {req.header(n)}" for n in ("From", "To", "Call-ID", "CSeq")]
        self._write("\n".join([*lines, "Content-Length: 0", "", ""]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            self.sock.close()

    def wait_response(self, method: str, cseq: int, timeout: float = 10.0) -> SipMessage:
        """The final response to our request `cseq` `method`."""

        def final() -> SipMessage | None:
            for m in self.messages:
                if (m.status is not None and m.status >= 200
                        and m.header("CSeq") == f"{cseq} {method}"):
                    return m
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: final() is not None, timeout):
                raise AssertionError(f"no final response to {method} within {timeout}s: "
                                     f"{[m.first_line for m in self.messages]}")
            found = final()
            assert found is not None
            return found

    # -- the call -------------------------------------------------------------------------

    def _headers(self, method: str, cseq: int, uri_to: str) -> str:
        branch = f"z9hG4bK{random.getrandbits(48):x}"
        to_tag = f";tag={self.to_tag}" if self.to_tag else ""
        return (
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.local_port};branch={branch};rport\n"
            f"Max-Forwards: 70\n"
            f"From: <sip:{self.from_user}@{self.host}>;tag={self.from_tag}\n"
            f"To: <{uri_to}>{to_tag}\n"
            f"Call-ID: {self.call_id}\n"
            f"CSeq: {cseq} {method}\n"
            f"Contact: <sip:{self.from_user}@{self.host}:{self.local_port};"
            f"transport={self.transport.lower()}>\n"
        )

    def invite(self, to_user: str, sdp: str, scheme: str = "sip") -> SipMessage:
        """INVITE (and ACK of the final response); returns that final response."""
        if scheme == "sips":
            self.uri = f"sips:{to_user}@{self.host}:{self.port}"
        else:
            self.uri = f"sip:{to_user}@{self.host}:{self.port};transport={self.transport.lower()}"
        body = sdp.replace("\n", "\r\n").encode()
        self._write(f"INVITE {self.uri} SIP/2.0\n" + self._headers("INVITE", 1, self.uri)
                    + f"Content-Type: application/sdp\nContent-Length: {len(body)}\n\n", body)
        resp = self.wait_response("INVITE", 1)
        to = resp.header("To") or ""
        m = re.search(r";tag=([^;>\s]+)", to)
        self.to_tag = m.group(1) if m else None
        contact = re.search(r"<([^>]+)>", resp.header("Contact") or "")
        self.remote_target = contact.group(1) if contact else self.uri
        ack_uri = self.remote_target if resp.status == 200 else self.uri
        self._write(f"ACK {ack_uri} SIP/2.0\n" + self._headers("ACK", 1, self.uri)
                    + "Content-Length: 0\n\n")
        return resp

    def bye(self) -> SipMessage:
        self.cseq += 1
        self._write(f"BYE {self.remote_target} SIP/2.0\n"
                    + self._headers("BYE", self.cseq, self.uri) + "Content-Length: 0\n\n")
        return self.wait_response("BYE", self.cseq)


def sdp_offer(rtp_port: int, key: bytes | None, host: str = "127.0.0.1") -> str:
    """An audio offer (PCMU, telephone-event): RTP/SAVP with our SDES key, or plain."""
    proto = "RTP/SAVP" if key is not None else "RTP/AVP"
    crypto = (f"a=crypto:1 {SUITE} inline:{base64.b64encode(key).decode()}\n"
              if key is not None else "")
    return (f"v=0\no=tls-e2e 1 1 IN IP4 {host}\ns=-\nc=IN IP4 {host}\nt=0 0\n"
            f"m=audio {rtp_port} {proto} 0 101\na=rtpmap:0 PCMU/8000\n"
            f"a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\na=ptime:20\n{crypto}"
            "a=sendrecv\n")


def answer_key(sdp: bytes) -> tuple[str, bytes]:
    """(the m= proto, the SDES key) of an SRTP answer."""
    text = sdp.decode()
    m = re.search(r"(?m)^m=audio \d+ (\S+)", text)
    c = re.search(rf"(?m)^a=crypto:1 {SUITE} inline:([A-Za-z0-9+/=]+)", text)
    assert m and c, f"no SRTP answer: {text!r}"
    return m.group(1), base64.b64decode(c.group(1))


def new_key() -> bytes:
    return os.urandom(30)


def srtp_pair(our_key: bytes, their_key: bytes
              ) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes | None]]:
    """(protect, unprotect) for an `RtpPeer`: ours protects what it sends, theirs checks
    what it receives (None: not authentic)."""
    profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    tx = pylibsrtp.Session(pylibsrtp.Policy(
        key=our_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = pylibsrtp.Session(pylibsrtp.Policy(
        key=their_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile))

    def unprotect(data: bytes) -> bytes | None:
        try:
            return rx.unprotect(data)
        except pylibsrtp.Error:
            return None

    return tx.protect, unprotect
