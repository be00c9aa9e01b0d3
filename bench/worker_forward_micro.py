"""The CPU a `--workers` forward adds to one SIP request (issue 10), in one process.

    python3 bench/worker_forward_micro.py [--messages 20000] [--rounds 5]

An in-dialog INFO of a call that worker 1 of 2 answered (a real `SipCore`, our mark in its
To tag), with a fresh branch and CSeq each time, handled two ways, alternated round by round
(CPU: time.process_time, both "workers" in this process, so the figure is the total over
both):

- here: what the worker with the call does when the kernel hands it the request (the
  server's path with --workers: `WorkerChannel.divert` says "mine" from the raw bytes, then
  `SipCore.receive_datagram` parses and answers, the 200 taken from the core);
- forwarded: worker 0 reads it (`divert`: the decision from the raw bytes, the frame sent on
  a real Unix datagram socket), worker 1 reads the frame (`WorkerChannel._readable`: decode,
  then the server's handler: the core, the 200).

Prints the CPU per request of each and the difference (the cost of a forward).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable

from confroom.cluster.forward import WorkerChannel
from confroom.sip.core import IncomingCall, SipCore
from confroom.sip.message import set_owner_mark
from confroom.sip.ownership import worker_mark
from confroom.sip.peer import Peer

PEER = Peer("udp", "127.0.0.1", 5070)
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\n")


def request(method: str, cseq: int, branch: str, to_tag: str | None, body: str = "") -> bytes:
    to = "<sip:room@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:room@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@127.0.0.1:5070>;tag=from1\r\n"
        f"To: {to}\r\nCall-ID: bench@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@127.0.0.1:5070>\r\nUser-Agent: bench\r\n"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    set_owner_mark(worker_mark(1))
    answered = [0]
    cur: list[SipCore] = []

    def new_call() -> str:
        """A fresh core with one answered call (so every batch starts with no transactions
        left from the one before); returns our To tag."""
        core = SipCore("127.0.0.1", 5060)
        core.receive_datagram(request("INVITE", 1, "inv", None, SDP), PEER, 0.0)
        ev = core.next_event()
        assert isinstance(ev, IncomingCall)
        core.answer(ev.leg, SDP.encode(), 0.0)
        core.receive_datagram(request("ACK", 1, "ack", ev.leg.local_tag), PEER, 0.0)
        core.datagrams_to_send()
        while core.next_event() is not None:
            pass
        cur[:] = [core]
        return ev.leg.local_tag

    def handle(data: bytes, peer: Peer) -> None:  # the server's _on_forwarded_sip
        core = cur[0]
        core.receive_datagram(data, peer, 1.0)
        answered[0] += len(core.datagrams_to_send())

    with tempfile.TemporaryDirectory() as tmp:
        a = WorkerChannel(0, 2, tmp, lambda d, p: None, lambda p, d: None)
        b = WorkerChannel(1, 2, tmp, handle, lambda p, d: None)
        a.start()
        b.start()

        def batch() -> list[bytes]:
            tag = new_call()
            return [request("INFO", n, f"b{n}", tag) for n in range(2, args.messages + 2)]

        def here(msgs: list[bytes]) -> None:  # the server's _on_sip_bytes, at the owner
            for data in msgs:
                assert not b.divert(data, PEER)
                cur[0].receive_datagram(data, PEER, 1.0)
                answered[0] += len(cur[0].datagrams_to_send())

        def forwarded(msgs: list[bytes]) -> None:  # at another worker, then at the owner
            for data in msgs:
                assert a.divert(data, PEER)
                b._readable()

        def cpu(fn: Callable[[list[bytes]], None]) -> float:
            msgs = batch()
            t0 = time.process_time()
            fn(msgs)
            return (time.process_time() - t0) / len(msgs) * 1e6

        cpu(here)  # warm-up
        cpu(forwarded)
        h, f = [], []
        for _ in range(args.rounds):
            h.append(cpu(here))
            f.append(cpu(forwarded))
        a.close()
        b.close()
    assert answered[0] >= (2 * args.rounds + 2) * args.messages, answered[0]
    mh, mf = statistics.median(h), statistics.median(f)
    print(f"here:      {mh:6.1f} us CPU per INFO (rounds: {', '.join(f'{x:.1f}' for x in h)})")
    print(f"forwarded: {mf:6.1f} us CPU per INFO (rounds: {', '.join(f'{x:.1f}' for x in f)})")
    print(f"extra per forwarded request: {mf - mh:.1f} us ({(mf / mh - 1) * 100:.0f} %)")


if __name__ == "__main__":
    asyncio.run(main())
