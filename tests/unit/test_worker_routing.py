"""`--workers` routing: which worker owns a SIP message (`confroom.sip.ownership`, decided on
messages a real `SipCore` made) and the channel that passes it there
(`confroom.cluster.forward`, over real Unix datagram sockets)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sip_core import PEER, SDP, req

from confroom.cluster.forward import (
    KIND_RECEIVED,
    KIND_SEND,
    FrameError,
    WorkerChannel,
    decode_frame,
    encode_frame,
)
from confroom.sip.core import IncomingCall, SipCore
from confroom.sip.message import (
    Request,
    Response,
    SipParseError,
    make_response,
    new_branch,
    new_tag,
    parse_message,
    set_owner_mark,
)
from confroom.sip.ownership import (
    call_id_worker,
    marked_worker,
    owners,
    owners_of_bytes,
    worker_mark,
)
from confroom.sip.peer import Peer

TCP = Peer("tcp", "127.0.0.1", 40123)


@pytest.fixture(autouse=True)
def no_mark() -> Iterator[None]:
    yield
    set_owner_mark("")


def worker_core(index: int) -> SipCore:
    set_owner_mark(worker_mark(index))
    return SipCore("127.0.0.1", 5060)


def answered_call(core: SipCore, call_id: str = "c1@test") -> tuple[IncomingCall, str]:
    """An INVITE answered 200 by `core`: (its event, our To tag)."""
    core.receive_datagram(req("INVITE", call_id=call_id, body=SDP), PEER, 0.0)
    ev = core.next_event()
    assert isinstance(ev, IncomingCall)
    assert core.answer(ev.leg, SDP.encode(), 0.0)
    ok = [m for _, d in core.datagrams_to_send() if isinstance(m := parse_message(d), Response)
          and m.status == 200]
    assert ok and ok[0].to_tag is not None
    return ev, ok[0].to_tag


def msg(data: bytes) -> Request | Response:
    return parse_message(data)


def test_marks_in_tags_and_branches() -> None:
    assert marked_worker(new_tag()) is None  # a single process marks nothing
    set_owner_mark("w3")
    assert marked_worker(new_tag()) == 3
    assert marked_worker(new_branch()) == 3
    assert new_branch().startswith("z9hG4bK")
    for foreign in (None, "", "abc", "abc.w", "abc.wx", ".w1", "abc.x1", "abc.w12345", "w1"):
        assert marked_worker(foreign) is None, foreign
    assert marked_worker("0a1b2c.w17") == 17


def test_in_dialog_requests_go_to_the_worker_whose_tag_they_carry() -> None:
    core = worker_core(1)
    _ev, tag = answered_call(core)
    assert marked_worker(tag) == 1
    for method in ("ACK", "BYE", "INFO", "INVITE"):
        m = msg(req(method, to_tag=tag, cseq=2, branch="z9hG4bKx9"))
        assert owners(m, PEER, 0, 2) == (1,), method
        assert owners(m, PEER, 1, 2) == (), method  # its own
        assert owners(m, TCP, 0, 2) == (1,), method  # whatever the transport
    # an ACK of our 487 / 503 carries the tag of that response
    set_owner_mark(worker_mark(2))
    m = msg(req("ACK", to_tag=new_tag(), branch="z9hG4bKa1"))
    assert owners(m, PEER, 0, 3) == (2,)
    # a tag we did not make (or of a worker index beyond the count) is handled where it lands
    assert owners(msg(req("BYE", to_tag="f00d")), PEER, 0, 2) == ()
    assert owners(msg(req("BYE", to_tag="f00d.w5")), PEER, 0, 2) == ()


def test_responses_go_to_the_worker_whose_branch_is_on_top() -> None:
    core = worker_core(1)
    ev, _ = answered_call(core)
    core.receive_datagram(req("ACK", to_tag=ev.leg.local_tag, branch="z9hG4bKack"), PEER, 0.1)
    assert core.bye(ev.leg, 0.2)
    bye = [m for _, d in core.datagrams_to_send() if isinstance(m := parse_message(d), Request)]
    assert bye and bye[0].method == "BYE"
    ok = msg(make_response(bye[0], 200).to_bytes())
    assert owners(ok, PEER, 0, 2) == (1,)
    assert owners(ok, PEER, 1, 2) == ()
    # an outbound call's responses likewise
    inv_core = worker_core(0)
    leg = inv_core.invite("sip:bob@127.0.0.1:5070", PEER, "<sip:conf@127.0.0.1>", SDP.encode(),
                          0.0)
    invite = next(m for _, d in inv_core.datagrams_to_send() if isinstance(m := parse_message(d),
                                                                        Request))
    ringing = msg(make_response(invite, 180, to_tag="callee1").to_bytes())
    assert owners(ringing, PEER, 1, 2) == (0,)
    # the callee's BYE later carries our From tag as its To tag
    assert marked_worker(leg.local_tag) == 0


def test_new_calls_are_taken_by_the_call_id_worker_wherever_they_land() -> None:
    count = 3
    for n in range(30):
        call_id = f"call-{n}@test"
        owner = call_id_worker(call_id, count)
        invite = msg(req("INVITE", call_id=call_id, body=SDP))
        cancel = msg(req("CANCEL", call_id=call_id))
        for here in range(count):
            for m in (invite, cancel):  # a retransmission or CANCEL goes to the same one
                got = owners(m, PEER, here, count)
                if here == owner:
                    assert got == ()
                else:
                    # the owner first, then the others in turn (when it cannot be reached)
                    assert got[0] == owner and sorted(got) == list(range(count))
    # spread: 300 Call-IDs over 3 workers get roughly a third each
    counts = [0, 0, 0]
    for n in range(300):
        counts[call_id_worker(f"{n}-{n * 7}@h", 3)] += 1
    assert min(counts) > 70, counts


def test_stream_initial_requests_and_out_of_dialog_requests_stay_here() -> None:
    assert owners(msg(req("INVITE", body=SDP)), TCP, 0, 2) == ()
    assert owners(msg(req("INVITE", body=SDP)), Peer("ws", "127.0.0.1", 1), 0, 2) == ()
    call_id = next(f"x{n}" for n in range(100) if call_id_worker(f"x{n}", 2) == 1)
    for method in ("OPTIONS", "REGISTER", "MESSAGE", "INFO"):
        assert owners(msg(req(method, call_id=call_id)), PEER, 0, 2) == (), method
    assert owners(msg(req("INVITE", call_id=call_id, body=SDP)), PEER, 0, 1) == ()


TORTURE = Path(__file__).parent / "torture"


def corpus() -> list[tuple[bytes, Peer]]:
    """Messages of every kind the decision meets: ours and foreign, odd spellings, the
    RFC 4475 torture tests."""
    set_owner_mark(worker_mark(1))
    tag, branch = new_tag(), new_branch()
    set_owner_mark("")
    out: list[bytes] = []
    for n in range(40):
        cid = f"cid-{n}@test"
        out += [req("INVITE", call_id=cid, body=SDP), req("CANCEL", call_id=cid),
                req("BYE", to_tag=tag, call_id=cid), req("ACK", to_tag=tag, call_id=cid),
                req("OPTIONS", call_id=cid), req("BYE", to_tag="x.w0", call_id=cid)]
    ok = make_response(parse_message(req("BYE", to_tag=tag, branch=branch)), 200).to_bytes()
    foreign_first = ok.replace(b"Via: ", b"Via: SIP/2.0/UDP x;branch=z9hG4bKo, ", 1)
    out += [ok, ok.replace(b"Via:", b"v:"), foreign_first, ok.replace(b"Call-ID:", b"i:"),
            ok.replace(b";branch=", b" ; BRANCH = ")]
    bye = req("BYE", to_tag=tag)
    out += [bye.replace(b"To:", b"t:"), bye.replace(b";tag=", b" ;TAG= "),
            bye.replace(b"To: <sip:1000@127.0.0.1>", b'To: "a>b;tag=x.w0" <sip:1000@127.0.0.1>'),
            bye.replace(b"To: <sip:1000@127.0.0.1>", b"To: sip:1000@127.0.0.1"),
            bye.replace(b"To: <sip:1000@127.0.0.1>", b"To: <sip:1000@127.0.0.1;tag=x.w0>"),
            bye.replace(b"Call-ID: c1@test", b"Call-ID: c1@test\r\nTo: <sip:x@y>;tag=a.w0"),
            bye.replace(b"\r\nFrom:", b"\r\n  \tfolded\r\nFrom:"), bye[:60], b"\r\n\r\n"]
    out += [f.read_bytes() for f in sorted(TORTURE.glob("*.dat"))]
    return [(m, p) for m in out for p in (PEER, TCP)]


def test_the_raw_byte_decision_is_the_parsed_one_or_none() -> None:
    cheap = routed = 0
    for data, peer in corpus():
        for here in range(3):
            fast = owners_of_bytes(data, peer, here, 3)
            try:
                full = owners(parse_message(data), peer, here, 3)
            except SipParseError:
                continue  # not a message: the owner (if any) answers it 400
            if fast is not None:
                cheap += 1
                routed += fast != ()
                assert fast == full, (data[:200], here)
    assert cheap > 500 and routed > 200  # the common messages need no parser


def test_frames_round_trip_and_reject_garbage() -> None:
    peer = Peer("tls", "2001:db8::1", 5061)
    frame = encode_frame(KIND_SEND, 7, peer, b"SIP/2.0 200 OK\r\n\r\n")
    assert decode_frame(frame) == (KIND_SEND, 7, peer, b"SIP/2.0 200 OK\r\n\r\n")
    for bad in (b"", b"CR", b"XX" + frame[2:], frame[:12], frame[:2] + b"\x09" + frame[3:],
                encode_frame(KIND_RECEIVED, 0, Peer("sctp", "h", 1), b"x")):
        with pytest.raises(FrameError):
            decode_frame(bad)


async def test_channel_passes_messages_to_the_owner_and_answers_back(tmp_path: Path) -> None:
    got: dict[int, list[tuple[str, bytes, Peer]]] = {0: [], 1: [], 2: []}
    arrived = asyncio.Event()

    def channel(i: int) -> WorkerChannel:
        def received(data: bytes, peer: Peer) -> None:
            got[i].append(("received", data, peer))
            arrived.set()

        def send(peer: Peer, data: bytes) -> None:
            got[i].append(("send", data, peer))
            arrived.set()

        return WorkerChannel(i, 3, tmp_path, received, send)

    async def wait(i: int, n: int) -> None:
        async with asyncio.timeout(5):
            while len(got[i]) < n:
                arrived.clear()
                await arrived.wait()

    a, b = channel(0), channel(1)  # worker 2 is not running
    a.start()
    b.start()
    try:
        set_owner_mark(worker_mark(1))
        tag = new_tag()
        set_owner_mark("")
        bye = req("BYE", to_tag=tag)
        assert a.divert(bye, PEER)
        await wait(1, 1)
        assert got[1] == [("received", bye, PEER)]  # the real source, the raw bytes
        assert a.stats["forwarded"] == 1 and b.stats["received"] == 1
        # a message from a stream connection worker 0 holds: the answer goes back to it
        info = req("INFO", to_tag=tag)
        assert a.divert(info, TCP)
        await wait(1, 2)
        assert b.relay(TCP, b"SIP/2.0 200 OK\r\n\r\n")
        await wait(0, 1)
        assert got[0] == [("send", b"SIP/2.0 200 OK\r\n\r\n", TCP)]
        assert not b.relay(Peer("tcp", "127.0.0.1", 1), b"x")  # not another worker's
        assert not a.relay(TCP, b"x")  # a holds it itself: sent on its own connection
        # the owner is down: handled here (a request of its lost call gets 481 here)
        set_owner_mark(worker_mark(2))
        dead = req("BYE", to_tag=new_tag())
        set_owner_mark("")
        assert not a.divert(dead, PEER)
        assert a.stats["owner_down"] == 1
        # a new call whose Call-ID worker is down goes to the next one that runs
        call_id = next(f"y{n}" for n in range(200) if call_id_worker(f"y{n}", 3) == 2)
        invite = req("INVITE", call_id=call_id, body=SDP)
        assert b.divert(invite, PEER)  # 2 is down, 0 runs: 0 takes it
        await wait(0, 2)
        assert got[0][1] == ("received", invite, PEER)
        assert not a.divert(invite, PEER)  # at 0 itself: 0 takes it
        # garbage on the socket is counted and skipped
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"garbage", str(tmp_path / "w1.sock"))
            s.sendto(encode_frame(KIND_RECEIVED, 0, PEER, bye), str(tmp_path / "w1.sock"))
        await wait(1, 3)
        assert b.stats["bad_frames"] == 1
    finally:
        a.close()
        b.close()
    assert not (tmp_path / "w0.sock").exists()


def test_worker_slot_from_the_supervisor_environment() -> None:
    from confroom.config import ConfigError, load

    cfg = load(env={"CONFROOM_WORKER_SLOT": "1/3", "CONFROOM_WORKER_DIR": "/tmp/x"})
    assert (cfg.worker_index, cfg.worker_count, cfg.worker_dir) == (1, 3, "/tmp/x")
    assert load(env={}).worker_index == -1
    for bad in ("3/3", "x/2", "1", "1/300", "-1/2"):
        with pytest.raises(ConfigError, match="CONFROOM_WORKER_SLOT"):
            load(env={"CONFROOM_WORKER_SLOT": bad, "CONFROOM_WORKER_DIR": "/tmp/x"})
    with pytest.raises(ConfigError, match="CONFROOM_WORKER_DIR"):
        load(env={"CONFROOM_WORKER_SLOT": "0/2"})


async def test_transports_relay_stream_messages_and_never_dial_for_another_worker() -> None:
    from confroom.sip.transport import SipTransports

    relayed: list[tuple[Peer, bytes]] = []
    t = SipTransports(lambda data, peer: None)
    t.relay = lambda peer, data: relayed.append((peer, data)) is None and peer == TCP
    t.send(TCP, b"to the holder")
    assert relayed == [(TCP, b"to the holder")]
    # a relayed message whose connection has gone here: dropped, no connection dialled
    t.send_relayed(TCP, b"x")
    assert not t._pending
