"""Unit tests for the sans-IO SIP transaction layer (confroom.sip.transaction).

Every test drives the layer with explicit ``now`` values: no sleeps, no sockets.
"""

from __future__ import annotations

import pytest

from confroom.sip.message import Request, Response, make_response, parse_message
from confroom.sip.peer import Peer
from confroom.sip.transaction import (
    AckReceived,
    ClientTransaction,
    Event,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    TransactionLayer,
    TransactionTimeout,
)

UDP = Peer("udp", "192.0.2.10", 5060)
TCP = Peer("tcp", "192.0.2.10", 5060)
US = "198.51.100.1:5060"


# --------------------------------------------------------------------------- helpers


def _req(
    method: str,
    *,
    branch: str | None = "z9hG4bK-inv1",
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    via_host: str = "192.0.2.10:5060",
    transport: str = "UDP",
    call_id: str = "call-1@192.0.2.10",
    route: str | None = None,
    body: bytes = b"",
) -> Request:
    via = f"SIP/2.0/{transport} {via_host}"
    if branch is not None:
        via += f";branch={branch}"
    to = "<sip:conf@198.51.100.1>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:conf@198.51.100.1 SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        'From: "Alice" <sip:alice@192.0.2.10>;tag=from-a',
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@192.0.2.10:5060>",
    ]
    if route is not None:
        lines.append(f"Route: {route}")
    lines.append(f"Content-Length: {len(body)}")
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert isinstance(msg, Request)
    return msg


def _ack_for(invite: Request, to_tag: str | None, *, branch: str | None) -> Request:
    return _req(
        "ACK",
        branch=branch,
        cseq=invite.cseq[0],
        to_tag=to_tag,
        call_id=invite.call_id,
        via_host=f"{invite.top_via.host}:{invite.top_via.port}",
    )


def _parse_resp(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg


def _parse_req(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def _events(layer: TransactionLayer) -> list[Event]:
    out: list[Event] = []
    while (ev := layer.next_event()) is not None:
        out.append(ev)
    return out


def _statuses(layer: TransactionLayer) -> list[int]:
    return [_parse_resp(data).status for _, data in layer.datagrams_to_send()]


def _run_timers(layer: TransactionLayer, until: float) -> list[tuple[float, list[bytes]]]:
    """Fire timers in deadline order up to ``until``; (time, datagrams sent) per firing."""
    fired: list[tuple[float, list[bytes]]] = []
    while (t := layer.get_timer()) is not None and t <= until:
        layer.handle_timer(t)
        fired.append((t, [data for _, data in layer.datagrams_to_send()]))
    return fired


def _new_invite(
    layer: TransactionLayer, peer: Peer = UDP, now: float = 0.0, **kw: object
) -> ServerTransaction:
    invite = _req("INVITE", transport=peer.transport.upper(), **kw)  # type: ignore[arg-type]
    layer.receive(invite, peer, now)
    evs = _events(layer)
    assert len(evs) == 1 and isinstance(evs[0], RequestReceived)
    return evs[0].tx


def _response(
    status: int,
    *,
    branch: str,
    cseq: int = 1,
    method: str = "BYE",
    to_tag: str | None = "uas-tag",
    reason: str = "Whatever",
) -> Response:
    to = "<sip:bob@192.0.2.20>" + (f";tag={to_tag}" if to_tag else "")
    text = "\r\n".join(
        [
            f"SIP/2.0 {status} {reason}",
            f"Via: SIP/2.0/UDP {US};branch={branch}",
            "From: <sip:conf@198.51.100.1>;tag=ours",
            f"To: {to}",
            "Call-ID: out-call@198.51.100.1",
            f"CSeq: {cseq} {method}",
            "Content-Length: 0",
        ]
    )
    return _parse_resp((text + "\r\n\r\n").encode())


def _our_request(
    method: str, *, branch: str, cseq: int = 1, route: str | None = None, transport: str = "UDP"
) -> Request:
    lines = [
        f"{method} sip:bob@192.0.2.20:5060 SIP/2.0",
        f"Via: SIP/2.0/{transport} {US};branch={branch}",
        "Max-Forwards: 70",
        "From: <sip:conf@198.51.100.1>;tag=ours",
        "To: <sip:bob@192.0.2.20>;tag=uas-tag",
        "Call-ID: out-call@198.51.100.1",
        f"CSeq: {cseq} {method}",
    ]
    if route is not None:
        lines.append(f"Route: {route}")
    lines.append("Content-Length: 0")
    return _parse_req(("\r\n".join(lines) + "\r\n\r\n").encode())


# --------------------------------------------------------------------------- INVITE server


def test_new_invite_sends_100_trying_and_reports() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer)
    assert tx.method == "INVITE"
    assert tx.state == "proceeding"
    assert tx.peer == UDP
    assert not tx.cancelled
    out = layer.datagrams_to_send()
    assert len(out) == 1
    peer, data = out[0]
    assert peer == UDP
    trying = _parse_resp(data)
    assert trying.status == 100
    assert trying.call_id == "call-1@192.0.2.10"
    assert trying.top_via.branch == "z9hG4bK-inv1"
    assert tx.last_response is not None and tx.last_response.status == 100
    assert len(layer) == 1
    assert layer.get_timer() is None  # nothing to time in proceeding


def test_retransmitted_invite_absorbed_and_last_provisional_resent() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer)
    layer.datagrams_to_send()
    # Retransmission before any TU response: the 100 is re-sent, no new event.
    layer.receive(_req("INVITE"), UDP, 0.5)
    assert _statuses(layer) == [100]
    assert _events(layer) == []
    layer.respond(tx, make_response(tx.request, 180, to_tag="t1"), 0.6)
    assert _statuses(layer) == [180]
    layer.receive(_req("INVITE"), UDP, 1.5)
    assert _statuses(layer) == [180]
    assert _events(layer) == []
    assert tx.state == "proceeding"
    assert len(layer) == 1


