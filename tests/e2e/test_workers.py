"""`--workers 2` end to end: every SIP request of a dialog reaches the worker that has the call.

A small raw-socket UA (`RawUa`) places calls and sends its ACK from the INVITE's source port
but its later requests (INFO, BYE) each from a new source port, so the kernel's SO_REUSEPORT
hash hands about half of them to the other worker, which must pass them on. Which worker took
a call is known from the test side too: the Call-ID picks it (`call_id_worker`) and the To
tag of our 200 carries its mark. Audio is checked on the wire (FFT), as in test_cluster.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable

import pytest
from harness import HOST, ConfroomFactory, ConfroomProcess, HookApp, RtpPeer
from test_cluster import EVENTS, wait_hearing
from test_conference import CALL, STATUS, Sender, conference, tone

from confroom.sip.message import Request, Response, StreamFramer, parse_message
from confroom.sip.ownership import call_id_worker, marked_worker

pytestmark = pytest.mark.e2e

def call_id_for(worker: int, count: int = 2) -> str:
    """A fresh Call-ID that worker `worker` of `count` takes."""
    while True:
        cid = f"{uuid.uuid4().hex}@e2e-workers"
        if call_id_worker(cid, count) == worker:
            return cid


class _Link:
    """One UDP socket or TCP connection of a `RawUa`, bound to 127.0.0.1 (new source port)."""

    def __init__(self, transport: str, server: tuple[str, int]) -> None:
        self.tcp = transport == "tcp"
        self.server = server
        self.sock = socket.socket(socket.AF_INET,
                                  socket.SOCK_STREAM if self.tcp else socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        if self.tcp:
            self.sock.connect(server)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.framer = StreamFramer()
        self.queue: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.tcp:
            self.sock.sendall(data)
        else:
            self.sock.sendto(data, self.server)

    def recv(self) -> tuple[bytes, tuple[str, int]] | None:
        """One message (and where it came from), or None after 0.1 s."""
        if self.tcp:
            if not self.queue:
                try:
                    chunk = self.sock.recv(65535)
                except TimeoutError:
                    return None
                assert chunk, "the server closed the connection"
                self.queue += self.framer.feed(chunk)
            return (self.queue.pop(0), self.server) if self.queue else None
        try:
            data, src = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return data, src

    def close(self) -> None:
        self.sock.close()


class RawUa:
    """One caller on plain sockets (UDP, or TCP connections): INVITE (offering PCMU to `rtp`)
    and its ACK on one; `request()` sends an in-dialog request on a new one (a new source
    port) each time."""

    def __init__(self, name: str, server: tuple[str, int], rtp: RtpPeer, call_id: str,
                 transport: str = "udp") -> None:
        self.name, self.server, self.rtp, self.call_id = name, server, rtp, call_id
        self.transport = transport
        self.link = _Link(transport, server)
        self.from_tag = uuid.uuid4().hex[:10]
        self.to_tag = ""
        self.cseq = 0
        self.media: tuple[str, int] | None = None  # the server's RTP address (its SDP)

    @property
    def worker(self) -> int | None:
        """The worker that has the call (the mark in its To tag)."""
        return marked_worker(self.to_tag)

    def _message(self, link: _Link, method: str, cseq: int, body: str = "") -> bytes:
        to = f"<sip:room@{HOST}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        t = self.transport.upper()
        return (
            f"{method} sip:room@{self.server[0]}:{self.server[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/{t} {HOST}:{link.port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{self.name}@{HOST}>;tag={self.from_tag}\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{self.name}@{HOST}:{self.link.port};transport={self.transport}>\r\n"
            f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    def _final(self, link: _Link, data: bytes, method: str, cseq: int,
               timeout: float = 10.0) -> Response:
        """Send `data` (over UDP again every 0.5 s until a provisional response) and return
        the final response to it; requests from the server meanwhile get 200."""
        deadline = time.monotonic() + timeout
        link.send(data)
        resend_at = 0.0 if link.tcp else time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if resend_at and time.monotonic() > resend_at:
                link.send(data)
                resend_at = time.monotonic() + 0.5
            got = link.recv()
            if got is None:
                continue
            raw, src = got
            msg = parse_message(raw)
            if isinstance(msg, Request):
                if msg.method != "ACK":
                    link.send(_ok(msg))
                continue
            if msg.call_id != self.call_id or msg.cseq != (cseq, method):
                continue
            assert src == self.server, f"{method} answered from {src}, not {self.server}"
            if msg.status < 200:
                resend_at = 0.0
                continue
            return msg
        raise AssertionError(f"{self.name}: no final response to {method} within {timeout}s")

    def invite(self) -> Response:
        sdp = (f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
               f"m=audio {self.rtp.port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        self.cseq += 1
        resp = self._final(self.link, self._message(self.link, "INVITE", self.cseq, sdp),
                           "INVITE", self.cseq)
        assert resp.status == 200, f"{self.name}: INVITE answered {resp.status}"
        self.to_tag = resp.to_tag or ""
        self.link.send(self._message(self.link, "ACK", self.cseq))
        body = resp.body.decode()
        c = re.search(r"(?m)^c=IN IP4 (\S+)", body)
        m = re.search(r"(?m)^m=audio (\d+) ", body)
        assert c and m, body
        self.media = (c.group(1), int(m.group(1)))
        return resp

    def request(self, method: str) -> Response:
        """An in-dialog request from a new source port: its final response."""
        self.cseq += 1
        link = _Link(self.transport, self.server)
        try:
            return self._final(link, self._message(link, method, self.cseq), method, self.cseq)
        finally:
            link.close()

    def close(self) -> None:
        self.link.close()


def _ok(req: Request) -> bytes:
    head = ["SIP/2.0 200 OK"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        head += [f"{name}: {v}" for v in req.headers.get_all(name)]
    return ("\r\n".join([*head, "Content-Length: 0", "", ""])).encode()


def start_workers(confroom: ConfroomFactory, hook_app: HookApp) -> ConfroomProcess:
    # not an overload test: a busy CI machine must not make the workers shed these calls
    limits = {"drain_time": 0.5, "max_clock_lateness": 1.0}
    srv = confroom(hook_app.url(CALL), extra_toml={"cluster": {"workers": 2},
                                                   "limits": limits}, ready_timeout=30)
    srv.wait_logs("confroom ready", 2, timeout=30)
    return srv


def channel_stats(srv: ConfroomProcess) -> list[dict[str, int]]:
    """The per-worker channel counters logged when the workers stopped."""
    return [{k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
            for m in srv.find_logs(r"worker channel: (.*)")]


def call_sid(hook_app: HookApp, ua: RawUa) -> str:
    reqs = hook_app.wait_for(lambda rs: any(r.path == CALL and r.json.get("call_id")
                                            == ua.call_id for r in rs), timeout=10)
    return next(str(r.json["call_sid"]) for r in reqs
                if r.path == CALL and r.json.get("call_id") == ua.call_id)


def test_workers_requests_from_a_new_source_port_reach_the_worker_with_the_call(
        confroom: ConfroomFactory, hook_app: HookApp,
        rtp_peer_factory: Callable[[], RtpPeer]) -> None:
    """Ten calls over two workers (five taken by each, by Call-ID), each INFO and BYE sent
    from a new source port: every request is answered 200 by the worker that has the call
    (To tag, from the shared port) and every call ends on that worker."""
    hook_app.route(CALL, [{"verb": "answer"}, {"verb": "pause", "length": 60}])
    srv = start_workers(confroom, hook_app)
    server = (HOST, srv.sip_port)
    uas = [RawUa(f"caller{i}", server, rtp_peer_factory(), call_id_for(i % 2))
           for i in range(10)]
    try:
        for i, ua in enumerate(uas):
            ua.invite()
            assert ua.worker == i % 2, f"{ua.name}: taken by worker {ua.worker}, not {i % 2}"
        for ua in uas:
            resp = ua.request("INFO")
            assert (resp.status, resp.to_tag) == (200, ua.to_tag), f"{ua.name}: INFO {resp.status}"
        for ua in uas:
            resp = ua.request("BYE")
            assert (resp.status, resp.to_tag) == (200, ua.to_tag), f"{ua.name}: BYE {resp.status}"
        for i, ua in enumerate(uas):
            sid = call_sid(hook_app, ua)
            srv.wait_log(rf"\[w{i % 2}\] confroom\.call: call end call_sid={sid} "
                         rf"status=completed", timeout=10)
            assert not srv.find_logs(rf"\[w{1 - i % 2}\] .*call_sid={sid}"), \
                f"{ua.name}'s call was seen by the other worker"
    finally:
        for ua in uas:
            ua.close()
    assert srv.stop() == 0
    stats = channel_stats(srv)
    assert len(stats) == 2, srv.log_text()
    print(f"worker channel counters: {stats}")
    # INVITEs, ACKs, INFOs, BYEs from 40 source ports: some landed on the other worker
    assert sum(s["forwarded"] for s in stats) == sum(s["received"] for s in stats) > 0
    assert sum(s["owner_down"] + s["dropped"] + s["bad_frames"] for s in stats) == 0


def test_workers_tcp_requests_on_another_connection_are_answered_on_it(
        confroom: ConfroomFactory, hook_app: HookApp,
        rtp_peer_factory: Callable[[], RtpPeer]) -> None:
    """Over TCP a new call stays with the worker that accepted its connection; INFO and BYE
    each on a new connection (accepted by either worker) are answered 200 on that connection
    by the worker with the call, which relays the answer when another worker holds it."""
    hook_app.route(CALL, [{"verb": "answer"}, {"verb": "pause", "length": 60}])
    srv = start_workers(confroom, hook_app)
    server = (HOST, srv.sip_port)
    uas = [RawUa(f"tcp{i}", server, rtp_peer_factory(), f"{uuid.uuid4().hex}@e2e", "tcp")
           for i in range(8)]
    try:
        for ua in uas:
            ua.invite()
        for ua in uas:
            for method in ("INFO", "BYE"):
                resp = ua.request(method)
                assert (resp.status, resp.to_tag) == (200, ua.to_tag), \
                    f"{ua.name}: {method} {resp.status}"
    finally:
        for ua in uas:
            ua.close()
    assert srv.stop() == 0
    stats = channel_stats(srv)
    print(f"worker channel counters: {stats}, calls per worker: "
          f"{[sum(ua.worker == w for ua in uas) for w in (0, 1)]}")
    # the answers to requests passed from another worker's connection went back to it
    assert sum(s["relayed"] for s in stats) == sum(s["relayed_in"] for s in stats) \
        >= sum(s["received"] for s in stats) > 0


def keep_hearing(want: list[tuple[RtpPeer, float]], what: str, timeout: float) -> None:
    """`wait_hearing` until `timeout`, also over windows cut short (a loaded machine's late
    media clock): fails only if no 1 s window within `timeout` had every tone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            wait_hearing(want, what, timeout=max(0.0, deadline - time.monotonic()))
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise


