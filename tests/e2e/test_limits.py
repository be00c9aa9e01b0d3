"""End-to-end connection and descriptor limits: a confroom subprocess started with a low
RLIMIT_NOFILE (soft = hard, so it cannot raise it) against real TCP clients, SIPp calls and
HTTP clients.

- SIP TCP caps (sized from the descriptor limit) refuse connections beyond them, accepted idle
  connections are closed after the idle timeout, and a UDP call placed at the caps is answered;
- with every descriptor in use, an INVITE gets 503 with Retry-After, the accept loop does not
  spin, and calls work again once descriptors are free;
- REST API: slow clients are cut off after the header timeout while an authorized request
  works; garbage HTTP writes no traceback;
- the User-Agent / Server header setting, seen on the wire.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
import urllib.request

import pytest
from harness import HOST, ConfroomFactory, ConfroomProcess, SippRunner
from test_control import TOKEN, Rest, free_tcp_port

pytestmark = pytest.mark.e2e

ANSWER_AND_WAIT = [{"verb": "answer"}, {"verb": "pause", "length": 30}]


def options(port: int, n: int) -> bytes:
    return (
        f"OPTIONS sip:limits@{HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {HOST}:{port};branch=z9hG4bK-lim{n}\r\n"
        f"From: <sip:probe@{HOST}>;tag=t{n}\r\nTo: <sip:limits@{HOST}>\r\n"
        f"Call-ID: limits-{n}-{time.monotonic_ns()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def connect(srv: ConfroomProcess, source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect((HOST, srv.sip_port))
    return s


def outcome(socks: list[socket.socket], timeout: float) -> dict[socket.socket, str]:
    """For each socket: "answered" (data came), "closed" (EOF/reset), or "open" (nothing
    within `timeout`)."""
    result = dict.fromkeys(socks, "open")
    pending = set(socks)
    deadline = time.monotonic() + timeout
    while pending and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(list(pending), [], [], left)
        for s in readable:
            try:
                data = s.recv(65536)
            except ConnectionError:
                data = b""
            result[s] = "answered" if data else "closed"
            pending.discard(s)
    return result


def wait_closed(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Read until each socket is closed by the server; the ones still open at `timeout`."""
    pending = set(socks)
    deadline = time.monotonic() + timeout
    while pending and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(list(pending), [], [], left)
        for s in readable:
            try:
                if s.recv(65536):
                    continue
            except ConnectionError:
                pass
            pending.discard(s)
    return list(pending)


def test_tcp_caps_idle_timeout_and_a_udp_call_at_the_caps(
        confroom: ConfroomFactory, sipp: SippRunner) -> None:
    idle = 4.0
    srv = confroom(verbs=ANSWER_AND_WAIT, fd_limit=256,
                   extra_toml={"sip": {"tcp_idle_timeout": idle}})
    # the caps are sized from the descriptor limit the server could not raise
    srv.wait_log(r"file descriptors: limit 256 \(hard 256\); sip tcp connections: 64 in "
                 r"total, 8 per source")
    socks: list[socket.socket] = []
    try:
        accepted: list[socket.socket] = []
        over_source: list[socket.socket] = []
        for i in range(1, 9):  # 8 sources x 8 = the total cap
            source = f"127.0.0.{i + 1}"
            for _ in range(8):
                s = connect(srv, source)
                socks.append(s)
                accepted.append(s)
            if i == 1:
                for _ in range(3):  # beyond the per-source cap of 8
                    s = connect(srv, source)
                    socks.append(s)
                    over_source.append(s)
        for n, s in enumerate(socks):
            with contextlib.suppress(ConnectionError):  # when already refused
                s.sendall(options(s.getsockname()[1], n))
        got = outcome(socks, timeout=10)
        answered_at = time.monotonic()
        assert [got[s] for s in over_source] == ["closed"] * 3
        assert [got[s] for s in accepted].count("answered") == 64, got
        # a new source, but the total cap is reached and no connection waits for a message
        over_total = connect(srv, "127.0.0.20")
        socks.append(over_total)
        assert outcome([over_total], timeout=10)[over_total] == "closed"
        srv.wait_log(r"sip tcp: refused 4 connection\(s\): 3 over the per-source cap \(8\); "
                     r"1 over the total cap \(64\)")

        # a UDP call while the node is at its connection caps is answered
        res = sipp.run("uac_basic", srv.target, pause_ms=500, timeout=20)
        assert res.ok(), res.describe()

        still_open = wait_closed(accepted, timeout=idle + 6)
        assert still_open == [], f"{len(still_open)} idle connections were not closed"
        assert time.monotonic() - answered_at >= idle - 0.5
        srv.wait_log(r"sip tcp: closed 64 idle \(4s\)")
        assert not srv.find_logs(r"Traceback|Task exception was never retrieved")
        # one summary line for the refusals, not one per connection
        assert len(srv.find_logs(r"refused \d+ connection")) == 1
    finally:
        for s in socks:
            s.close()


def test_a_tcp_connection_a_call_uses_outlives_the_idle_timeout(
        confroom: ConfroomFactory, sipp: SippRunner) -> None:
    # The call is quiet on its TCP connection for three times the idle timeout; the caller's
    # BYE must still arrive on that connection and be answered.
    srv = confroom(verbs=ANSWER_AND_WAIT, extra_toml={"sip": {"tcp_idle_timeout": 1.0}})
    res = sipp.run("uac_basic", srv.target, transport="t1", pause_ms=3000, timeout=20)
    assert res.ok(), res.describe()
    srv.wait_log(r"call end .*status=completed reason=caller-hung-up")
    assert not srv.find_logs(r"closed \d+ idle")  # the call held its connection