def test_2xx_retransmit_schedule_until_ack() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer)
    layer.datagrams_to_send()
    ok = make_response(tx.request, 200, to_tag="uas-1")
    layer.respond(tx, ok, 0.0)
    assert tx.state == "accepted"
    assert _statuses(layer) == [200]
    fired = _run_timers(layer, 12.0)
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 11.5]
    for _, sent in fired:
        assert [_parse_resp(d).status for d in sent] == [200]
    # A retransmitted INVITE in accepted re-sends the 2xx.
    layer.receive(_req("INVITE"), UDP, 12.0)
    assert _statuses(layer) == [200]
    assert _events(layer) == []
    # The ACK has its own branch; matched by Call-ID, CSeq number, To-tag.
    ack = _ack_for(tx.request, "uas-1", branch="z9hG4bK-ack1")
    layer.receive(ack, UDP, 12.5)
    evs = _events(layer)
    assert evs == [AckReceived(ack, UDP, tx)]
    assert tx.state == "terminated"
    assert len(layer) == 0
    # A late INVITE retransmission does not start a new call (RFC 6026 Timer L).
    layer.receive(_req("INVITE"), UDP, 13.0)
    assert _events(layer) == []
    assert layer.datagrams_to_send() == []
    assert len(layer) == 0
    # No more 2xx retransmissions.
    assert all(not sent for _, sent in _run_timers(layer, 100.0))
    assert layer.datagrams_to_send() == []
    assert layer.get_timer() is None


def test_2xx_never_acked_times_out_at_64_t1() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer)
    layer.respond(tx, make_response(tx.request, 200, to_tag="uas-1"), 0.0)
    layer.datagrams_to_send()
    layer.handle_timer(31.99)
    assert _events(layer) == []
    assert tx.state == "accepted"
    fired = _run_timers(layer, 40.0)
    assert fired[-1][0] == 32.0
    assert _events(layer) == [TransactionTimeout(tx)]
    assert tx.state == "terminated"
    assert len(layer) == 0
    assert layer.get_timer() is None
    # An ACK arriving after that is still reported, without a transaction.
    ack = _ack_for(tx.request, "uas-1", branch="z9hG4bK-late")
    layer.receive(ack, UDP, 40.0)
    assert _events(layer) == [AckReceived(ack, UDP, None)]


def test_unmatched_ack_reported_without_tx() -> None:
    layer = TransactionLayer()
    ack = _req("ACK", branch="z9hG4bK-x", to_tag="nobody", cseq=7)
    layer.receive(ack, UDP, 0.0)
    assert _events(layer) == [AckReceived(ack, UDP, None)]
    assert len(layer) == 0


