"""SIP over WebSocket (`confroom.sip.websocket`) on a real aiohttp server with a real client:
one SIP message per frame in, replies on the same connection, bad input closed clearly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import WSMsgType, web

from confroom.sip.peer import Peer
from confroom.sip.websocket import SipWebSocket

OPTIONS = (
    "OPTIONS sip:conf@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKwsopt1\r\n"
    "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:conf@example.com>\r\n"
    "Call-ID: ws-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)

Scenario = Callable[[SipWebSocket, str, list[tuple[bytes, Peer]]], Awaitable[None]]


def _run(scenario: Scenario, max_message_bytes: int = 65536) -> None:
    async def main() -> None:
        got: list[tuple[bytes, Peer]] = []
        ep = SipWebSocket(lambda data, peer: got.append((data, peer)), secure=False,
                          max_message_bytes=max_message_bytes)
        app = web.Application()
        app.router.add_get("/sip", ep.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await scenario(ep, f"http://127.0.0.1:{port}/sip", got)
        finally:
            await ep.close()
            await runner.cleanup()

    asyncio.run(main())


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def test_one_message_per_frame_and_replies_on_the_same_connection() -> None:
    async def scenario(ep: SipWebSocket, url: str, got: list[tuple[bytes, Peer]]) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(url, protocols=("sip",)) as ws:
            assert ws.protocol == "sip"
            await ws.send_str(OPTIONS)
            await ws.send_bytes(OPTIONS.replace("ws-1", "ws-2").encode())
            await _until(lambda: len(got) == 2)
            assert got[0][0] == OPTIONS.encode()
            assert b"Call-ID: ws-2" in got[1][0]
            peer = got[0][1]
            assert peer.transport == "ws" and peer.websocket and peer.reliable
            assert peer.host == "127.0.0.1" and peer.port == ws.get_extra_info("sockname")[1]
            assert ep.connections == 1
            ep.send(peer, b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.TEXT
            assert msg.data.startswith("SIP/2.0 200 OK")
        await _until(lambda: ep.connections == 0)
        ep.send(peer, b"SIP/2.0 200 OK\r\n\r\n")  # gone: dropped and counted, no error
        assert ep.dropped == 1

    _run(scenario)


def test_garbage_frame_is_closed_with_1003_and_not_passed_on() -> None:
    async def scenario(ep: SipWebSocket, url: str, got: list[tuple[bytes, Peer]]) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(url, protocols=("sip",)) as ws:
            await ws.send_bytes(b"\x00\xffhello, not SIP\r\n\r\n")
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.CLOSE
            assert msg.data == 1003 and msg.extra == "not a SIP message"
        assert got == [] and ep.refused == 1

    _run(scenario)


def test_ten_megabyte_frame_is_closed_with_1009() -> None:
    async def scenario(ep: SipWebSocket, url: str, got: list[tuple[bytes, Peer]]) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(url, protocols=("sip",)) as ws:
            # the server may close while the frame is still being written
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(OPTIONS.encode() + b"x" * (10 << 20))
            msg = await ws.receive(timeout=10)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
            if msg.type == WSMsgType.CLOSE:
                assert msg.data == 1009
        await _until(lambda: ep.connections == 0)
        assert got == [] and ep.refused == 1

    _run(scenario)


def test_a_client_without_the_sip_subprotocol_is_refused() -> None:
    async def scenario(ep: SipWebSocket, url: str, got: list[tuple[bytes, Peer]]) -> None:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(url):
                    raise AssertionError("upgrade accepted without the sip subprotocol")
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 400
        assert ep.refused == 1 and ep.connections == 0

    _run(scenario)
