"""A minimal SIP user agent client over UDP for the load generator (INVITE/ACK/BYE).

Just enough RFC 3261 to place many calls against one server on 127.0.0.1: the INVITE is
retransmitted every 0.5 s until any response arrives (then the final response is awaited),
provisional responses are ignored, a 2xx is ACKed (again on every retransmitted 2xx), the
answer SDP yields the server's RTP address, and BYE is retransmitted until answered. Requests
from the server (BYE, OPTIONS, INFO, ...) are answered 200.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from dataclasses import dataclass, field

__all__ = ["Call", "SipError", "SipUac"]

_RETRANSMIT = 0.5


class SipError(Exception):
    pass


@dataclass(slots=True)
class Call:
    call_id: str
    from_user: str
    to_user: str
    from_tag: str
    rtp_port: int
    to_tag: str = ""
    remote_target: str = ""
    remote_rtp: tuple[str, int] | None = None
    status: int = 0
    ack: bytes = b""
    established: bool = False
    ended_by_server: bool = False
    setup_time: float = 0.0
    _waiters: dict[str, asyncio.Future[tuple[int, dict[str, str], str]]] = field(
        default_factory=dict
    )


def _parse(data: bytes) -> tuple[str, dict[str, str], str]:
    text = data.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: dict[str, str] = {}
    compact = {
        "i": "call-id", "f": "from", "t": "to", "m": "contact", "v": "via", "l": "content-length"
    }
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        key = compact.get(key, key)
        if key == "via" and key in headers:
            headers[key] += "," + value.strip()  # keep all Vias in order
        else:
            headers.setdefault(key, value.strip())
    return lines[0], headers, body


_TAG = re.compile(r";\s*tag=([^;>\s]+)")
_URI = re.compile(r"<([^>]+)>")


class SipUac(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int], local_host: str = "127.0.0.1") -> None:
        self.server = server
        self.local_host = local_host
        self.local_port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.calls: dict[str, Call] = {}
        self._branch = itertools.count(1)
        self.retransmits = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.local_host, 0)
        )
        self.transport = transport
        self.local_port = transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- receiving ------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        if not data.strip():
            return  # keepalive
        first, headers, body = _parse(data)
        call = self.calls.get(headers.get("call-id", ""))
        if first.startswith("SIP/2.0 "):
            code = int(first[8:11])
            method = headers.get("cseq", " ").split()[-1]
            if call is None:
                return
            if method == "INVITE" and 200 <= code < 300 and call.established and call.ack:
                self._send(call.ack)  # our ACK got lost: the server retransmits its 2xx
                return
            fut = call._waiters.get(method)
            if fut is not None and not fut.done():
                if code < 200:
                    fut_p = call._waiters.get(method + "/prov")
                    if fut_p is not None and not fut_p.done():
                        fut_p.set_result((code, headers, body))
                else:
                    fut.set_result((code, headers, body))
            return
        # a request from the server
        method = first.split(" ", 1)[0]
        if method == "ACK":
            return
        if method == "BYE" and call is not None:
            call.ended_by_server = True
            call.established = False
        resp = (
            "SIP/2.0 200 OK\r\n"
            f"Via: {headers.get('via', '')}\r\n"
            f"From: {headers.get('from', '')}\r\n"
            f"To: {headers.get('to', '')}\r\n"
            f"Call-ID: {headers.get('call-id', '')}\r\n"
            f"CSeq: {headers.get('cseq', '')}\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        self._send(resp.encode(), addr)

    def error_received(self, exc: Exception) -> None:
        pass

    # --- sending --------------------------------------------------------------------------

    def _send(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr or self.server)

    def _from(self, call: Call) -> str:
        return f"<sip:{call.from_user}@{self.local_host}:{self.local_port}>;tag={call.from_tag}"

    def _via(self) -> str:
        branch = f"z9hG4bK{next(self._branch)}x"
        return f"SIP/2.0/UDP {self.local_host}:{self.local_port};branch={branch};rport"

    async def _transaction(
        self, call: Call, method: str, msg: bytes, timeout: float
    ) -> tuple[int, dict[str, str], str]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, dict[str, str], str]] = loop.create_future()
        prov: asyncio.Future[tuple[int, dict[str, str], str]] = loop.create_future()
        call._waiters[method] = fut
        call._waiters[method + "/prov"] = prov
        deadline = loop.time() + timeout
        try:
            self._send(msg)
            # retransmit every 0.5 s until any response (provisional or final) arrives
            while not fut.done() and not prov.done():
                left = deadline - loop.time()
                if left <= 0:
                    raise SipError(f"{method} {call.call_id}: no response")
                await asyncio.wait([fut, prov], timeout=min(_RETRANSMIT, left))
                if not fut.done() and not prov.done():
                    self.retransmits += 1
                    self._send(msg)
            left = deadline - loop.time()
            if left <= 0:
                raise SipError(f"{method} {call.call_id}: no final response")
            return await asyncio.wait_for(fut, left)
        except TimeoutError as e:
            raise SipError(f"{method} {call.call_id}: no final response") from e
        finally:
            call._waiters.pop(method, None)
            call._waiters.pop(method + "/prov", None)

    async def invite(self, call: Call, timeout: float = 30.0) -> Call:
        """Place the call; on return it is established (ACK sent) or SipError is raised."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.calls[call.call_id] = call
        sdp = (
            "v=0\r\n"
            f"o=bench {call.rtp_port} 1 IN IP4 {self.local_host}\r\n"
            "s=bench\r\n"
            f"c=IN IP4 {self.local_host}\r\n"
            "t=0 0\r\n"
            f"m=audio {call.rtp_port} RTP/AVP 0 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=fmtp:101 0-16\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n"
        )
        host, port = self.server
        msg = (
            f"INVITE sip:{call.to_user}@{host}:{port} SIP/2.0\r\n"
            f"Via: {self._via()}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: {self._from(call)}\r\n"
            f"To: <sip:{call.to_user}@{host}:{port}>\r\n"
            f"Call-ID: {call.call_id}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:{call.from_user}@{self.local_host}:{self.local_port}>\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
        ).encode()
        code, headers, body = await self._transaction(call, "INVITE", msg, timeout)
        call.status = code
        if not 200 <= code < 300:
            raise SipError(f"INVITE {call.call_id}: {code}")
        m = _TAG.search(headers.get("to", ""))
        call.to_tag = m.group(1) if m else ""
        c = _URI.search(headers.get("contact", ""))
        call.remote_target = c.group(1) if c else f"sip:{call.to_user}@{host}:{port}"
        ip = re.search(r"c=IN IP4 (\S+)", body)
        mport = re.search(r"m=audio (\d+)", body)
        if ip and mport:
            call.remote_rtp = (ip.group(1), int(mport.group(1)))
        call.ack = (
            f"ACK {call.remote_target} SIP/2.0\r\n"
            f"Via: {self._via()}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: {self._from(call)}\r\n"
            f"To: <sip:{call.to_user}@{host}:{port}>;tag={call.to_tag}\r\n"
            f"Call-ID: {call.call_id}\r\n"
            "CSeq: 1 ACK\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        self._send(call.ack)
        call.established = True
        call.setup_time = loop.time() - t0
        return call

    async def bye(self, call: Call, timeout: float = 10.0) -> int:
        if not call.established:
            return 0
        host, port = self.server
        msg = (
            f"BYE {call.remote_target} SIP/2.0\r\n"
            f"Via: {self._via()}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: {self._from(call)}\r\n"
            f"To: <sip:{call.to_user}@{host}:{port}>;tag={call.to_tag}\r\n"
            f"Call-ID: {call.call_id}\r\n"
            "CSeq: 2 BYE\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        call.established = False
        code, _, _ = await self._transaction(call, "BYE", msg, timeout)
        return code