def test_ack_with_wrong_to_tag_does_not_match() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer)
    layer.respond(tx, make_response(tx.request, 200, to_tag="uas-1"), 0.0)
    ack = _ack_for(tx.request, "other", branch="z9hG4bK-ack1")
    layer.receive(ack, UDP, 0.1)
    assert _events(layer) == [AckReceived(ack, UDP, None)]
    assert tx.state == "accepted"


def test_tcp_invite_no_retransmissions() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer, TCP)
    assert _statuses(layer) == [100]
    layer.respond(tx, make_response(tx.request, 200, to_tag="uas-1"), 0.0)
    assert _statuses(layer) == [200]
    fired = _run_timers(layer, 100.0)
    assert [t for t, _ in fired] == [32.0]  # only the ACK timeout, nothing re-sent
    assert all(not sent for _, sent in fired)
    assert _events(layer) == [TransactionTimeout(tx)]
    assert len(layer) == 0


def test_tcp_non_2xx_ack_terminates_at_once() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer, TCP)
    layer.respond(tx, make_response(tx.request, 486, to_tag="uas-1"), 0.0)
    assert _statuses(layer) == [100, 486]
    assert layer.get_timer() == 32.0  # Timer H only, no Timer G
    ack = _req("ACK", transport="TCP", to_tag="uas-1")
    layer.receive(ack, TCP, 0.2)
    assert _events(layer) == []
    assert tx.state == "terminated"
    assert len(layer) == 0
    assert layer.get_timer() is None


def test_non_2xx_final_timer_g_ack_absorbed_timer_i() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer)
    layer.datagrams_to_send()
    layer.respond(tx, make_response(tx.request, 486, to_tag="uas-1"), 10.0)
    assert tx.state == "completed"
    assert _statuses(layer) == [486]
    fired = _run_timers(layer, 22.0)
    assert [t for t, _ in fired] == [10.5, 11.5, 13.5, 17.5, 21.5]
    for _, sent in fired:
        assert [_parse_resp(d).status for d in sent] == [486]
    # A retransmitted INVITE in completed re-sends the final.
    layer.receive(_req("INVITE"), UDP, 21.6)
    assert _statuses(layer) == [486]
    # The ACK shares the INVITE's branch; absorbed, no event.
    ack = _req("ACK", to_tag="uas-1")
    layer.receive(ack, UDP, 21.7)
    assert _events(layer) == []
    assert tx.state == "confirmed"
    assert len(layer) == 1
    # Retransmitted ACK and INVITE are absorbed in confirmed.
    layer.receive(ack, UDP, 22.0)
    layer.receive(_req("INVITE"), UDP, 22.1)
    assert _events(layer) == []
    assert layer.datagrams_to_send() == []
    # Timer I = T4 later: removed, nothing sent.
    assert layer.get_timer() == pytest.approx(26.7)
    fired = _run_timers(layer, 100.0)
    assert len(fired) == 1 and fired[0][1] == []
    assert tx.state == "terminated"
    assert len(layer) == 0
    assert _events(layer) == []


def test_non_2xx_never_acked_timer_h() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer)
    layer.respond(tx, make_response(tx.request, 603, to_tag="uas-1"), 0.0)
    _run_timers(layer, 31.9)
    assert _events(layer) == []
    _run_timers(layer, 32.0)
    assert _events(layer) == [TransactionTimeout(tx)]
    assert len(layer) == 0
    assert layer.get_timer() is None


def test_respond_after_termination_is_noop() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer)
    layer.respond(tx, make_response(tx.request, 486, to_tag="u"), 0.0)
    layer.receive(_req("ACK", to_tag="u"), UDP, 0.1)
    _run_timers(layer, 10.0)
    assert tx.state == "terminated"
    layer.datagrams_to_send()
    layer.respond(tx, make_response(tx.request, 200, to_tag="u"), 11.0)
    assert layer.datagrams_to_send() == []
    assert layer.get_timer() is None
    # Non-2xx after a 2xx (RFC 6026 accepted) is not sent either.
    tx2 = _new_invite(layer, branch="z9hG4bK-inv2")
    layer.respond(tx2, make_response(tx2.request, 200, to_tag="u2"), 12.0)
    layer.datagrams_to_send()
    layer.respond(tx2, make_response(tx2.request, 487, to_tag="u2"), 12.1)
    assert layer.datagrams_to_send() == []
    assert tx2.state == "accepted"