def test_out_of_descriptors_invite_gets_503_and_accept_does_not_spin(
        confroom: ConfroomFactory, sipp: SippRunner) -> None:
    limit = 64
    srv = confroom(verbs=ANSWER_AND_WAIT, fd_limit=limit,
                   extra_toml={"sip": {"tcp_max_connections": 1000, "tcp_max_per_source": 1000,
                                       "tcp_message_timeout": 60.0}})
    socks: list[socket.socket] = []
    try:
        # TCP connections take every descriptor the server has (and a few wait in the backlog)
        for _ in range(limit + 10):
            socks.append(connect(srv, HOST))
        deadline = time.monotonic() + 10
        while srv.open_fds() < limit and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.open_fds() == limit

        cpu0 = srv.cpu_seconds()
        time.sleep(1.5)
        spent = srv.cpu_seconds() - cpu0
        assert spent < 0.5, f"accept loop spins under EMFILE: {spent:.2f}s CPU in 1.5s"

        res = sipp.run("uac_expect_status", srv.target, variables={"expected_status": 503},
                       timeout=20)
        assert res.ok(), res.describe()
        assert res.final_statuses == [503]
        final = re.search(r"SIP/2\.0 503 .*?\r?\n\r?\n", res.messages, re.S)
        assert final is not None and re.search(r"^Retry-After: \d+", final.group(0), re.M), (
            res.messages)
        srv.wait_log(r"out of resources \(\[Errno 24\] Too many open files")
        assert srv.find_logs(r"call end .*status=failed reason=out-of-descriptors")
        assert not srv.find_logs(r"Traceback|Task exception was never retrieved")
    finally:
        for s in socks:
            s.close()
    # descriptors free again: calls work
    deadline = time.monotonic() + 10
    while srv.open_fds() > 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    res = sipp.run("uac_basic", srv.target, pause_ms=300, timeout=20)
    assert res.ok(), res.describe()


def test_rest_api_slow_clients_are_cut_off_and_garbage_is_one_line(
        confroom: ConfroomFactory) -> None:
    port = free_tcp_port()
    header_timeout = 1.5
    # default caps from 512 descriptors: 32 API connections, 8 per source
    srv = confroom(verbs=ANSWER_AND_WAIT, fd_limit=512, extra_toml={"http": {
        "port": port, "token": TOKEN, "header_timeout": header_timeout}})
    srv.wait_log(r"http connections: 32 in total, 8 per source")
    srv.wait_log(rf"REST API on http://{re.escape(HOST)}:{port}")
    rest = Rest(port)
    slow: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        for i in range(40):  # 5 sources x 8: more than the total cap
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((f"127.0.0.{2 + i // 8}", 0))
            s.connect((HOST, port))
            if i % 2:  # half send the start of a request and stop, half send nothing
                s.sendall(b"GET /health HTTP/1.1\r\nHost: confroom\r\nX-Slow: ")
            slow.append(s)
        # a normal authorized request is served meanwhile (a slow one makes room for it)
        assert rest.request("GET", "/v1/Accounts/x/Conferences") == (200, [])
        still_open = wait_closed(slow, timeout=header_timeout + 5)
        elapsed = time.monotonic() - t0
        assert still_open == [], f"{len(still_open)} slow clients were not cut off"
        assert elapsed >= header_timeout - 0.2
        lines = srv.wait_log(r"api http: .*closed (\d+) slow \(no complete message within "
                             r"1\.5s\)")
        assert int(lines.group(1)) >= 20  # the rest made room for newer connections
        assert rest.request("GET", "/health", token=None)[0] == 200

        for payload in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(64)),
                        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"A" * 20000 + b"\r\n\r\n",
                        b"GET /health HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
                        b"\r\n\r\nBROKEN\r\n\r\n"):
            with socket.create_connection((HOST, port)) as g:
                g.sendall(payload)
                assert wait_closed([g], timeout=5) == []
        assert rest.request("GET", "/v1/Accounts/x/Conferences", token=None)[0] == 401
        srv.wait_log(r"api: bad HTTP request")
        assert not srv.find_logs(r"Traceback|ERROR")
        assert len(srv.find_logs(r"bad HTTP request")) == 1  # rate-limited
    finally:
        for s in slow:
            s.close()


@pytest.mark.parametrize("user_agent", ["acme-e2e/7", ""], ids=["custom", "none"])
def test_user_agent_on_the_wire(confroom: ConfroomFactory, sipp: SippRunner,
                                user_agent: str) -> None:
    port = free_tcp_port()
    srv = confroom(verbs=ANSWER_AND_WAIT, extra_toml={
        "sip": {"user_agent": user_agent}, "http": {"port": port, "token": TOKEN}})
    srv.wait_log(rf"REST API on http://{re.escape(HOST)}:{port}")
    res = sipp.run("uac_options", srv.target, timeout=10)
    assert res.ok(), res.describe()
    reply = re.search(r"SIP/2\.0 200 .*?\r?\n\r?\n", res.messages, re.S)
    assert reply is not None, res.messages
    uas = re.findall(r"^User-Agent: *(.*?)\r?$", reply.group(0), re.M)
    assert uas == ([user_agent] if user_agent else [])
    with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=10) as r:
        assert r.headers.get_all("Server") == ([user_agent] if user_agent else None)
