"""Every INVITE gets a final answer, whatever fails while its call is set up: a `Server` on
loopback UDP, a real INVITE from a socket, and a fault injected where the RTP socket is opened
(the process out of descriptors -> 503 with Retry-After; an unexpected bug -> 500). No task
exception is left unretrieved and the log has one line for the resource case, not a traceback."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from confroom.config import load
from confroom.media.session import MediaSession
from confroom.server import Server

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def invite(port: int, local_port: int, n: int) -> bytes:
    head = (
        f"INVITE sip:1000@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK-sc{n}\r\n"
        f"From: <sip:alice@127.0.0.1>;tag=a{n}\r\nTo: <sip:1000@127.0.0.1>\r\n"
        f"Call-ID: start-call-{n}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice@127.0.0.1:{local_port}>\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


async def final_response(sock: socket.socket, timeout: float = 5.0) -> str:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while True:
            data = (await loop.sock_recv(sock, 65536)).decode()
            status = int(data.split(" ", 2)[1])
            if status >= 200:
                return data


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    verbs = tmp_path / "app.json"
    verbs.write_text('[{"verb": "answer"}, {"verb": "pause", "length": 5}]')
    # UDP only: port 0 for UDP and TCP together can pick a UDP port whose TCP twin is taken
    cfg = load(env={}, overrides={"sip_host": "127.0.0.1", "sip_port": 0,
                                  "sip_transports": ("udp",),
                                  "rtp_ports": "41100-41120", "app": str(verbs),
                                  "media_dir": tmp_path / "media"})
    srv = Server(cfg)
    await srv.start()
    yield srv
    await srv.stop(grace=1.0)


@pytest.mark.parametrize(("fault", "status"), [
    (OSError(errno.EMFILE, "Too many open files"), 503),
    (OSError(errno.ENFILE, "Too many open files in system"), 503),
    (RuntimeError("a bug"), 500),
])
async def test_invite_is_answered_when_setting_up_the_call_fails(
        server: Server, fault: Exception, status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))

    async def failing_open_session() -> MediaSession:
        raise fault

    server.engine.open_session = failing_open_session  # type: ignore[method-assign]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sock.sendto(invite(server.transports.port, sock.getsockname()[1], status),
                    ("127.0.0.1", server.transports.port))
        final = await final_response(sock)
    assert final.startswith(f"SIP/2.0 {status} ")
    has_retry_after = any(line.startswith("Retry-After: ") for line in final.split("\r\n"))
    assert has_retry_after == (status == 503)
    assert server.calls == {}
    await asyncio.sleep(0.05)
    gc.collect()
    assert unretrieved == []
    if status == 503:
        assert server.rejected["out of descriptors"] == 1
        assert not [r for r in caplog.records if r.exc_info]
        assert any("out of resources" in r.getMessage() for r in caplog.records)
    else:
        assert server.rejected["internal error"] == 1
        (bug,) = [r for r in caplog.records if r.exc_info]
        assert "setting up the call failed" in bug.getMessage()
    assert any("call end" in r.getMessage() and "status=failed" in r.getMessage()
               for r in caplog.records)