# --------------------------------------------------------------------------- CANCEL


def test_cancel_matches_invite() -> None:
    layer = TransactionLayer()
    inv = _new_invite(layer)
    layer.datagrams_to_send()
    cancel = _req("CANCEL")  # same branch, same sent-by, CSeq 1 CANCEL
    layer.receive(cancel, UDP, 1.0)
    evs = _events(layer)
    assert len(evs) == 1
    ev = evs[0]
    assert isinstance(ev, RequestReceived)
    assert ev.tx.method == "CANCEL"
    assert ev.tx is not inv
    assert ev.cancels is inv
    assert inv.cancelled
    assert len(layer) == 2
    # The TU answers both.
    layer.respond(ev.tx, make_response(cancel, 200), 1.0)
    layer.respond(inv, make_response(inv.request, 487, to_tag="u"), 1.0)
    assert _statuses(layer) == [200, 487]
    # A retransmitted CANCEL gets the 200 again.
    layer.receive(_req("CANCEL"), UDP, 1.2)
    assert _statuses(layer) == [200]
    assert _events(layer) == []
    layer.receive(_req("ACK", to_tag="u"), UDP, 1.3)
    assert _events(layer) == []
    _run_timers(layer, 100.0)
    assert len(layer) == 0


def test_cancel_without_match() -> None:
    layer = TransactionLayer()
    _new_invite(layer)
    cancel = _req("CANCEL", branch="z9hG4bK-other")
    layer.receive(cancel, UDP, 1.0)
    evs = _events(layer)
    assert len(evs) == 1 and isinstance(evs[0], RequestReceived)
    assert evs[0].cancels is None
    assert evs[0].tx.method == "CANCEL"
    # Different sent-by with the same branch does not match either.
    cancel2 = _req("CANCEL", via_host="192.0.2.99:5060")
    layer.receive(cancel2, Peer("udp", "192.0.2.99", 5060), 1.0)
    evs = _events(layer)
    assert len(evs) == 1 and isinstance(evs[0], RequestReceived)
    assert evs[0].cancels is None


def test_cancel_after_final_does_not_mark_cancelled() -> None:
    layer = TransactionLayer()
    inv = _new_invite(layer)
    layer.respond(inv, make_response(inv.request, 200, to_tag="u"), 0.0)
    layer.receive(_req("CANCEL"), UDP, 0.1)
    evs = _events(layer)
    assert len(evs) == 1 and isinstance(evs[0], RequestReceived)
    assert evs[0].cancels is inv
    assert not inv.cancelled


# --------------------------------------------------------------------------- non-INVITE server


def test_non_invite_server_retransmission_and_timer_j() -> None:
    layer = TransactionLayer()
    bye = _req("BYE", branch="z9hG4bK-bye1", cseq=2, to_tag="uas-1")
    layer.receive(bye, UDP, 0.0)
    evs = _events(layer)
    assert len(evs) == 1 and isinstance(evs[0], RequestReceived)
    tx = evs[0].tx
    assert tx.state == "trying"
    assert layer.datagrams_to_send() == []  # no automatic 100 for non-INVITE
    # Retransmission while trying with no response: nothing sent, no event.
    layer.receive(bye, UDP, 0.5)
    assert layer.datagrams_to_send() == []
    assert _events(layer) == []
    layer.respond(tx, make_response(bye, 200), 1.0)
    assert tx.state == "completed"
    assert _statuses(layer) == [200]
    assert layer.get_timer() == 33.0  # Timer J = 64*T1
    layer.receive(bye, UDP, 2.0)
    assert _statuses(layer) == [200]
    assert _events(layer) == []
    # No response retransmissions of its own.
    layer.handle_timer(32.9)
    assert layer.datagrams_to_send() == []
    assert len(layer) == 1
    layer.handle_timer(33.0)
    assert tx.state == "terminated"
    assert len(layer) == 0
    assert _events(layer) == []  # non-INVITE servers never time out with an event


