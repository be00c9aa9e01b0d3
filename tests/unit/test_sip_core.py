"""SipCore driven by hand: messages in, responses/events out, explicit time, no network."""

from __future__ import annotations

import logging

import pytest

from confroom.sip.core import (
    ByeDone,
    CallAckTimeout,
    CallCancelled,
    CallConfirmed,
    CallEnded,
    DtmfInfo,
    IncomingCall,
    ReInvite,
    SipCore,
)
from confroom.sip.message import Request, Response, parse_message
from confroom.sip.peer import Peer

PEER = Peer("udp", "127.0.0.1", 5070)
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def req(method: str, *, branch: str = "z9hG4bKa1", cseq: int = 1, to_tag: str | None = None,
        call_id: str = "c1@test", body: str = "", extra: str = "", cseq_method: str | None = None,
        ) -> bytes:
    to = "<sip:1000@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    text = (
        f"{method} sip:1000@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@127.0.0.1:5070>;tag=from1\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Contact: <sip:alice@127.0.0.1:5070>\r\n"
        f"{extra}{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}"
    )
    return text.encode()


def sent(core: SipCore) -> list[Response | Request]:
    return [parse_message(data) for _, data in core.datagrams_to_send()]


def events(core: SipCore) -> list[object]:
    out = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out


def new_call(core: SipCore, now: float = 0.0) -> IncomingCall:
    core.receive_datagram(req("INVITE", body=SDP), PEER, now)
    out = sent(core)
    assert [m.status for m in out if isinstance(m, Response)] == [100]
    (ev,) = events(core)
    assert isinstance(ev, IncomingCall)
    return ev


def answer_and_ack(core: SipCore) -> IncomingCall:
    ev = new_call(core)
    core.ring(ev.leg, 0.1)
    assert core.answer(ev.leg, b"v=0\r\n", 0.2)
    out = sent(core)
    assert [m.status for m in out if isinstance(m, Response)] == [180, 200]
    ok = out[-1]
    assert isinstance(ok, Response)
    assert ok.to_tag == ev.leg.local_tag
    assert ok.headers.get("Contact")
    core.receive_datagram(req("ACK", branch="z9hG4bKack", to_tag=ev.leg.local_tag), PEER, 0.3)
    (conf,) = events(core)
    assert isinstance(conf, CallConfirmed)
    return ev


def test_invite_answer_ack_then_remote_bye() -> None:
    core = SipCore("127.0.0.1", 5060)
    ev = answer_and_ack(core)
    core.receive_datagram(
        req("BYE", branch="z9hG4bKbye", cseq=2, to_tag=ev.leg.local_tag), PEER, 1.0
    )
    (resp,) = sent(core)
    assert isinstance(resp, Response) and resp.status == 200
    (ended,) = events(core)
    assert isinstance(ended, CallEnded)
    # a retransmitted BYE is answered again by the transaction, without a new event
    core.receive_datagram(
        req("BYE", branch="z9hG4bKbye", cseq=2, to_tag=ev.leg.local_tag), PEER, 1.1
    )
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [200]
    assert events(core) == []


def test_unanswered_200_is_retransmitted_then_ack_timeout() -> None:
    core = SipCore("127.0.0.1", 5060)
    ev = new_call(core)
    core.answer(ev.leg, b"v=0\r\n", 0.0)
    sent(core)
    t = core.get_timer()
    assert t is not None and abs(t - 0.5) < 1e-6
    core.handle_timer(0.5)
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [200]
    core.handle_timer(40.0)
    sent(core)  # the retransmissions due by then
    evs = events(core)
    assert any(isinstance(e, CallAckTimeout) for e in evs)
    assert core.bye(ev.leg, 40.0)
    (bye,) = sent(core)
    assert isinstance(bye, Request) and bye.method == "BYE"


def test_cancel_before_answer() -> None:
    core = SipCore("127.0.0.1", 5060)
    ev = new_call(core)
    core.receive_datagram(req("CANCEL", cseq_method="CANCEL"), PEER, 0.5)
    statuses = sorted(
        (m.cseq[1], m.status) for m in sent(core) if isinstance(m, Response)
    )
    assert statuses == [("CANCEL", 200), ("INVITE", 487)]
    (cancelled,) = events(core)
    assert isinstance(cancelled, CallCancelled) and cancelled.leg is ev.leg
    assert not core.answer(ev.leg, b"v=0\r\n", 0.6)


