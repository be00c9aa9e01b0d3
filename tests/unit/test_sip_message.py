"""Unit tests for confroom.sip.message: parsing, serialising, helpers, framing, RFC 4475."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from confroom.sip.message import (
    REASON_PHRASES,
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    StreamFramer,
    Via,
    make_response,
    new_branch,
    new_tag,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)

TORTURE = Path(__file__).parent / "torture"


def crlf(text: str) -> bytes:
    """Test helper: write messages with \\n and send them with CRLF."""
    return text.replace("\n", "\r\n").encode()


INVITE = crlf(
    "INVITE sip:room1@conf.example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport\n"
    "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKprx\n"
    "Record-Route: <sip:proxy.example.com;lr>\n"
    "Max-Forwards: 70\n"
    'From: "Alice" <sip:alice@example.com>;tag=a1\n'
    "To: <sip:room1@conf.example.com>\n"
    "Call-ID: call-1@192.0.2.10\n"
    "CSeq: 1 INVITE\n"
    "Contact: <sip:alice@192.0.2.10:5060>\n"
    "Content-Type: application/sdp; charset=x\n"
    "Content-Length: 5\n"
    "\n"
    "hello"
)

MINIMAL = (
    "{start}\n"
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\n"
    "From: <sip:a@example.com>;tag=1\n"
    "To: <sip:b@example.com>\n"
    "Call-ID: x@y\n"
    "CSeq: {cseq}\n"
    "Content-Length: 0\n"
    "\n"
)


def minimal(start: str = "OPTIONS sip:b@example.com SIP/2.0", cseq: str = "1 OPTIONS") -> bytes:
    return crlf(MINIMAL.format(start=start, cseq=cseq))


# --------------------------------------------------------------------------- parsing


def test_parse_request_basic() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:room1@conf.example.com"
    assert msg.body == b"hello"
    assert msg.call_id == "call-1@192.0.2.10"
    assert msg.cseq == (1, "INVITE")
    assert msg.from_tag == "a1"
    assert msg.to_tag is None
    assert msg.content_type == "application/sdp"
    assert [v.host for v in msg.vias] == ["192.0.2.10", "proxy.example.com"]
    assert msg.top_via.branch == "z9hG4bKabc"
    assert msg.top_via.port == 5060
    assert msg.top_via.params["rport"] is None
    assert msg.headers.get("max-forwards") == "70"


def test_parse_response_basic() -> None:
    data = crlf(
        "SIP/2.0 180 Ringing\n"
        "Via: SIP/2.0/TCP h.example.com;branch=z9hG4bKx\n"
        "From: <sip:a@example.com>;tag=1\n"
        "To: <sip:b@example.com>;tag=2\n"
        "Call-ID: c\n"
        "CSeq: 7 INVITE\n"
        "\n"
    )
    msg = parse_message(data)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert msg.to_tag == "2"
    assert msg.cseq == (7, "INVITE")
    assert msg.top_via.transport == "TCP"


def test_round_trip_request() -> None:
    msg = parse_message(INVITE)
    again = parse_message(msg.to_bytes())
    assert again == msg
    assert again.headers.items() == msg.headers.items()


def test_round_trip_response_from_objects() -> None:
    h = Headers(
        [
            ("v", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"),
            ("f", "<sip:a@example.com>;tag=1"),
            ("t", "<sip:b@example.com>;tag=2"),
            ("i", "cid"),
            ("cseq", "2 BYE"),
            ("Content-Length", "999"),
        ]
    )
    resp = Response(200, "OK", h, b"xyz")
    wire = resp.to_bytes()
    assert wire.startswith(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP")
    assert b"Content-Length: 3\r\n\r\nxyz" in wire
    assert wire.count(b"Content-Length") == 1
    parsed = parse_message(wire)
    assert isinstance(parsed, Response)
    assert parsed.body == b"xyz"
    assert parsed.cseq == (2, "BYE")


def test_request_to_bytes_format() -> None:
    req = Request("BYE", "sip:a@b", Headers([("Call-ID", "1")]))
    assert req.to_bytes() == b"BYE sip:a@b SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"


def test_compact_and_case_insensitive_headers() -> None:
    data = crlf(
        "MESSAGE sip:b@example.com SIP/2.0\n"
        "v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\n"
        "f: <sip:a@example.com>;tag=1\n"
        "t: <sip:b@example.com>\n"
        "i: compact@x\n"
        "cSeQ   :   3 MESSAGE\n"
        "c: text/plain\n"
        "k: timer, 100rel\n"
        "m: <sip:a@192.0.2.1>\n"
        "l: 2\n"
        "\n"
        "hi"
    )
    msg = parse_message(data)
    assert msg.call_id == "compact@x"
    assert msg.cseq == (3, "MESSAGE")
    assert msg.content_type == "text/plain"
    assert msg.headers.get_all("Supported") == ["timer", "100rel"]
    assert msg.headers.get("CONTACT") == "<sip:a@192.0.2.1>"
    names = [n for n, _ in msg.headers.items()]
    assert names[:6] == ["Via", "From", "To", "Call-ID", "CSeq", "Content-Type"]
    assert msg.body == b"hi"


def test_folded_headers_and_lf_only() -> None:
    data = (
        b"\r\n\r\nINVITE sip:b@example.com SIP/2.0\n"
        b"Via: SIP/2.0/UDP\n"
        b"   192.0.2.1;branch=z9hG4bK1\n"
        b"From: <sip:a@example.com>\n"
        b"\t;tag=1\n"
        b"To: <sip:b@example.com>\n"
        b"Call-ID: folded\n"
        b"CSeq: 1\n"
        b"  INVITE\n"
        b"Subject: a\n"
        b" b\n"
        b"\n"
    )
    msg = parse_message(data)
    assert msg.cseq == (1, "INVITE")
    assert msg.from_tag == "1"
    assert msg.top_via.host == "192.0.2.1"
    assert msg.headers.get("Subject") == "a b"


def test_multiple_and_comma_joined_vias() -> None:
    data = crlf(
        "SIP/2.0 200 OK\n"
        "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com:5070"
        ";branch=z9hG4bK2\n"
        "v: SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK3;received=2001:db8::9\n"
        "From: <sip:a@example.com>;tag=1\n"
        "To: <sip:b@example.com>;tag=2\n"
        "Call-ID: c\n"
        "CSeq: 1 INVITE\n"
        "\n"
    )
    msg = parse_message(data)
    vias = msg.vias
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("UDP", "a.example.com", None, "z9hG4bK1"),
        ("TCP", "b.example.com", 5070, "z9hG4bK2"),
        ("UDP", "[2001:db8::1]", 5062, "z9hG4bK3"),
    ]
    assert vias[2].params["received"] == "2001:db8::9"
    assert msg.headers.get("Via") == "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"
    assert msg.top_via.host == "a.example.com"


def test_headers_multimap() -> None:
    h = Headers([("X-Foo", "1"), ("call-id", "c"), ("x-foo", "2")])
    assert h.get_all("X-FOO") == ["1", "2"]
    assert h.get("x-foo") == "1"
    assert "CALL-ID" in h and "i" in h and 3 not in h
    h.set("X-Foo", "3")
    assert h.items() == [("X-Foo", "3"), ("Call-ID", "c")]
    h.add("www-authenticate", 'Digest realm="a, b", nonce="n"')
    assert h.get_all("WWW-Authenticate") == ['Digest realm="a, b", nonce="n"']
    c = h.copy()
    c.remove("x-foo")
    assert "X-Foo" in h and "X-Foo" not in c
    assert h.get("Missing", "dflt") == "dflt"
    with pytest.raises(ValueError):
        h.add("X-Evil", "a\r\nVia: injected")


def test_header_name_canonicalisation() -> None:
    h = Headers(
        [
            ("cseq", "1 A"),
            ("www-authenticate", "x"),
            ("record-route", "<sip:a>"),
            ("x-my-HEADER", "y"),
            ("e", "gzip"),
            ("o", "dialog"),
            ("r", "<sip:x>"),
            ("b", "<sip:y>"),
            ("x", "1800"),
            ("u", "talk"),
            ("s", "subj"),
        ]
    )
    assert [n for n, _ in h.items()] == [
        "CSeq",
        "WWW-Authenticate",
        "Record-Route",
        "X-My-Header",
        "Content-Encoding",
        "Event",
        "Refer-To",
        "Referred-By",
        "Session-Expires",
        "Allow-Events",
        "Subject",
    ]


def test_get_all_splits_respecting_quotes_and_angles() -> None:
    h = Headers(
        [
            ("Contact", '"Doe, John" <sip:a,b@example.com>;q=0.5, <sip:c@example.com>'),
            ("Contact", "<sip:d@example.com>"),
            ("Allow", "INVITE, ACK,BYE"),
            ("Subject", "not, a, list"),
        ]
    )
    assert h.get_all("m") == [
        '"Doe, John" <sip:a,b@example.com>;q=0.5',
        "<sip:c@example.com>",
        "<sip:d@example.com>",
    ]
    assert h.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    assert h.get_all("Subject") == ["not, a, list"]


def test_content_length_truncates_udp_body() -> None:
    data = minimal().replace(b"Content-Length: 0", b"Content-Length: 3") + b"abcdef"
    assert parse_message(data).body == b"abc"


def test_no_content_length_takes_whole_body() -> None:
    data = minimal().replace(b"Content-Length: 0\r\n", b"") + b"abcdef"
    assert parse_message(data).body == b"abcdef"


def test_header_values_are_str_even_for_bad_utf8() -> None:
    data = minimal().replace(b"Call-ID: x@y", b"Call-ID: x\xff@y")
    msg = parse_message(data)
    assert msg.call_id == "x\ufffd@y"


def test_max_forwards_optional() -> None:
    assert "Max-Forwards" not in parse_message(minimal()).headers


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(name: str) -> None:
    lines = minimal().split(b"\r\n")
    data = b"\r\n".join(line for line in lines if not line.startswith(name.encode() + b":"))
    with pytest.raises(SipParseError) as exc:
        parse_message(data)
    assert exc.value.reason == f"Missing {name}"


@pytest.mark.parametrize(
    "cseq", ["abc OPTIONS", "1", "1 OPTIONS extra", "-1 OPTIONS", "2147483648 OPTIONS", ""]
)
def test_bad_cseq(cseq: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_message(minimal(cseq=cseq))
    assert "CSeq" in exc.value.reason


def test_cseq_bounds_ok() -> None:
    assert parse_message(minimal(cseq="2147483647 OPTIONS")).cseq == (2147483647, "OPTIONS")
    assert parse_message(minimal(cseq="0 OPTIONS")).cseq == (0, "OPTIONS")


@pytest.mark.parametrize("method", ["ACK", "CANCEL", "BYE"])
def test_cseq_method_mismatch(method: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_message(minimal(start=f"{method} sip:b@example.com SIP/2.0", cseq="1 INVITE"))
    assert exc.value.reason == "CSeq method does not match request method"


def test_ack_cancel_with_matching_cseq_ok() -> None:
    for method in ("ACK", "CANCEL"):
        msg = parse_message(minimal(start=f"{method} sip:b@x SIP/2.0", cseq=f"1 {method}"))
        assert isinstance(msg, Request) and msg.method == method


@pytest.mark.parametrize("version", ["SIP/3.0", "SIP/1.0", "HTTP/1.1"])
def test_bad_version(version: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_message(minimal(start=f"OPTIONS sip:b@example.com {version}"))
    assert exc.value.reason == "Unsupported SIP version"


def test_version_case_insensitive() -> None:
    assert isinstance(parse_message(minimal(start="OPTIONS sip:b@x sip/2.0")), Request)


def test_bad_response_version() -> None:
    with pytest.raises(SipParseError) as exc:
        parse_message(minimal(start="SIP/3.0 200 OK"))
    assert exc.value.reason == "Unsupported SIP version"


@pytest.mark.parametrize(
    "start",
    [
        "OPTIONS sip:b@example.com",
        "OPTIONS  sip:b@example.com SIP/2.0",
        "OPT IONS sip:b@example.com SIP/2.0",
        "OPT(IONS sip:b@example.com SIP/2.0",
        "OPTIONS <sip:b@example.com> SIP/2.0",
        "SIP/2.0 99 Low",
        "SIP/2.0 2000 OK",
    ],
)
def test_bad_start_line(start: str) -> None:
    with pytest.raises(SipParseError):
        parse_message(minimal(start=start))


def test_content_length_larger_than_body() -> None:
    data = minimal().replace(b"Content-Length: 0", b"Content-Length: 10") + b"short"
    with pytest.raises(SipParseError) as exc:
        parse_message(data)
    assert exc.value.reason == "Content-Length larger than body"


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", ""])
def test_bad_content_length(value: str) -> None:
    data = minimal().replace(b"Content-Length: 0", f"Content-Length: {value}".encode())
    with pytest.raises(SipParseError) as exc:
        parse_message(data)
    assert "Content-Length" in exc.value.reason


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n\r\n", b"garbage", b"\x00\x01\x02\xff" * 10, b"hello world\r\n\r\n", b":::"],
)
def test_garbage(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(data)


def test_header_line_without_colon() -> None:
    data = minimal().replace(b"Call-ID: x@y", b"Call-ID: x@y\r\nFoobar roobar")
    with pytest.raises(SipParseError) as exc:
        parse_message(data)
    assert exc.value.reason == "Malformed header line"


def test_fuzz_only_sip_parse_error() -> None:
    rng = random.Random(4475)
    seeds = [INVITE, minimal()] + [p.read_bytes() for p in sorted(TORTURE.glob("*.dat"))]
    alphabet = b'\r\n :;,<>"\\/=@SIPVvia0123456789\t\x00\xff'
    for i in range(2000):
        base = seeds[i % len(seeds)]
        kind = i % 4
        if kind == 0:
            data = base[: rng.randrange(len(base) + 1)]
        elif kind == 1:
            buf = bytearray(base)
            for _ in range(rng.randrange(1, 8)):
                buf[rng.randrange(len(buf))] = rng.choice(alphabet)
            data = bytes(buf)
        elif kind == 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        else:
            buf = bytearray(base)
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 10)))
            data = bytes(buf)
        try:
            msg = parse_message(data)
        except SipParseError:
            continue
        # Whatever parses must be usable by the rest of the stack without surprises.
        msg.to_bytes()
        _ = (msg.call_id, msg.cseq, msg.from_tag, msg.to_tag, msg.top_via, msg.content_type)


# --------------------------------------------------------------------------- value parsers


def test_parse_via_variants() -> None:
    v = parse_via("SIP / 2.0 / udp  host.example.com : 5080 ; Branch = z9hG4bKx ; rport")
    assert (v.transport, v.host, v.port) == ("UDP", "host.example.com", 5080)
    assert v.params == {"branch": "z9hG4bKx", "rport": None}
    v.params["rport"] = "5060"
    v.params["received"] = "1.2.3.4"
    assert str(v) == "SIP/2.0/UDP host.example.com:5080;branch=z9hG4bKx;rport=5060;received=1.2.3.4"
    assert str(parse_via("SIP/2.0/TCP [::1];branch=b")) == "SIP/2.0/TCP [::1];branch=b"
    assert parse_via("SIP/2.0/TCP [::1]:5061").port == 5061
    assert Via("TLS", "h", None, {}).branch is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "SIP/2.0 host",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP host;;",
        "SIP/2.0/UDP host;branch=",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host:abc",
        "SIP/2.0/UDP ::1",
        "SIP/2.0/UDP [::1",
    ],
)
def test_parse_via_errors(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(value)


def test_parse_uri_sip() -> None:
    u = parse_uri("sips:alice:secret@Example.com:5061;transport=TCP;lr?subject=hi&x=1")
    assert u == SipUri(
        "sips",
        "alice",
        "Example.com",
        5061,
        {"transport": "TCP", "lr": None},
        {"subject": "hi", "x": "1"},
        "secret",
    )
    assert str(u) == "sips:alice:secret@Example.com:5061;transport=TCP;lr?subject=hi&x=1"
    v6 = parse_uri("sip:[2001:db8::1]:5060")
    assert (v6.user, v6.host, v6.port) == (None, "[2001:db8::1]", 5060)
    assert str(v6) == "sip:[2001:db8::1]:5060"
    assert parse_uri("SIP:host").scheme == "sip"


def test_parse_uri_tel_and_other() -> None:
    t = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert (t.scheme, t.user, t.host) == ("tel", "+1-201-555-0123", "")
    assert t.params == {"phone-context": "example.com"}
    assert str(t) == "tel:+1-201-555-0123;phone-context=example.com"
    other = parse_uri("urn:service:sos")
    assert (other.scheme, other.user, other.host) == ("urn", None, "service:sos")
    assert str(other) == "urn:service:sos"


@pytest.mark.parametrize(
    "value", ["", "nocolon", "sip:", "sip:@host", "sip:user@", "sip:a b@host", "1sip:x", "sip:h:x"]
)
def test_parse_uri_errors(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(value)


def test_parse_name_addr_forms() -> None:
    a = parse_name_addr('"Doe, \\"J\\"" <sip:j@example.com;transport=udp>;tag=abc;expires=60')
    assert a.display == 'Doe, "J"'
    assert a.uri.params == {"transport": "udp"}
    assert a.params == {"tag": "abc", "expires": "60"}
    assert a.tag == "abc"
    assert parse_name_addr(str(a)) == a
    b = parse_name_addr("Bob Smith <sip:bob@example.com>")
    assert (b.display, b.uri.user, b.tag) == ("Bob Smith", "bob", None)
    # params after a bare URI belong to the header (RFC 3261 20.10)
    c = parse_name_addr("sip:carol@example.com;tag=x;lr")
    assert c.uri.params == {} and c.params == {"tag": "x", "lr": None}
    assert str(c) == "<sip:carol@example.com>;tag=x;lr"
    d = parse_name_addr("<sip:d@example.com>")
    assert d.display is None and str(d) == "<sip:d@example.com>"
    assert str(NameAddr("A \\ B", parse_uri("sip:x"), {})) == '"A \\\\ B" <sip:x>'


@pytest.mark.parametrize(
    "value",
    [
        "",
        '"unterminated <sip:a@b>',
        "Bell, Alexander <sip:a@b>",
        "< sip:a@b >",
        "<sip:a@b",
        "<sip:a@b> junk",
        "<sip:a@b>;;tag=1",
        '"x" sip:a@b',
    ],
)
def test_parse_name_addr_errors(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(value)


# --------------------------------------------------------------------------- make_response


def test_make_response_copies_and_tags() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 200, to_tag="srv1", headers=[("Contact", "<sip:room1@h>")])
    assert resp.reason == "OK"
    names = [n for n, _ in resp.headers.items()]
    assert names == ["Via", "Via", "Record-Route", "From", "To", "Call-ID", "CSeq", "Contact"]
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.to_tag == "srv1"
    assert resp.from_tag == "a1"
    assert resp.cseq == (1, "INVITE")
    assert "Content-Length" not in resp.headers
    assert resp.to_bytes().endswith(b"Content-Length: 0\r\n\r\n")


def test_make_response_record_route_only_for_1xx_2xx_invite() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    assert "Record-Route" in make_response(req, 180).headers
    assert "Record-Route" not in make_response(req, 100).headers
    assert "Record-Route" not in make_response(req, 486).headers
    bye = parse_message(INVITE.replace(b"INVITE sip", b"BYE sip").replace(b"1 INVITE", b"1 BYE"))
    assert isinstance(bye, Request)
    assert "Record-Route" not in make_response(bye, 200).headers


def test_make_response_keeps_existing_to_tag_and_reason_defaults() -> None:
    req = parse_message(
        INVITE.replace(b"<sip:room1@conf.example.com>\r\n", b"<sip:r@h>;tag=t0\r\n")
    )
    assert isinstance(req, Request)
    resp = make_response(req, 481, to_tag="new")
    assert resp.to_tag == "t0"
    assert resp.reason == REASON_PHRASES[481]
    assert make_response(req, 299).reason == "Unknown"
    assert make_response(req, 488, "Nope").reason == "Nope"


def test_make_response_body_and_content_type() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 200, to_tag="t", body=b"v=0\r\n", content_type="application/sdp")
    assert resp.content_type == "application/sdp"
    wire = resp.to_bytes()
    assert wire.endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    assert parse_message(wire).body == b"v=0\r\n"
    assert "Content-Type" not in make_response(req, 200).headers


def test_reason_phrases() -> None:
    for code in (
        100,
        180,
        183,
        200,
        202,
        400,
        401,
        403,
        404,
        405,
        408,
        415,
        420,
        480,
        481,
        482,
        483,
        486,
        487,
        488,
        491,
        500,
        501,
        503,
        504,
        505,
        513,
        600,
        603,
        606,
    ):
        assert REASON_PHRASES[code]


# --------------------------------------------------------------------------- framing


def test_framer_two_messages_in_one_feed() -> None:
    f = StreamFramer()
    out = f.feed(INVITE + minimal())
    assert out == [INVITE, minimal()]
    assert [type(parse_message(m)) for m in out] == [Request, Request]


def test_framer_byte_by_byte() -> None:
    f = StreamFramer()
    stream = INVITE + b"\r\n\r\n" + minimal()
    got: list[bytes] = []
    for i in range(len(stream)):
        got.extend(f.feed(stream[i : i + 1]))
        if i < len(INVITE) - 1:
            assert got == []
    assert got == [INVITE, minimal()]


def test_framer_keepalives() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n") == []
    assert f.feed(b"\r\n") == []
    assert f.feed(b"\r\n\r\n" + INVITE + b"\r\n\r\n") == [INVITE]
    assert f.feed(b"\r\n") == []
    assert f.feed(minimal()) == [minimal()]


def test_framer_compact_folded_any_case_content_length() -> None:
    for cl in (b"l: 5", b"CONTENT-LENGTH: 5", b"content-length   :\r\n  5", b"L:5"):
        msg = INVITE.replace(b"Content-Length: 5", cl)
        f = StreamFramer()
        assert f.feed(msg + minimal()) == [msg, minimal()]


def test_framer_missing_content_length() -> None:
    f = StreamFramer()
    with pytest.raises(SipParseError):
        f.feed(INVITE.replace(b"Content-Length: 5\r\n", b""))


@pytest.mark.parametrize("cl", [b"Content-Length: -1", b"Content-Length: x", b"l: 1\r\nl: 2"])
def test_framer_bad_content_length(cl: bytes) -> None:
    f = StreamFramer()
    with pytest.raises(SipParseError):
        f.feed(INVITE.replace(b"Content-Length: 5", cl))


def test_framer_header_too_long() -> None:
    f = StreamFramer()
    f.max_header_bytes = 1000
    f.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    with pytest.raises(SipParseError):
        for _ in range(100):
            f.feed(b"X-Filler: " + b"a" * 50 + b"\r\n")


def test_framer_waits_for_body() -> None:
    f = StreamFramer()
    assert f.feed(INVITE[:-3]) == []
    assert f.feed(INVITE[-3:]) == [INVITE]


# --------------------------------------------------------------------------- ids


def test_new_branch_and_tag() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    for b in branches:
        assert b.startswith("z9hG4bK") and len(b) >= 7 + 16
        assert parse_via(f"SIP/2.0/UDP h;branch={b}").branch == b
    tags = {new_tag() for _ in range(100)}
    assert len(tags) == 100 and all(len(t) >= 8 and t.isalnum() for t in tags)


# --------------------------------------------------------------------------- RFC 4475

VALID_TORTURE = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "unreason",
    "noreason",
    "bcast",
    "zeromf",
    "cparam01",
    "unksm2",
]
INVALID_TORTURE = {
    "badinv01": "Invalid Via",
    "clerr": "Content-Length larger than body",
    "ncl": "Invalid Content-Length",
    "scalar02": "Invalid CSeq",
    "scalarlg": "Invalid CSeq",
    "quotbal": "Invalid To",
    "ltgtruri": "Invalid Request-URI",
    "lwsruri": "Malformed Request-Line",
    "lwsstart": "Malformed Request-Line",
    "trws": "Malformed Request-Line",
    "badaspec": "Invalid To",
    "baddn": "Invalid From",
    "badvers": "Unsupported SIP version",
    "mismatch01": "CSeq method does not match request method",
    "bigcode": "Invalid status code",
    "insuf": "Missing From",
    "multi01": "Multiple CSeq headers",
    "mcl01": "Multiple Content-Length headers",
}


def test_torture_files_all_classified() -> None:
    names = {p.stem for p in TORTURE.glob("*.dat")}
    assert names == set(VALID_TORTURE) | set(INVALID_TORTURE)


@pytest.mark.parametrize("name", VALID_TORTURE)
def test_torture_valid(name: str) -> None:
    msg = parse_message((TORTURE / f"{name}.dat").read_bytes())
    _ = (msg.call_id, msg.cseq, msg.from_tag, msg.to_tag, msg.vias, msg.content_type)
    assert parse_message(msg.to_bytes()) == msg


@pytest.mark.parametrize(("name", "reason"), sorted(INVALID_TORTURE.items()))
def test_torture_invalid(name: str, reason: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_message((TORTURE / f"{name}.dat").read_bytes())
    assert exc.value.reason == reason


def test_torture_wsinv_details() -> None:
    msg = parse_message((TORTURE / "wsinv.dat").read_bytes())
    assert isinstance(msg, Request)
    assert msg.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert msg.cseq == (9, "INVITE")
    assert msg.to_tag == "1918181833n"
    assert msg.from_tag == "98asjd8"
    assert msg.from_addr.display == 'J Rosenberg \\"'
    assert msg.headers.get("Max-Forwards") == "0068"
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contact = parse_name_addr(msg.headers.get_all("Contact")[0])
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(msg.body) == 150
    assert msg.content_type == "application/sdp"


def test_torture_intmeth_details() -> None:
    msg = parse_message((TORTURE / "intmeth.dat").read_bytes())
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = parse_uri(msg.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert msg.to_addr.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_tag == "_token~1'+`*%!-."
    assert msg.from_addr.display == "token1~` token2'+_ token3*%!.-"
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_torture_escapes_and_misc() -> None:
    esc01 = parse_message((TORTURE / "esc01.dat").read_bytes())
    assert isinstance(esc01, Request)
    assert parse_uri(esc01.uri).user == "sips%3Auser%40example.com"
    assert parse_name_addr(esc01.headers.get("Contact") or "").uri.params == {
        "%6c%72": None,
        "n%61me": "v%61lue%25%34%31",
    }
    escnull = parse_message((TORTURE / "escnull.dat").read_bytes())
    assert len(escnull.headers.get_all("Contact")) == 2
    esc02 = parse_message((TORTURE / "esc02.dat").read_bytes())
    assert isinstance(esc02, Request) and esc02.method == "RE%47IST%45R"
    assert len(esc02.headers.get_all("Contact")) == 2  # C%6Fntact is a different header
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    dbl = parse_message((TORTURE / "dblreq.dat").read_bytes())
    assert isinstance(dbl, Request) and dbl.method == "REGISTER" and dbl.body == b""
    semi = parse_message((TORTURE / "semiuri.dat").read_bytes())
    assert isinstance(semi, Request)
    assert parse_uri(semi.uri).user == "user;par=u%40example.net"
    assert len(semi.headers.get_all("Accept")) == 6
    trans = parse_message((TORTURE / "transports.dat").read_bytes())
    assert [v.transport for v in trans.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    unreason = parse_message((TORTURE / "unreason.dat").read_bytes())
    assert isinstance(unreason, Response) and unreason.reason.startswith("= 2**3 * 5**2 но")
    noreason = parse_message((TORTURE / "noreason.dat").read_bytes())
    assert isinstance(noreason, Response) and (noreason.status, noreason.reason) == (100, "")
    longreq = parse_message((TORTURE / "longreq.dat").read_bytes())
    assert len(longreq.vias) == 34
    assert longreq.vias[0].host == "sip33.example.com"
    lws = parse_message((TORTURE / "lwsdisp.dat").read_bytes())
    assert lws.from_addr.display == "caller"
    cparam = parse_message((TORTURE / "cparam01.dat").read_bytes())
    contact = parse_name_addr(cparam.headers.get("Contact") or "")
    assert contact.uri.params == {} and contact.params == {"unknownparam": None}