def test_non_invite_server_provisional_then_final() -> None:
    layer = TransactionLayer()
    opt = _req("OPTIONS", branch="z9hG4bK-opt1")
    layer.receive(opt, UDP, 0.0)
    ev = _events(layer)[0]
    assert isinstance(ev, RequestReceived)
    layer.respond(ev.tx, make_response(opt, 100), 0.1)
    assert ev.tx.state == "proceeding"
    layer.receive(opt, UDP, 0.2)
    assert _statuses(layer) == [100, 100]
    layer.respond(ev.tx, make_response(opt, 200, to_tag="x"), 0.3)
    assert ev.tx.state == "completed"


def test_non_invite_server_tcp_terminates_at_once() -> None:
    layer = TransactionLayer()
    bye = _req("BYE", branch="z9hG4bK-bye1", to_tag="u", transport="TCP")
    layer.receive(bye, TCP, 0.0)
    ev = _events(layer)[0]
    assert isinstance(ev, RequestReceived)
    layer.respond(ev.tx, make_response(bye, 200), 0.0)
    assert _statuses(layer) == [200]
    assert ev.tx.state == "terminated"
    assert len(layer) == 0
    assert layer.get_timer() is None


# --------------------------------------------------------------------------- RFC 2543 peers


def test_rfc2543_matching_without_magic_cookie() -> None:
    layer = TransactionLayer()
    tx = _new_invite(layer, branch=None)
    layer.datagrams_to_send()
    # Retransmission: same Call-ID, CSeq, From-tag, Via -> absorbed.
    layer.receive(_req("INVITE", branch=None), UDP, 0.5)
    assert _statuses(layer) == [100]
    assert _events(layer) == []
    # An old-style branch that is not a cookie is matched the same way.
    tx_b = _new_invite(layer, branch="1", call_id="call-2@192.0.2.10")
    layer.receive(_req("INVITE", branch="1", call_id="call-2@192.0.2.10"), UDP, 0.5)
    assert _events(layer) == []
    # A different CSeq is a new transaction.
    tx3 = _new_invite(layer, branch=None, cseq=2)
    assert tx3 is not tx
    # CANCEL matches by the same fields.
    layer.receive(_req("CANCEL", branch=None), UDP, 0.6)
    ev = _events(layer)[0]
    assert isinstance(ev, RequestReceived) and ev.cancels is tx and tx.cancelled
    # A non-2xx final is ACKed with the same (branchless) Via.
    layer.respond(tx, make_response(tx.request, 487, to_tag="u"), 0.7)
    layer.receive(_req("ACK", branch=None, to_tag="u"), UDP, 0.8)
    assert _events(layer) == []
    assert tx.state == "confirmed"
    # The 2xx of an RFC 2543 INVITE is ACKed with the INVITE's Via too.
    layer.respond(tx3, make_response(tx3.request, 200, to_tag="v"), 1.0)
    ack = _req("ACK", branch=None, cseq=2, to_tag="v")
    layer.receive(ack, UDP, 1.1)
    assert _events(layer) == [AckReceived(ack, UDP, tx3)]
    assert tx3.state == "terminated"
    assert tx_b.state == "proceeding"


# --------------------------------------------------------------------------- client: non-INVITE


def test_client_bye_timer_e_and_200() -> None:
    layer = TransactionLayer()
    bye = _our_request("BYE", branch="z9hG4bK-c1")
    ctx = layer.request(bye, UDP, 0.0)
    assert isinstance(ctx, ClientTransaction)
    assert ctx.state == "trying" and ctx.method == "BYE"
    out = layer.datagrams_to_send()
    assert out == [(UDP, bye.to_bytes())]
    fired = _run_timers(layer, 12.0)
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 11.5]
    for _, sent in fired:
        assert [_parse_req(d).method for d in sent] == ["BYE"]
    ok = _response(200, branch="z9hG4bK-c1")
    layer.receive(ok, UDP, 12.0)
    assert _events(layer) == [ResponseReceived(ctx, ok)]
    assert ctx.state == "completed"
    assert ctx.final_response is ok
    # Retransmitted final absorbed.
    layer.receive(ok, UDP, 12.5)
    assert _events(layer) == []
    # No more request retransmissions; Timer K = T4 removes it.
    assert layer.get_timer() == 17.0
    fired = _run_timers(layer, 100.0)
    assert all(not sent for _, sent in fired)
    assert ctx.state == "terminated"
    assert len(layer) == 0