def test_cancel_unknown_gets_481() -> None:
    core = SipCore("127.0.0.1", 5060)
    core.receive_datagram(req("CANCEL", branch="z9hG4bKnope"), PEER, 0.0)
    (resp,) = sent(core)
    assert isinstance(resp, Response) and resp.status == 481


def test_we_send_bye_and_get_200() -> None:
    core = SipCore("127.0.0.1", 5060)
    ev = answer_and_ack(core)
    assert core.bye(ev.leg, 2.0, [("X-Reason", "done")])
    (bye,) = sent(core)
    assert isinstance(bye, Request)
    assert bye.method == "BYE" and bye.uri == "sip:alice@127.0.0.1:5070"
    assert bye.from_tag == ev.leg.local_tag and bye.to_tag == "from1"
    assert bye.cseq == (1, "BYE")
    assert bye.headers.get("X-Reason") == "done"
    ok = (
        "SIP/2.0 200 OK\r\n"
        f"Via: {bye.headers.get('Via')}\r\n"
        f"From: {bye.headers.get('From')}\r\nTo: {bye.headers.get('To')}\r\n"
        f"Call-ID: {bye.call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    core.receive_datagram(ok.encode(), PEER, 2.1)
    (done,) = events(core)
    assert isinstance(done, ByeDone) and done.status == 200
    assert core.legs == []


def test_options_out_of_dialog() -> None:
    core = SipCore("127.0.0.1", 5060)
    core.receive_datagram(req("OPTIONS"), PEER, 0.0)
    (resp,) = sent(core)
    assert isinstance(resp, Response) and resp.status == 200
    assert "INVITE" in (resp.headers.get("Allow") or "")
    assert resp.to_tag


# Kamailio record-routes twice when the call changes transport (caller on TCP, node on UDP)
LB = Peer("udp", "127.0.0.1", 5090)
LB_RR = ("Record-Route: <sip:127.0.0.1:5090;r2=on;lr>\r\n"
         "Record-Route: <sip:127.0.0.1:5090;transport=tcp;r2=on;lr>\r\n")


def test_options_probe_from_a_load_balancer() -> None:
    """Kamailio's dispatcher probes each node with an OPTIONS to the node's own address (no
    user part, its own From, Max-Forwards) and takes only a 200 as 'up'."""
    core = SipCore("127.0.0.1", 5060)
    probe = (
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKprobe.0\r\n"
        "To: <sip:127.0.0.1:5060>\r\n"
        "From: <sip:front-door@confroom.invalid>;tag=f1\r\n"
        "CSeq: 10 OPTIONS\r\nCall-ID: probe-1@127.0.0.1\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    core.receive_datagram(probe.encode(), LB, 0.0)
    ((peer, data),) = core.datagrams_to_send()
    resp = parse_message(data)
    assert isinstance(resp, Response) and resp.status == 200
    assert peer == LB and resp.call_id == "probe-1@127.0.0.1" and resp.cseq == (10, "OPTIONS")
    assert events(core) == []  # a probe is no call


def test_options_while_draining_get_503_like_an_invite() -> None:
    """RFC 3261 11.2: OPTIONS gets what an INVITE would. A draining node (SIGTERM) answers
    probes 503 + Retry-After, so the front door stops sending it calls; in-dialog OPTIONS
    (a keep-alive of a call still up) still get 200."""
    core = SipCore("127.0.0.1", 5060)
    ev = answer_and_ack(core)
    core.draining_retry_after = 30
    core.receive_datagram(req("OPTIONS", branch="z9hG4bKo1", call_id="probe@x"), LB, 1.0)
    core.receive_datagram(req("OPTIONS", branch="z9hG4bKo2", cseq=5, to_tag=ev.leg.local_tag),
                          PEER, 1.0)
    out = [m for m in sent(core) if isinstance(m, Response)]
    assert [(m.call_id, m.status) for m in out] == [("probe@x", 503), ("c1@test", 200)]
    assert out[0].headers.get("Retry-After") == "30"
    core.draining_retry_after = None
    core.receive_datagram(req("OPTIONS", branch="z9hG4bKo3", call_id="probe2@x"), LB, 2.0)
    (ok,) = sent(core)
    assert isinstance(ok, Response) and ok.status == 200


def test_record_route_of_a_proxy_is_the_route_set_of_the_dialog() -> None:
    """A call through a record-routing proxy (the cluster's front door): the 200 carries the
    Record-Route back, and the BYE we send goes to the proxy with the route set as Route
    headers (in order) and the caller's Contact as Request-URI, never straight to the caller."""
    core = SipCore("127.0.0.1", 5060)
    core.receive_datagram(req("INVITE", body=SDP, extra=LB_RR), LB, 0.0)
    sent(core)
    (ev,) = events(core)
    assert isinstance(ev, IncomingCall)
    assert core.answer(ev.leg, b"v=0\r\n", 0.1)
    (ok,) = sent(core)
    assert isinstance(ok, Response)
    assert ok.headers.get_all("Record-Route") == [
        "<sip:127.0.0.1:5090;r2=on;lr>", "<sip:127.0.0.1:5090;transport=tcp;r2=on;lr>"]
    core.receive_datagram(
        req("ACK", branch="z9hG4bKack", to_tag=ev.leg.local_tag, extra="Route: <sip:x;lr>\r\n"),
        LB, 0.2)
    assert isinstance(events(core)[0], CallConfirmed)
    # a re-INVITE through the proxy is answered; the route set stays the INVITE's
    core.receive_datagram(req("INVITE", branch="z9hG4bKre", cseq=2, to_tag=ev.leg.local_tag,
                              body=SDP), LB, 1.0)
    sent(core)
    (re,) = events(core)
    assert isinstance(re, ReInvite)
    core.respond_reinvite(ev.leg, re.tx, 200, 1.1, b"v=0\r\n")
    sent(core)
    assert core.bye(ev.leg, 2.0)
    ((peer, data),) = core.datagrams_to_send()
    bye = parse_message(data)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert peer == LB  # the first Route hop, not the caller's Contact (port 5070)
    assert bye.uri == "sip:alice@127.0.0.1:5070"
    assert bye.headers.get_all("Route") == [
        "<sip:127.0.0.1:5090;r2=on;lr>", "<sip:127.0.0.1:5090;transport=tcp;r2=on;lr>"]
    assert bye.to_tag == "from1" and bye.from_tag == ev.leg.local_tag


def test_route_set_with_a_host_name_goes_back_where_the_invite_came_from() -> None:
    """A first Route hop that is a name (not resolved here) is reached at the address the
    INVITE came from, which is that proxy; the Route headers still carry the route set."""
    core = SipCore("127.0.0.1", 5060)
    rr = "Record-Route: <sip:sbc.example.com;lr>\r\n"
    core.receive_datagram(req("INVITE", body=SDP, extra=rr), LB, 0.0)
    sent(core)
    (ev,) = events(core)
    assert isinstance(ev, IncomingCall)
    assert core.answer(ev.leg, b"v=0\r\n", 0.1)
    sent(core)
    core.receive_datagram(req("ACK", branch="z9hG4bKack", to_tag=ev.leg.local_tag), LB, 0.2)
    events(core)
    assert core.bye(ev.leg, 1.0)
    ((peer, data),) = core.datagrams_to_send()
    bye = parse_message(data)
    assert isinstance(bye, Request)
    assert peer == LB and bye.headers.get_all("Route") == ["<sip:sbc.example.com;lr>"]


def test_reinvite_event_and_answer() -> None:
    core = SipCore("127.0.0.1", 5060)
    ev = answer_and_ack(core)
    hold = SDP + "a=sendonly\r\n"
    core.receive_datagram(
        req("INVITE", branch="z9hG4bKre", cseq=2, to_tag=ev.leg.local_tag, body=hold), PEER, 3.0
    )
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [100]
    (re,) = events(core)
    assert isinstance(re, ReInvite)
    core.respond_reinvite(ev.leg, re.tx, 200, 3.1, b"v=0\r\n")
    (ok,) = sent(core)
    assert isinstance(ok, Response) and ok.status == 200 and ok.body == b"v=0\r\n"


def test_in_dialog_requests_for_unknown_dialog_get_481() -> None:
    core = SipCore("127.0.0.1", 5060)
    core.receive_datagram(req("BYE", to_tag="nosuch"), PEER, 0.0)
    core.receive_datagram(req("INFO", branch="z9hG4bKi", to_tag="nosuch"), PEER, 0.0)
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [481, 481]


def test_info_dtmf_relay() -> None:
    core = SipCore("127.0.0.1", 5060)
    ev = answer_and_ack(core)
    body = "Signal=5\r\nDuration=160\r\n"
    raw = req("INFO", branch="z9hG4bKinfo", cseq=3, to_tag=ev.leg.local_tag).replace(
        b"Content-Length: 0\r\n\r\n",
        f"Content-Type: application/dtmf-relay\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        .encode(),
    )
    core.receive_datagram(raw, PEER, 4.0)
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [200]
    (d,) = events(core)
    assert isinstance(d, DtmfInfo) and d.digit == "5"


def test_unsupported_methods_and_require() -> None:
    core = SipCore("127.0.0.1", 5060)
    out: list[Response] = []
    for raw in (
        req("REGISTER", branch="z9hG4bKr1"),
        req("FOO", branch="z9hG4bKr2"),
        req("INVITE", branch="z9hG4bKr3", extra="Require: 100rel\r\n", body=SDP),
    ):
        core.receive_datagram(raw, PEER, 0.0)
        out += [m for m in sent(core) if isinstance(m, Response)]
    assert [m.status for m in out] == [405, 501, 420]
    assert out[2].headers.get("Unsupported") == "100rel"
    assert events(core) == []


def test_malformed_request_gets_400_and_core_carries_on() -> None:
    core = SipCore("127.0.0.1", 5060)
    bad = req("INVITE", body=SDP).replace(b"Call-ID: c1@test\r\n", b"")
    core.receive_datagram(bad, PEER, 0.0)
    (out,) = core.datagrams_to_send()
    assert out[1].startswith(b"SIP/2.0 400 Missing Call-ID\r\n")
    assert b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa1" in out[1]
    core.receive_datagram(b"\x00\xff garbage \r\n\r\n", PEER, 0.0)
    assert core.datagrams_to_send() == []
    new_call(core)  # still serving


def test_max_forwards_zero_gets_483() -> None:
    core = SipCore("127.0.0.1", 5060)
    raw = req("INVITE", body=SDP).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    core.receive_datagram(raw, PEER, 0.0)
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [483]


def test_reject_and_transactions_drain() -> None:
    core = SipCore("127.0.0.1", 5060)
    ev = new_call(core)
    assert core.reject(ev.leg, 486, 0.1)
    (resp,) = sent(core)
    assert isinstance(resp, Response) and resp.status == 486
    core.receive_datagram(req("ACK", to_tag=ev.leg.local_tag), PEER, 0.2)
    assert events(core) == []
    core.handle_timer(100.0)
    assert len(core.tx) == 0
    assert core.legs == []


def test_bye_before_ack_waits_for_the_ack() -> None:
    """RFC 3261 15: no BYE until our 2xx is ACKed (its 200 OK may have been lost)."""
    core = SipCore("127.0.0.1", 5060)
    ev = new_call(core)
    core.answer(ev.leg, b"v=0\r\n", 0.0)
    sent(core)
    assert core.bye(ev.leg, 0.1)  # the app hangs up at once
    assert sent(core) == []  # nothing yet: the caller has not confirmed the call
    core.handle_timer(0.5)
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [200]  # 2xx retx
    core.receive_datagram(req("ACK", branch="z9hG4bKack", to_tag=ev.leg.local_tag), PEER, 0.6)
    (bye,) = sent(core)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert events(core) == []  # no CallConfirmed for a call already hung up


def test_bye_before_ack_goes_out_when_the_2xx_times_out() -> None:
    core = SipCore("127.0.0.1", 5060)
    ev = new_call(core)
    core.answer(ev.leg, b"v=0\r\n", 0.0)
    core.bye(ev.leg, 0.1)
    sent(core)
    core.handle_timer(40.0)
    out = sent(core)
    assert [m.method for m in out if isinstance(m, Request)] == ["BYE"]
    assert not any(isinstance(e, CallAckTimeout) for e in events(core))


def test_user_agent_is_configurable_and_can_be_omitted() -> None:
    for ua, expected in ((None, "confroom/0.1"), ("acme-pbx/2", "acme-pbx/2"), ("", None)):
        core = SipCore("127.0.0.1", 5060) if ua is None else SipCore("127.0.0.1", 5060,
                                                                      user_agent=ua)
        core.receive_datagram(req("OPTIONS"), PEER, 0.0)
        (options_ok,) = sent(core)
        ev = new_call(core)
        core.ring(ev.leg, 0.1)
        assert core.answer(ev.leg, b"v=0\r\n", 0.2)
        ringing, ok = sent(core)
        core.receive_datagram(req("ACK", branch="z9hG4bKack", to_tag=ev.leg.local_tag), PEER,
                              0.3)
        assert core.bye(ev.leg, 1.0, [])
        (bye,) = sent(core)
        assert ringing.headers.get("User-Agent") is None  # provisional: never had one
        for msg in (options_ok, ok, bye):
            assert msg.headers.get("User-Agent") == expected, (ua, msg)


def test_gate_sheds_a_new_invite_with_503_retry_after_before_any_dialog() -> None:
    """A refused INVITE: 100 then 503 + Retry-After (To-tag, Via, CSeq of the INVITE), no
    event and no dialog; a retransmission gets the same 503, the ACK is absorbed, and a
    re-INVITE-looking request in that 'dialog' is 481."""
    core = SipCore("127.0.0.1", 5060)
    asked: list[tuple[str, str]] = []

    def gate(request: Request, peer: Peer, now: float) -> int | None:
        asked.append((request.call_id, peer.host))
        return 7

    core.gate = gate
    core.receive_datagram(req("INVITE", body=SDP), PEER, 0.0)
    out = sent(core)
    assert [m.status for m in out if isinstance(m, Response)] == [100, 503]
    shed = out[-1]
    assert isinstance(shed, Response)
    assert shed.headers.get("Retry-After") == "7"
    assert shed.to_tag and shed.cseq == (1, "INVITE") and shed.call_id == "c1@test"
    assert shed.top_via.branch == "z9hG4bKa1"
    assert events(core) == [] and core.legs == []
    assert asked == [("c1@test", "127.0.0.1")]
    # the INVITE again (a retransmission): the same answer, the gate is not asked again
    core.receive_datagram(req("INVITE", body=SDP), PEER, 0.5)
    (again,) = sent(core)
    assert isinstance(again, Response) and again.status == 503 and again.to_tag == shed.to_tag
    assert len(asked) == 1
    # its ACK: absorbed (no event, nothing sent), and the 503 is not retransmitted any more
    core.receive_datagram(req("ACK", to_tag=shed.to_tag), PEER, 0.6)
    assert sent(core) == [] and events(core) == []
    core.handle_timer(40.0)
    assert sent(core) == []


def test_gate_admits_with_none() -> None:
    core = SipCore("127.0.0.1", 5060)
    core.gate = lambda request, peer, now: None
    ev = new_call(core)
    assert ev.leg in core.legs


def test_malformed_flood_is_answered_but_logged_once_per_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every malformed request still gets its 400, but 1,000 of them in 2 s write 2 log lines
    (the second one counting those left out), not 1,000."""
    core = SipCore("127.0.0.1", 5060)
    peer = Peer("udp", "192.0.2.66", 5060)
    bad = (b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.66;branch=z9hG4bKf\r\n"
           b"From: <sip:a@b>;tag=1\r\nTo: <sip:x>\r\nCall-ID: c\r\nCSeq: nope\r\n\r\n")
    answered = 0
    with caplog.at_level(logging.WARNING, logger="confroom.sip"):
        for k in range(1000):
            core.receive_datagram(bad, peer, now=k * 0.002)
            answered += sum(1 for _, d in core.datagrams_to_send() if d.startswith(b"SIP/2.0 400"))
    lines = [r.getMessage() for r in caplog.records if "malformed SIP" in r.getMessage()]
    assert answered == 1000
    assert len(lines) == 2, lines
    assert "not logged" in lines[1]
    assert core.stats["parse_errors"] == 1000
