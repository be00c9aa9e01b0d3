"""SipCore as a UAC (outbound INVITE) and the digest module, driven by hand: no network."""

from __future__ import annotations

import hashlib
from typing import Any

from confroom.sip.core import (
    ByeDone,
    CallEnded,
    Leg,
    OutboundAnswered,
    OutboundFailed,
    OutboundProgress,
    ReInvite,
    SipCore,
)
from confroom.sip.digest import Challenge, Credentials, authorization, parse_challenge
from confroom.sip.message import Request, Response, make_response, parse_message
from confroom.sip.peer import Peer

PEER = Peer("udp", "127.0.0.1", 5070)
OFFER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
ANSWER = b"v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


def sent(core: SipCore) -> list[Request | Response]:
    return [parse_message(data) for _, data in core.datagrams_to_send()]


def events(core: SipCore) -> list[object]:
    out: list[object] = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out


def start(core: SipCore, **kw: Any) -> tuple[Leg, Request]:
    leg = core.invite("sip:bob@127.0.0.1:5070", PEER, "<sip:alice@example.com>", OFFER, 0.0,
                      **kw)
    (inv,) = sent(core)
    assert isinstance(inv, Request) and inv.method == "INVITE"
    assert inv.body == OFFER and inv.from_tag == leg.local_tag and inv.to_tag is None
    return leg, inv