def test_client_bye_timer_f_timeout() -> None:
    layer = TransactionLayer()
    ctx = layer.request(_our_request("BYE", branch="z9hG4bK-c2"), UDP, 100.0)
    layer.datagrams_to_send()
    fired = _run_timers(layer, 200.0)
    times = [t for t, _ in fired]
    assert times[:6] == [100.5, 101.5, 103.5, 107.5, 111.5, 115.5]
    assert times[-1] == 132.0
    assert fired[-1][1] == []
    assert _events(layer) == [TransactionTimeout(ctx)]
    assert ctx.state == "terminated"
    assert len(layer) == 0


def test_client_non_invite_provisional_switches_to_t2() -> None:
    layer = TransactionLayer()
    ctx = layer.request(_our_request("OPTIONS", branch="z9hG4bK-c3"), UDP, 0.0)
    _run_timers(layer, 0.5)  # first retransmission at 0.5; next due at 1.5
    trying = _response(100, branch="z9hG4bK-c3", method="OPTIONS", to_tag=None)
    layer.receive(trying, UDP, 0.6)
    assert _events(layer) == [ResponseReceived(ctx, trying)]
    assert ctx.state == "proceeding"
    fired = _run_timers(layer, 14.0)
    assert [t for t, _ in fired] == [1.5, 5.5, 9.5, 13.5]


def test_client_tcp_no_retransmission() -> None:
    layer = TransactionLayer()
    ctx = layer.request(_our_request("BYE", branch="z9hG4bK-t", transport="TCP"), TCP, 0.0)
    assert len(layer.datagrams_to_send()) == 1
    assert layer.get_timer() == 32.0  # Timer F only
    ok = _response(200, branch="z9hG4bK-t")
    layer.receive(ok, TCP, 1.0)
    assert _events(layer) == [ResponseReceived(ctx, ok)]
    assert ctx.state == "terminated"  # Timer K = 0
    assert len(layer) == 0
    assert layer.get_timer() is None


def test_stray_response() -> None:
    layer = TransactionLayer()
    resp = _response(200, branch="z9hG4bK-nothing", method="INVITE")
    layer.receive(resp, UDP, 0.0)
    assert _events(layer) == [StrayResponse(resp, UDP)]
    # Same branch but another method does not match either.
    layer.request(_our_request("BYE", branch="z9hG4bK-b"), UDP, 0.0)
    wrong = _response(200, branch="z9hG4bK-b", method="INFO")
    layer.receive(wrong, UDP, 0.1)
    assert _events(layer) == [StrayResponse(wrong, UDP)]


# --------------------------------------------------------------------------- client: INVITE


def test_client_invite_timer_a_and_b() -> None:
    layer = TransactionLayer()
    ctx = layer.request(_our_request("INVITE", branch="z9hG4bK-i1"), UDP, 0.0)
    assert ctx.state == "calling"
    layer.datagrams_to_send()
    fired = _run_timers(layer, 100.0)
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
    assert all(len(sent) == 1 for _, sent in fired[:-1])
    assert fired[-1][1] == []
    assert _events(layer) == [TransactionTimeout(ctx)]
    assert len(layer) == 0


def test_client_reinvite_non_2xx_generates_ack() -> None:
    layer = TransactionLayer()
    inv = _our_request("INVITE", branch="z9hG4bK-ri", cseq=5, route="<sip:proxy.example;lr>")
    ctx = layer.request(inv, UDP, 0.0)
    layer.datagrams_to_send()
    ringing = _response(180, branch="z9hG4bK-ri", cseq=5, method="INVITE")
    layer.receive(ringing, UDP, 0.2)
    assert ctx.state == "proceeding"
    assert _events(layer) == [ResponseReceived(ctx, ringing)]
    # No retransmission and no Timer B after a provisional.
    assert layer.get_timer() is None
    busy = _response(488, branch="z9hG4bK-ri", cseq=5, method="INVITE", to_tag="uas-9")
    layer.receive(busy, UDP, 1.0)
    assert _events(layer) == [ResponseReceived(ctx, busy)]
    assert ctx.state == "completed"
    assert ctx.final_response is busy
    out = layer.datagrams_to_send()
    assert len(out) == 1
    peer, data = out[0]
    assert peer == UDP
    ack = _parse_req(data)
    assert ack.method == "ACK"
    assert ack.uri == inv.uri
    assert ack.cseq == (5, "ACK")
    assert ack.call_id == inv.call_id
    assert ack.top_via.branch == "z9hG4bK-ri"
    assert len(ack.vias) == 1
    assert ack.from_tag == "ours"
    assert ack.to_tag == "uas-9"
    assert ack.headers.get_all("Route") == ["<sip:proxy.example;lr>"]
    assert ack.body == b""
    # A retransmitted final is absorbed, and the ACK re-sent.
    layer.receive(busy, UDP, 1.5)
    assert _events(layer) == []
    assert layer.datagrams_to_send() == [(UDP, data)]
    # Timer D (32 s) then gone.
    assert layer.get_timer() == 33.0
    _run_timers(layer, 100.0)
    assert len(layer) == 0
    assert _events(layer) == []


