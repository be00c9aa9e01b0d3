"""SipTransports' TCP listener against real loopback sockets: caps per source address and in
total (the refused connection is closed at once, one summary line is logged), the first-message
and slow-message deadlines, the idle timeout and a call's hold on its connection, the message
size limit, and the same for SIP over TLS. Several source addresses come from 127.0.0.0/8 (all
local on Linux)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from confroom.connlimits import Limits
from confroom.sip.peer import Peer
from confroom.sip.transport import SipTransports
from confroom.tls import server_context

OPTIONS = (
    b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-1\r\n"
    b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: c1\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Listener:
    def __init__(self, limits: Limits, max_message_bytes: int = 65536) -> None:
        self.got: list[tuple[bytes, Peer]] = []
        self.tr = SipTransports(lambda raw, peer: self.got.append((raw, peer)))
        self.tr.configure(limits, max_message_bytes)
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Listener:
        await self.tr.start("127.0.0.1", 0, ("tcp",))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self.writers:
            w.close()
        await self.tr.close()

    async def connect(self, source: str = "127.0.0.1") -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", self.tr.port, local_addr=(source, 0))
        self.writers.append(w)
        return r, w

    async def wait_received(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.got) < n:
                await asyncio.sleep(0.01)


async def closed_by_server(conn: Conn, timeout: float = 5.0) -> bool:
    """True when the server closes (EOF or reset) within `timeout`."""
    try:
        data = await asyncio.wait_for(conn[0].read(4096), timeout)
    except (ConnectionError, TimeoutError) as e:
        return not isinstance(e, TimeoutError)
    return data == b""


async def test_caps_per_source_and_in_total(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "confroom.sip.transport")
    lim = Limits(max_total=3, max_per_source=2, message_timeout=30.0, idle_timeout=30.0)
    async with Listener(lim) as srv:
        a1 = await srv.connect("127.0.0.1")
        a2 = await srv.connect("127.0.0.1")
        a3 = await srv.connect("127.0.0.1")  # over the per-source cap
        assert await closed_by_server(a3)
        b1 = await srv.connect("127.0.0.2")
        for _, w in (a1, a2, b1):  # all three busy: none waits for a message
            w.write(OPTIONS)
        await srv.wait_received(3)
        c1 = await srv.connect("127.0.0.3")  # over the total cap
        assert await closed_by_server(c1)
        assert {p.host for _, p in srv.got} == {"127.0.0.1", "127.0.0.2"}
        assert srv.tr.tcp_connections == 3
        async with asyncio.timeout(5):  # the sweep writes the summary line
            while not any("refused" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == 1
        assert "refused 2 connection(s)" in lines[0]
        assert "per-source cap (2)" in lines[0] and "total cap (3)" in lines[0]
        # a closed connection frees its slot
        a1[1].close()
        await asyncio.sleep(0.1)
        d1 = await srv.connect("127.0.0.4")
        d1[1].write(OPTIONS)
        await srv.wait_received(4)


async def test_silent_connections_make_room_at_the_total_cap() -> None:
    lim = Limits(max_total=3, max_per_source=10, message_timeout=30.0, idle_timeout=30.0)
    async with Listener(lim) as srv:
        busy = await srv.connect("127.0.0.2")
        busy[1].write(OPTIONS)
        await srv.wait_received(1)
        silent1 = await srv.connect("127.0.0.3")
        silent2 = await srv.connect("127.0.0.4")
        newcomer = await srv.connect("127.0.0.5")  # in place of the longest-waiting one
        assert await closed_by_server(silent1)
        assert not await closed_by_server(silent2, timeout=0.3)
        newcomer[1].write(OPTIONS)
        await srv.wait_received(2)
        assert srv.got[-1][1].host == "127.0.0.5"
        assert not await closed_by_server(busy, timeout=0.1)
        assert srv.tr.tcp_connections == 3


async def test_message_and_idle_deadlines_and_a_calls_hold() -> None:
    lim = Limits(max_total=20, max_per_source=20, message_timeout=0.6, idle_timeout=1.2)
    loop = asyncio.get_running_loop()
    async with Listener(lim) as srv:
        t0 = loop.time()
        silent = await srv.connect()
        idle = await srv.connect()
        held = await srv.connect()
        slow = await srv.connect()
        crlf = await srv.connect()
        for _, w in (idle, held, slow):
            w.write(OPTIONS)
        await srv.wait_received(3)
        held_peer = next(p for _, p in srv.got
                         if p.port == held[1].get_extra_info("sockname")[1])
        srv.tr.hold(held_peer)  # as the server does while a call uses the connection
        slow[1].write(OPTIONS[:40])  # the start of a message that never completes
        crlf[1].write(b"\r\n\r\n")  # keep-alives are not a message

        assert await closed_by_server(silent)
        assert await closed_by_server(crlf)
        assert await closed_by_server(slow)
        assert 0.6 <= loop.time() - t0 < 3.0
        assert await closed_by_server(idle)
        assert 1.2 <= loop.time() - t0 < 4.0
        assert not await closed_by_server(held, timeout=1.0)  # held: kept beyond the timeout
        held[1].write(OPTIONS)  # and still works
        await srv.wait_received(4)
        srv.tr.release(held_peer)
        t1 = loop.time()
        assert await closed_by_server(held)
        assert 1.0 <= loop.time() - t1 < 4.0
        assert srv.tr.tcp_connections == 0


async def test_a_message_over_the_size_limit_closes_the_connection() -> None:
    lim = Limits(max_total=5, max_per_source=5, message_timeout=30.0, idle_timeout=30.0)
    async with Listener(lim, max_message_bytes=4096) as srv:
        conn = await srv.connect()
        head = OPTIONS.replace(b"Content-Length: 0\r\n", b"X-Pad: " + b"p" * 5000 + b"\r\n"
                               b"Content-Length: 0\r\n")
        conn[1].write(head)
        assert await closed_by_server(conn)
        big_body = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 5000")
        conn2 = await srv.connect()
        conn2[1].write(big_body)
        assert await closed_by_server(conn2)
        assert srv.got == []


async def test_the_same_limits_apply_to_sip_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tls_port = s.getsockname()[1]
    lim = Limits(max_total=5, max_per_source=1, message_timeout=0.6, idle_timeout=30.0)
    srv = Listener(lim)
    await srv.tr.start("127.0.0.1", 0, (), tls_port,
                       server_context(tmp_path / "cert.pem", tmp_path / "key.pem"))
    try:
        first = await asyncio.open_connection("127.0.0.1", srv.tr.tls_port, ssl=client_ctx)
        second = await asyncio.open_connection("127.0.0.1", srv.tr.tls_port, ssl=client_ctx)
        assert await closed_by_server(second)  # over the per-source cap of 1
        first[1].write(OPTIONS)
        await srv.wait_received(1)
        assert srv.got[0][1].transport == "tls"
        first[1].write(OPTIONS[:30])  # a message that never completes
        assert await closed_by_server(first)
        assert srv.tr.tcp_connections == 0
    finally:
        await srv.__aexit__()
