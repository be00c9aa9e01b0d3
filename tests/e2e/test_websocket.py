"""SIP over WebSocket (RFC 7118) end to end: callers on `ws://.../sip` of the HTTP port join a
conference like UDP callers (INVITE, 200 with WS Via/Contact, ACK, audio heard on the wire,
BYE), and garbage closes the connection without hurting the server."""

from __future__ import annotations

import asyncio
import re
import uuid

import aiohttp
import pytest
from conftest import ConfroomFactory
from harness import (
    HOST,
    ConfroomProcess,
    RtpPeer,
    dominant_frequency,
    free_tcp_port,
    tone,
)

pytestmark = pytest.mark.e2e


def _sdp(rtp: RtpPeer) -> str:
    host, port = rtp.address
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


class WsCaller:
    """A minimal RFC 7118 UAC over an aiohttp WebSocket: INVITE/ACK/BYE of one call."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, user: str) -> None:
        self.ws = ws
        self.user = user
        self.call_id = f"{uuid.uuid4().hex}@ws.invalid"
        self.tag = uuid.uuid4().hex[:8]
        self.to_tag = ""

    def _request(self, method: str, cseq: int, body: str = "") -> str:
        to = "<sip:conf@confroom>" + (f";tag={self.to_tag}" if self.to_tag else "")
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} sip:conf@confroom SIP/2.0\r\n"
                f"Via: SIP/2.0/WS {self.user}.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@ws.invalid>;tag={self.tag}\r\n"
                f"To: {to}\r\nCall-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:{self.user}@{self.user}.invalid;transport=ws>\r\n"
                f"{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}")

    async def final_response(self) -> str:
        while True:
            msg = await self.ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            text: str = msg.data
            status = int(text.split(" ", 2)[1])
            if status >= 200:
                return text

    async def invite(self, rtp: RtpPeer) -> str:
        await self.ws.send_str(self._request("INVITE", 1, _sdp(rtp)))
        resp = await self.final_response()
        m = re.search(r"^To:.*;tag=([^;\r\n]+)", resp, re.M)
        assert m is not None, resp
        self.to_tag = m.group(1)
        await self.ws.send_str(self._request("ACK", 1))
        return resp

    async def bye(self) -> str:
        await self.ws.send_str(self._request("BYE", 2))
        return await self.final_response()


def _rtp_target(answer: str) -> tuple[str, int]:
    host = re.search(r"^c=IN IP4 (\S+)", answer, re.M)
    port = re.search(r"^m=audio (\d+)", answer, re.M)
    assert host is not None and port is not None, answer
    return host.group(1), int(port.group(1))


def test_websocket_callers_join_a_conference_and_hear_each_other(
    confroom: ConfroomFactory, rtp_peer_factory: type[RtpPeer]
) -> None:
    port = free_tcp_port()
    srv: ConfroomProcess = confroom(
        verbs=[{"verb": "conference", "name": "ws-room"}],
        extra_toml={"http": {"port": port, "token": "ws-e2e-token"}})
    srv.wait_log(rf"ws on {re.escape(HOST)}:{port}/sip")
    alice_rtp, bob_rtp = rtp_peer_factory(), rtp_peer_factory()
    url = f"http://{HOST}:{port}/sip"

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(url, protocols=("sip",)) as ws_a, \
                s.ws_connect(url, protocols=("sip",)) as ws_b:
            alice, bob = WsCaller(ws_a, "alice"), WsCaller(ws_b, "bob")
            ok_a = await alice.invite(alice_rtp)
            ok_b = await bob.invite(bob_rtp)
            for ok in (ok_a, ok_b):
                assert ok.startswith("SIP/2.0 200"), ok
                assert re.search(r"^Via: SIP/2.0/WS \S+;branch=", ok, re.M)
                assert re.search(rf"^Contact: <sip:confroom@[^>]*:{port};transport=ws>", ok,
                                 re.M), ok
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, alice_rtp.send_pcm, tone(440, 1.5),
                                       _rtp_target(ok_a))
            heard = bob_rtp.decoded_pcm()
            assert len(heard) > 4000
            assert abs(dominant_frequency(heard) - 440) < 15
            assert abs(int(heard.max())) > 3000
            own = alice_rtp.decoded_pcm()
            assert len(own) == 0 or abs(int(own.max())) < 500  # alice does not hear herself
            bye = await alice.bye()
            assert bye.startswith("SIP/2.0 200"), bye
            # garbage on bob's connection: a clear close, the server goes on
            await ws_b.send_bytes(b"\x16\x03\x01 not sip at all\r\n\r\n")
            msg = await ws_b.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1003

    asyncio.run(scenario())
    srv.wait_log(r"SIP over WebSocket: closed: not a SIP message")
    assert srv.proc is not None and srv.proc.poll() is None