def reply(core: SipCore, inv: Request, status: int, now: float, *, tag: str | None = "bob1",
          body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
    hdrs = [("Contact", "<sip:bob@127.0.0.1:5070>"), *(headers or [])]
    resp = make_response(inv, status, to_tag=tag, headers=hdrs, body=body)
    core.receive_datagram(resp.to_bytes(), PEER, now)


def test_answer_acks_and_bye_both_ways() -> None:
    core = SipCore("127.0.0.1", 5060)
    leg, inv = start(core)
    reply(core, inv, 180, 0.1)
    assert [type(e) for e in events(core)] == [OutboundProgress]
    reply(core, inv, 200, 0.2, body=ANSWER)
    (ack,) = sent(core)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.to_tag == "bob1" and ack.cseq == (inv.cseq[0], "ACK")
    assert ack.uri == "sip:bob@127.0.0.1:5070"
    (ev,) = events(core)
    assert isinstance(ev, OutboundAnswered) and ev.sdp == ANSWER and leg.state == "confirmed"
    # a retransmitted 2xx is ACKed again
    reply(core, inv, 200, 0.7, body=ANSWER)
    (ack2,) = sent(core)
    assert isinstance(ack2, Request) and ack2.method == "ACK"
    # and again after the transaction is gone (Timer M)
    core.handle_timer(100.0)
    sent(core)
    reply(core, inv, 200, 100.5, body=ANSWER)
    assert [m.method for m in sent(core) if isinstance(m, Request)] == ["ACK"]
    # our BYE
    assert core.bye(leg, 101.0)
    (bye,) = sent(core)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert bye.from_tag == leg.local_tag and bye.to_tag == "bob1"
    assert bye.cseq[0] == inv.cseq[0] + 1
    core.receive_datagram(make_response(bye, 200).to_bytes(), PEER, 101.1)
    assert [type(e) for e in events(core)] == [ByeDone]
    assert_clean(core, 200.0)


def assert_clean(core: SipCore, now: float) -> None:
    """Nothing of the call is left in the core once its transactions have run out."""
    core.handle_timer(now)
    sent(core)
    events(core)
    assert not core.legs and not core._invite_ctxs and len(core.tx) == 0


def _in_dialog(inv: Request, leg: Leg, method: str, cseq: int, body: bytes = b"") -> bytes:
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:confroom@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKin{cseq}\r\n"
        f"From: <sip:bob@127.0.0.1:5070>;tag=bob1\r\n"
        f"To: <sip:alice@example.com>;tag={leg.local_tag}\r\n"
        f"Call-ID: {inv.call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:bob@127.0.0.1:5070>\r\n{ctype}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_callee_reinvite_and_bye() -> None:
    core = SipCore("127.0.0.1", 5060)
    leg, inv = start(core)
    reply(core, inv, 200, 0.1, body=ANSWER)
    sent(core)
    events(core)
    core.receive_datagram(_in_dialog(inv, leg, "INVITE", 1, ANSWER), PEER, 1.0)
    (ev,) = events(core)
    assert isinstance(ev, ReInvite) and ev.leg is leg
    core.respond_reinvite(leg, ev.tx, 200, 1.1, OFFER)
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [100, 200]
    core.receive_datagram(_in_dialog(inv, leg, "BYE", 2), PEER, 2.0)
    assert [m.status for m in sent(core) if isinstance(m, Response)] == [200]
    (end,) = events(core)
    assert isinstance(end, CallEnded) and end.leg is leg


def test_busy_is_acked_by_transaction_layer() -> None:
    core = SipCore("127.0.0.1", 5060)
    leg, inv = start(core)
    reply(core, inv, 486, 0.1)
    (ack,) = sent(core)
    assert isinstance(ack, Request) and ack.method == "ACK" and ack.top_via.branch == \
        inv.top_via.branch
    (ev,) = events(core)
    assert isinstance(ev, OutboundFailed) and ev.status == 486 and leg.state == "terminated"
    assert_clean(core, 100.0)


def test_early_media_183_then_200() -> None:
    core = SipCore("127.0.0.1", 5060)
    _leg, inv = start(core)
    reply(core, inv, 183, 0.1, body=ANSWER)
    (ev,) = events(core)
    assert isinstance(ev, OutboundProgress) and ev.status == 183 and ev.sdp == ANSWER
    reply(core, inv, 200, 0.5, body=ANSWER)
    assert [type(e) for e in events(core)] == [OutboundAnswered]


def test_retransmits_then_timer_b() -> None:
    core = SipCore("127.0.0.1", 5060)
    _leg, _inv = start(core)
    core.handle_timer(0.5)
    core.handle_timer(1.5)
    assert [m.method for m in sent(core) if isinstance(m, Request)] == ["INVITE", "INVITE"]
    core.handle_timer(40.0)
    sent(core)
    (ev,) = events(core)
    assert isinstance(ev, OutboundFailed) and ev.status is None and ev.reason == "timeout"
    assert_clean(core, 100.0)


def test_cancel_waits_for_provisional_then_487() -> None:
    core = SipCore("127.0.0.1", 5060)
    leg, inv = start(core)
    core.cancel(leg, 0.05)
    assert sent(core) == []  # RFC 3261 9.1: not before a provisional response
    reply(core, inv, 180, 0.1)
    (cancel,) = sent(core)
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert cancel.top_via.branch == inv.top_via.branch and cancel.cseq == (inv.cseq[0], "CANCEL")
    core.receive_datagram(make_response(cancel, 200).to_bytes(), PEER, 0.2)
    reply(core, inv, 487, 0.2)
    assert [m.method for m in sent(core) if isinstance(m, Request)] == ["ACK"]
    evs = events(core)
    assert isinstance(evs[-1], OutboundFailed) and evs[-1].status == 487
    assert evs[-1].reason == "cancelled"


def test_200_crossing_cancel_is_acked_and_byed() -> None:
    core = SipCore("127.0.0.1", 5060)
    leg, inv = start(core)
    reply(core, inv, 180, 0.1)
    events(core)
    core.cancel(leg, 0.2)
    sent(core)
    reply(core, inv, 200, 0.25, body=ANSWER)
    assert [m.method for m in sent(core) if isinstance(m, Request)] == ["ACK", "BYE"]
    (ev,) = events(core)
    assert isinstance(ev, OutboundFailed) and ev.status == 487
    assert_clean(core, 100.0)  # the BYE timed out: nothing left either


def _challenge_test(status: int, header: str, algorithm: str) -> None:
    core = SipCore("127.0.0.1", 5060)
    creds = Credentials("trunkuser", "s3cret")
    leg, inv = start(core, credentials=creds)
    chal = f'Digest realm="trunk", nonce="abc123", algorithm={algorithm}, qop="auth"'
    reply(core, inv, status, 0.1, headers=[(header, chal)])
    out = sent(core)
    assert [m.method for m in out if isinstance(m, Request)] == ["ACK", "INVITE"]
    inv2 = out[1]
    assert isinstance(inv2, Request)
    assert inv2.cseq[0] == inv.cseq[0] + 1 and inv2.call_id == inv.call_id
    assert inv2.top_via.branch != inv.top_via.branch and inv2.from_tag == inv.from_tag
    auth = inv2.headers.get("Authorization" if status == 401 else "Proxy-Authorization")
    assert auth is not None and auth.startswith("Digest ")
    fields = {k.strip(): v.strip('"') for k, _, v in
              (p.partition("=") for p in auth[7:].split(", "))}
    h = hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5

    def hx(s: str) -> str:
        return h(s.encode()).hexdigest()

    ha1 = hx("trunkuser:trunk:s3cret")
    ha2 = hx(f"INVITE:{inv.uri}")
    expect = hx(f"{ha1}:abc123:{fields['nc']}:{fields['cnonce']}:auth:{ha2}")
    assert fields["response"] == expect and fields["qop"] == "auth"
    assert events(core) == []  # the challenge is not reported
    # the same challenge again (wrong password): give up
    reply(core, inv2, status, 0.2, headers=[(header, chal)])
    (ev,) = events(core)
    assert isinstance(ev, OutboundFailed) and ev.status == status and leg.state == "terminated"


def test_digest_401_sha256() -> None:
    _challenge_test(401, "WWW-Authenticate", "SHA-256")


def test_digest_407_md5() -> None:
    _challenge_test(407, "Proxy-Authenticate", "MD5")


def test_401_without_credentials_fails() -> None:
    core = SipCore("127.0.0.1", 5060)
    _leg, inv = start(core)
    reply(core, inv, 401, 0.1, headers=[("WWW-Authenticate", 'Digest realm="r", nonce="n"')])
    (ev,) = events(core)
    assert isinstance(ev, OutboundFailed) and ev.status == 401


def test_digest_rfc2617_vector() -> None:
    # RFC 2617 section 3.5 example
    chal = parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                           'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                           'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert chal == Challenge("testrealm@host.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                             "MD5", ("auth", "auth-int"), "5ccc069c403ebaf9f0171e9517f40e41")
    value = authorization(chal, Credentials("Mufasa", "Circle Of Life"), "GET",
                          "/dir/index.html", cnonce="0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in value
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in value


def test_2xx_without_to_tag_is_acked_and_fails() -> None:
    core = SipCore("127.0.0.1", 5060)
    _leg, inv = start(core)
    reply(core, inv, 200, 0.1, tag=None, body=ANSWER)
    (ack,) = sent(core)
    assert isinstance(ack, Request) and ack.method == "ACK"
    (ev,) = events(core)
    assert isinstance(ev, OutboundFailed) and ev.status == 502
    assert_clean(core, 100.0)


def test_record_route_of_an_answered_invite_routes_ack_and_bye() -> None:
    """Outbound call through two record-routing proxies: the UAC's route set is the 2xx's
    Record-Route reversed (RFC 3261 12.1.2); ACK and BYE carry it as Route headers, go to the
    first hop's address and keep the callee's Contact as Request-URI."""
    core = SipCore("127.0.0.1", 5060)
    leg, inv = start(core)
    rr = [("Record-Route", "<sip:192.0.2.2:5080;lr>"), ("Record-Route", "<sip:192.0.2.1;lr>")]
    reply(core, inv, 200, 0.2, body=ANSWER, headers=rr)
    ((peer, data),) = core.datagrams_to_send()
    ack = parse_message(data)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert peer == Peer("udp", "192.0.2.1", 5060)
    assert ack.uri == "sip:bob@127.0.0.1:5070"
    assert ack.headers.get_all("Route") == ["<sip:192.0.2.1;lr>", "<sip:192.0.2.2:5080;lr>"]
    events(core)
    assert core.bye(leg, 1.0)
    ((peer, data),) = core.datagrams_to_send()
    bye = parse_message(data)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert peer == Peer("udp", "192.0.2.1", 5060) and bye.uri == "sip:bob@127.0.0.1:5070"
    assert bye.headers.get_all("Route") == ["<sip:192.0.2.1;lr>", "<sip:192.0.2.2:5080;lr>"]