def test_client_invite_487_over_tcp_terminates() -> None:
    layer = TransactionLayer()
    ctx = layer.request(_our_request("INVITE", branch="z9hG4bK-tt", transport="TCP"), TCP, 0.0)
    layer.datagrams_to_send()
    resp = _response(487, branch="z9hG4bK-tt", method="INVITE")
    layer.receive(resp, TCP, 0.1)
    assert _events(layer) == [ResponseReceived(ctx, resp)]
    out = layer.datagrams_to_send()
    assert len(out) == 1 and _parse_req(out[0][1]).method == "ACK"
    assert ctx.state == "terminated"
    assert len(layer) == 0


def test_client_invite_2xx_retransmissions_reported() -> None:
    layer = TransactionLayer()
    ctx = layer.request(_our_request("INVITE", branch="z9hG4bK-ok", cseq=3), UDP, 0.0)
    layer.datagrams_to_send()
    ok = _response(200, branch="z9hG4bK-ok", cseq=3, method="INVITE")
    layer.receive(ok, UDP, 0.1)
    assert _events(layer) == [ResponseReceived(ctx, ok)]
    assert ctx.state == "accepted"
    assert layer.datagrams_to_send() == []  # the layer never ACKs a 2xx
    layer.receive(ok, UDP, 0.6)
    layer.receive(ok, UDP, 1.6)
    assert _events(layer) == [ResponseReceived(ctx, ok), ResponseReceived(ctx, ok)]
    # A stray non-2xx in accepted is ignored.
    layer.receive(_response(500, branch="z9hG4bK-ok", cseq=3, method="INVITE"), UDP, 2.0)
    assert _events(layer) == []
    # No retransmission of the INVITE after the 2xx.
    fired = _run_timers(layer, 100.0)
    assert [t for t, _ in fired] == [32.1]
    assert fired[0][1] == []
    assert _events(layer) == []
    assert len(layer) == 0
    # After the accepted period, a 2xx is stray.
    layer.receive(ok, UDP, 40.0)
    assert _events(layer) == [StrayResponse(ok, UDP)]


def test_client_cancel_guard_ends_unanswered_invite() -> None:
    layer = TransactionLayer()
    ictx = layer.request(_our_request("INVITE", branch="z9hG4bK-cg"), UDP, 0.0)
    layer.receive(_response(180, branch="z9hG4bK-cg", method="INVITE"), UDP, 0.1)
    _events(layer)
    cctx = layer.request(_our_request("CANCEL", branch="z9hG4bK-cg"), UDP, 10.0)
    assert cctx.key != ictx.key
    ok = _response(200, branch="z9hG4bK-cg", method="CANCEL")
    layer.receive(ok, UDP, 10.1)
    assert _events(layer) == [ResponseReceived(cctx, ok)]
    fired = _run_timers(layer, 100.0)
    assert fired[-1][0] == 42.0  # 64*T1 after the CANCEL
    assert _events(layer) == [TransactionTimeout(ictx)]
    assert len(layer) == 0


def test_client_cancel_guard_survives_provisional() -> None:
    layer = TransactionLayer()
    ictx = layer.request(_our_request("INVITE", branch="z9hG4bK-cg2"), UDP, 0.0)
    layer.request(_our_request("CANCEL", branch="z9hG4bK-cg2"), UDP, 0.2)
    layer.receive(_response(180, branch="z9hG4bK-cg2", method="INVITE"), UDP, 0.3)
    layer.receive(_response(200, branch="z9hG4bK-cg2", method="CANCEL"), UDP, 0.3)
    _events(layer)
    assert ictx.state == "proceeding"
    assert layer.get_timer() is not None
    fired = _run_timers(layer, 100.0)
    assert fired[-1][0] == 32.0  # Timer B, kept past the provisional
    assert _events(layer) == [TransactionTimeout(ictx)]
    assert len(layer) == 0


