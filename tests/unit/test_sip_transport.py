"""The SIP UDP adapter: reads in bounded batches (so the event loop, and the media clock with
it, gets its turn between batches) and asks for the configured receive buffer."""

from __future__ import annotations

import asyncio
import socket

from confroom.sip.peer import Peer
from confroom.sip.transport import SipTransports, set_rcvbuf


def test_udp_is_read_in_bounded_batches_and_answers_go_out() -> None:
    async def scenario() -> None:
        got: list[tuple[bytes, Peer]] = []
        tr = SipTransports(lambda data, peer: got.append((data, peer)), udp_batch=4,
                           udp_budget=10.0)
        await tr.start("127.0.0.1", 0, ("udp",))
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        try:
            for i in range(10):
                client.sendto(b"msg%d" % i, ("127.0.0.1", tr.port))
            udp = tr._udp
            assert udp is not None
            udp.sock.setblocking(True)  # wait for the datagrams before reading by hand
            udp.sock.settimeout(2.0)
            data, addr = udp.sock.recvfrom(100)
            got.append((data, Peer("udp", addr[0], addr[1])))
            udp.sock.setblocking(False)
            udp._readable()  # one readiness callback: at most `batch` datagrams
            assert [d for d, _ in got] == [b"msg0", b"msg1", b"msg2", b"msg3", b"msg4"]
            udp._readable()
            udp._readable()
            assert len(got) == 10
            assert got[-1][1] == Peer("udp", "127.0.0.1", client.getsockname()[1])
            tr.send(got[-1][1], b"reply")
            client.settimeout(2.0)
            assert client.recv(100) == b"reply"
        finally:
            client.close()
            await tr.close()

    asyncio.run(scenario())


def test_receive_buffer_is_sized() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        default = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = set_rcvbuf(s, 4 * default)
        # Linux reports twice what it grants; without privileges rmem_max caps it
        assert granted == s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert granted >= 2 * min(4 * default, _rmem_max())


def _rmem_max() -> int:
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return int(f.read())
    except OSError:
        return 0