def worker_pid(srv: ConfroomProcess, index: int, since: int = 0) -> int:
    m = srv.wait_log(rf"workers: worker {index} started \(pid (\d+)", since=since, timeout=20)
    return int(m.group(1))


def test_workers_kill_one_worker_the_other_keeps_its_calls(
        confroom: ConfroomFactory, hook_app: HookApp,
        rtp_peer_factory: Callable[[], RtpPeer]) -> None:
    """alice and bob on worker 0, carol and dave on worker 1, one conference. kill -9
    worker 1: alice and bob keep hearing each other, their requests from new source ports
    still get 200 (not 481); carol and dave leave the conference (the survivor reaps them)
    and their BYE gets 481; worker 1 is started again and new calls work on both workers
    (erin, on the new worker 1, hears alice and bob)."""
    hook_app.route(STATUS, [])
    hook_app.route(CALL, conference("room", statusHook=STATUS, statusEvents=EVENTS))
    srv = start_workers(confroom, hook_app)
    server = (HOST, srv.sip_port)
    want = {"alice": 0, "bob": 0, "carol": 1, "dave": 1, "erin": 1, "frank": 0}
    uas = {n: RawUa(n, server, rtp_peer_factory(), call_id_for(w)) for n, w in want.items()}
    freqs = {"alice": 500.0, "bob": 1100.0, "carol": 1700.0}
    senders: list[Sender] = []

    def dial(name: str) -> RawUa:  # carol, the last sender, is the last in `senders`
        ua = uas[name]
        ua.invite()
        assert ua.worker == want[name], f"{name}: on worker {ua.worker}, not {want[name]}"
        sid = call_sid(hook_app, ua)
        srv.wait_log(rf"\[w{want[name]}\] confroom\.conference: conference join name=room "
                     rf"call_sid={sid} ", timeout=15)
        if name in freqs:
            assert ua.media is not None
            senders.append(Sender(ua.rtp, ua.media, tone(freqs[name], 0.2, amplitude=0.2)))
        return ua

    try:
        alice, bob, carol, dave = (dial(n) for n in ("alice", "bob", "carol", "dave"))
        keep_hearing([(alice.rtp, freqs["bob"]), (bob.rtp, freqs["alice"]),
                      (dave.rtp, freqs["alice"]), (alice.rtp, freqs["carol"])],
                     "the callers of the two workers never met", timeout=15)
        mark = srv.mark()
        os.kill(worker_pid(srv, 1), signal.SIGKILL)
        # the survivor's calls: audio goes on, requests from new source ports are answered
        t_kill = time.monotonic()
        keep_hearing([(alice.rtp, freqs["bob"]), (bob.rtp, freqs["alice"])],
                     "alice and bob stopped hearing each other", timeout=5)
        for ua in (alice, bob):
            resp = ua.request("INFO")
            assert resp.status == 200, f"{ua.name}: INFO {resp.status} after the kill"
        # the dead worker's calls: reaped from the conference (leave events), BYE 481
        for ua in (carol, dave):
            sid = call_sid(hook_app, ua)
            hook_app.wait_for(lambda rs, sid=sid: any(
                r.path == STATUS and r.json.get("event") == "leave"
                and r.json.get("call_sid") == sid for r in rs), timeout=15)
            assert ua.request("BYE").status == 481
        # carol's phone stops its RTP: the call is gone (a restarted worker reuses the ports)
        senders.pop().stop()
        print(f"dead worker's members reaped {time.monotonic() - t_kill:.1f} s after the kill")
        # worker 1 again: new calls on both workers, erin (worker 1) hears alice and bob
        worker_pid(srv, 1, since=mark)
        srv.wait_logs("confroom ready", 3, timeout=20)
        erin, frank = dial("erin"), dial("frank")
        keep_hearing([(erin.rtp, freqs["alice"]), (erin.rtp, freqs["bob"]),
                      (frank.rtp, freqs["alice"]), (alice.rtp, freqs["bob"])],
                     "the new calls do not hear the conference", timeout=15)
        for ua in (alice, bob, erin, frank):
            assert ua.request("INFO").status == 200, ua.name
            assert ua.request("BYE").status == 200, ua.name
    finally:
        for s in senders:
            s.stop()
        for ua in uas.values():
            ua.close()
    assert srv.stop() == 0