def test_request_ack_is_sent_without_transaction() -> None:
    layer = TransactionLayer()
    ack = _our_request("ACK", branch="z9hG4bK-a2xx")
    ctx = layer.request(ack, UDP, 0.0)
    assert ctx.state == "terminated"
    assert layer.datagrams_to_send() == [(UDP, ack.to_bytes())]
    assert len(layer) == 0
    assert layer.get_timer() is None


# --------------------------------------------------------------------------- bulk / timers


def test_late_handle_timer_does_not_burst() -> None:
    layer = TransactionLayer()
    layer.request(_our_request("BYE", branch="z9hG4bK-late"), UDP, 0.0)
    layer.datagrams_to_send()
    layer.handle_timer(5.0)  # due: 0.5 only (next computed from 5.0)
    assert len(layer.datagrams_to_send()) == 1
    assert layer.get_timer() == 6.0


def test_many_transactions_settle_to_zero() -> None:
    layer = TransactionLayer()
    now = 0.0
    invites: list[ServerTransaction] = []
    for i in range(300):
        now = i * 0.001
        call_id = f"c{i}@192.0.2.10"
        tx = _new_invite(layer, now=now, branch=f"z9hG4bK-m{i}", call_id=call_id)
        invites.append(tx)
        if i % 3 == 0:
            layer.respond(tx, make_response(tx.request, 200, to_tag=f"t{i}"), now)
            layer.receive(_ack_for(tx.request, f"t{i}", branch=f"z9hG4bK-a{i}"), UDP, now)
            ack_ev = layer.next_event()
            assert isinstance(ack_ev, AckReceived) and ack_ev.invite_tx is tx
        elif i % 3 == 1:
            layer.respond(tx, make_response(tx.request, 486, to_tag=f"t{i}"), now)
            layer.receive(
                _req("ACK", branch=f"z9hG4bK-m{i}", to_tag=f"t{i}", call_id=call_id), UDP, now
            )
        else:
            layer.respond(tx, make_response(tx.request, 200, to_tag=f"t{i}"), now)  # no ACK
        bye = _our_request("BYE", branch=f"z9hG4bK-b{i}")
        layer.request(bye, UDP, now)
        if i % 2:
            layer.receive(_response(200, branch=f"z9hG4bK-b{i}"), UDP, now)
            resp_ev = layer.next_event()
            assert isinstance(resp_ev, ResponseReceived) and resp_ev.response.status == 200
        assert layer.next_event() is None
        layer.datagrams_to_send()
    assert len(layer) > 0
    t = now
    while (deadline := layer.get_timer()) is not None:
        assert deadline >= t
        t = deadline
        layer.handle_timer(t)
        layer.datagrams_to_send()
    evs = _events(layer)
    timeouts = [e for e in evs if isinstance(e, TransactionTimeout)]
    assert sum(isinstance(e.tx, ServerTransaction) for e in timeouts) == 100
    assert sum(isinstance(e.tx, ClientTransaction) for e in timeouts) == 150
    assert len(layer) == 0
    assert all(tx.state == "terminated" for tx in invites)
    assert t <= 64 * 0.5 + 1.0


def test_heap_compaction_keeps_live_timers() -> None:
    layer = TransactionLayer()
    keep = layer.request(_our_request("BYE", branch="z9hG4bK-keep"), UDP, 0.0)
    for i in range(5000):
        branch = f"z9hG4bK-x{i}"
        layer.request(_our_request("BYE", branch=branch, transport="TCP"), TCP, 1.0)
        layer.receive(_response(200, branch=branch), TCP, 1.0)
    layer.datagrams_to_send()
    _events(layer)
    assert len(layer) == 1
    assert len(layer._heap) < 4200  # cancelled entries were dropped along the way
    assert layer.get_timer() == 0.5
    fired = _run_timers(layer, 100.0)
    assert [t for t, _ in fired][-1] == 32.0
    assert _events(layer) == [TransactionTimeout(keep)]
    assert len(layer) == 0
