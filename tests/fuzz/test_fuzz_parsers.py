"""Fuzzing targets for every parser that reads bytes from outside: SIP messages (datagram and
stream framing, and the SIP core behind them, as UAS and as UAC with digest challenges), SDP
(parse, negotiate, answer), RTP/RTCP datagrams (the header parser and a media session's
receive path) and verb lists (the hook response parser and the jambonz schema validator).

Each target starts from the committed corpus under `corpus/<target>/` (hand-made seeds plus
any input that once found a bug: add such an input there as a file, and it is tried on every
run) and mutates it with Hypothesis: byte flips, interesting bytes, protocol tokens, cuts,
duplications, splices with other seeds and numbers pushed to their limits. Properties: only
the parser's own error type may escape, and what parses must be usable (it serialises and
parses back to the same thing; what the SIP core sends in reply is itself valid SIP).

The run is bounded: `FUZZ_EXAMPLES` examples per target (default 500, a few seconds each); set
it higher for a longer local session, e.g. `FUZZ_EXAMPLES=20000 pytest tests/fuzz`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confroom.app.hooks import parse_response
from confroom.app.verbs import VerbError, parse_verb_list
from confroom.media.rtp import DtmfReceiver, parse_rtp
from confroom.media.session import MediaSession
from confroom.media.srtp import SrtpContext
from confroom.sip.core import SipCore
from confroom.sip.digest import Credentials, DigestError, authorization, parse_challenge
from confroom.sip.message import Request, Response, SipParseError, StreamFramer, parse_message
from confroom.sip.peer import Peer
from confroom.sip.sdp import NoCommonCodec, SdpError, build_answer, negotiate, parse_sdp

CORPUS = Path(__file__).resolve().parent / "corpus"
TORTURE = Path(__file__).resolve().parent.parent / "unit" / "torture"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # the committed corpus is the memory between runs, not a local cache
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def seeds(target: str) -> list[bytes]:
    found = [p.read_bytes() for p in sorted((CORPUS / target).iterdir()) if p.is_file()]
    assert found, f"the fuzz corpus for {target!r} is empty"
    return found


SIP_SEEDS = seeds("sip") + [p.read_bytes() for p in sorted(TORTURE.glob("*.dat"))]
UAC_SEEDS = seeds("uac")
SDP_SEEDS = seeds("sdp")
RTP_SEEDS = seeds("rtp")
VERB_SEEDS = seeds("verbs")

INTERESTING = b"\x00\x01\x7f\x80\xff\r\n\t :;,<>\"'\\/=@%[]"
SIP_TOKENS = [
    b"\r\n", b"\r\n\r\n", b"\r\n ", b"Content-Length: ", b"l: ", b"Via: SIP/2.0/UDP ",
    b";branch=z9hG4bK", b";rport", b"SIP/2.0", b"CSeq: ", b" INVITE", b" ACK", b"sip:",
    b"sips:", b"tel:", b";tag=", b";transport=tcp", b"Call-ID: ", b"To: ", b"From: ",
    b"Contact: *", b"Max-Forwards: 0", b"Content-Type: application/sdp", b"%00", b"[::1]",
]
SDP_TOKENS = [
    b"\r\n", b"\n", b"v=0", b"o=- 0 0 IN IP4 ", b"c=IN IP4 ", b"c=IN IP6 ::", b"m=audio ",
    b" RTP/AVP ", b" RTP/SAVP ", b"a=rtpmap:", b" PCMU/8000", b" telephone-event/8000",
    b"a=ptime:", b"a=sendonly", b"a=inactive", b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
    b"0.0.0.0", b"65536", b"/48000/2",
]
RTP_TOKENS = [b"\x80", b"\x90", b"\xa0", b"\xbf", b"\x81\xc8", b"\x81\xc9", b"\x00\x00",
              b"\xff\xff\xff\xff", b"\xbe\xde"]
NUMBERS = [b"0", b"-1", b"4294967296", b"99999999999999999999", b"65535", b"1e9", b"0x10"]


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes], tokens: list[bytes]) -> bytes:
    """A corpus entry with 0-8 mutations (0 keeps the seeds themselves in every run)."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.integers(0, 8))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:  # flip a bit
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and data:  # an interesting byte
            data[min(pos, len(data) - 1)] = draw(st.sampled_from(INTERESTING))
        elif op == 2:  # a protocol token
            data[pos:pos] = draw(st.sampled_from(tokens))
        elif op == 3:  # random bytes
            data[pos:pos] = draw(st.binary(max_size=24))
        elif op == 4:  # cut a range
            end = draw(st.integers(pos, len(data)))
            del data[pos:end]
        elif op == 5:  # duplicate a range
            end = draw(st.integers(pos, min(len(data), pos + 64)))
            data[end:end] = data[pos:end] * draw(st.integers(1, 4))
        elif op == 6:  # splice with another entry
            other = draw(st.sampled_from(corpus))
            data = data[:pos] + other[draw(st.integers(0, len(other))):]
        elif op == 7:  # truncate
            del data[pos:]
        else:  # push a number to a limit
            digits = [i for i, b in enumerate(data) if 48 <= b <= 57]
            if digits:
                i = draw(st.sampled_from(digits))
                j = i
                while j < len(data) and 48 <= data[j] <= 57:
                    j += 1
                data[i:j] = draw(st.sampled_from(NUMBERS))
    return bytes(data)


def inputs(corpus: list[bytes], tokens: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(corpus, tokens), st.binary(max_size=512))


# ----------------------------------------------------------------------------------- SIP


@FUZZ
@given(inputs(SIP_SEEDS, SIP_TOKENS))
def test_sip_message(data: bytes) -> None:
    """parse_message raises only SipParseError; a parsed message serialises to bytes that
    parse back to the same message (serialising is a fixed point after one round: it may
    only normalise, e.g. add Content-Length)."""
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    _ = (msg.call_id, msg.cseq, msg.from_tag, msg.to_tag, msg.top_via, msg.content_type)
    wire = msg.to_bytes()
    again = parse_message(wire)
    assert type(again) is type(msg) and again.body == msg.body
    if isinstance(msg, Request):
        assert isinstance(again, Request) and (again.method, again.uri) == (msg.method, msg.uri)
    else:
        assert isinstance(again, Response) and again.status == msg.status
    assert again.to_bytes() == wire


@FUZZ
@given(inputs(SIP_SEEDS, SIP_TOKENS), st.integers(0, 2**32 - 1))
def test_sip_core(data: bytes, seed: int) -> None:
    """The SIP core takes any datagram (and its retransmission a moment later) without raising,
    and everything it sends in reply is valid SIP; a 400 to a malformed request may echo the
    offending header (RFC 3261 8.2.6.2: the client matches the response by what it sent)."""
    core = SipCore("127.0.0.1", 5060)
    peer = Peer("udp" if seed & 1 else "tcp", "192.0.2.10", 5060)

    def check_sent() -> None:
        for _to, out in core.datagrams_to_send():
            try:
                parse_message(out)
            except SipParseError:
                assert out.startswith(b"SIP/2.0 400 "), out
                assert data.count(b"\n") >= 1

    for now in (0.0, 0.6):
        core.receive_datagram(data, peer, now)
        while core.next_event() is not None:
            pass
        check_sent()
    core.handle_timer(40.0)
    check_sent()


UAC_TOKENS = [*SIP_TOKENS, b"Digest ", b"realm=", b"nonce=", b"qop=", b"algorithm=",
              b"SHA-256", b"MD5-sess", b"stale=true", b"WWW-Authenticate: ",
              b"Proxy-Authenticate: ", b"Record-Route: ", b"SIP/2.0 401 ", b"SIP/2.0 200 "]


@FUZZ
@given(st.lists(inputs(UAC_SEEDS, UAC_TOKENS), min_size=1, max_size=4), st.integers(0, 3))
def test_sip_uac_responses(responses: list[bytes], seed: int) -> None:
    """Responses to our outbound INVITE (the seeds' BRANCH/FROMTAG/CALLID are filled in with
    the INVITE's, so they match it): the UAC takes any sequence, with digest challenges, and
    a cancel or a BYE on the way, without raising, and everything it sends is valid SIP
    (mutations that turn a response into a malformed request get the UAS's 400)."""
    core = SipCore("127.0.0.1", 5060)
    peer = Peer("udp", "192.0.2.10", 5060)
    leg = core.invite("sip:bob@192.0.2.10", peer, "<sip:alice@127.0.0.1>", b"v=0\r\n", 0.0,
                      credentials=Credentials("u", "p") if seed & 1 else None)
    for now, data in enumerate(responses, start=1):
        inv = leg.invite
        data = (data.replace(b"BRANCH", inv.top_via.branch.encode())
                .replace(b"FROMTAG", leg.local_tag.encode())
                .replace(b"CALLID", leg.call_id.encode()))
        core.receive_datagram(data, peer, float(now))
        if seed & 2 and now == 1:
            core.cancel(leg, float(now))
        while core.next_event() is not None:
            pass
        _check_replies(core)
    core.bye(leg, 10.0)
    core.handle_timer(100.0)
    _check_replies(core)


def _check_replies(core: SipCore) -> None:
    """What the core sent is valid SIP (a 400 to a malformed request may echo its header)."""
    for _to, out in core.datagrams_to_send():
        try:
            parse_message(out)
        except SipParseError:
            assert out.startswith(b"SIP/2.0 400 "), out


@FUZZ
@given(st.text(max_size=300))
def test_digest_challenge(text: str) -> None:
    """parse_challenge raises only DigestError; a challenge it accepts can be answered."""
    try:
        chal = parse_challenge(text)
    except DigestError:
        return
    value = authorization(chal, Credentials("u", "p"), "INVITE", "sip:x@y")
    assert value.startswith("Digest ") and "\r" not in value and "\n" not in value


@FUZZ
@given(st.lists(inputs(SIP_SEEDS, SIP_TOKENS), min_size=1, max_size=4), st.data())
def test_sip_stream_framing(messages: list[bytes], data: st.DataObject) -> None:
    """A TCP stream cut anywhere: StreamFramer raises only SipParseError and never hands out
    more bytes than it was fed."""
    stream = b"".join(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    framer = StreamFramer()
    out = 0
    try:
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            out += sum(len(m) for m in framer.feed(stream[a:b]))
    except SipParseError:
        return
    assert out <= len(stream)


# ----------------------------------------------------------------------------------- SDP


@FUZZ
@given(inputs(SDP_SEEDS, SDP_TOKENS))
def test_sdp(data: bytes) -> None:
    """parse_sdp raises only SdpError, negotiate only NoCommonCodec/SdpError; the answer to
    what negotiates parses and negotiates back to the same codec."""
    try:
        offer = parse_sdp(data)
        neg = negotiate(offer)
    except (SdpError, NoCommonCodec):
        return
    key = bytes(range(30)) if neg.crypto is not None else None
    answer = build_answer(neg, local_host="127.0.0.1", local_port=20000, session_id=1, version=1,
                          srtp_key=key)
    back = negotiate(parse_sdp(answer))
    assert (back.codec, back.payload_type) == (neg.codec, neg.payload_type)
    assert back.dtmf_payload_type == neg.dtmf_payload_type
    if neg.crypto is None:
        assert back.crypto is None
    else:  # an SRTP answer: the offer's tag and suite, our key
        assert back.crypto is not None and back.crypto.key == key
        assert (back.crypto.tag, back.crypto.suite) == (neg.crypto.tag, neg.crypto.suite)


# ------------------------------------------------------------------------------ RTP/RTCP


@FUZZ
@given(inputs(RTP_SEEDS, RTP_TOKENS))
def test_rtp_header(data: bytes) -> None:
    """parse_rtp returns None or a packet whose fields are in range and whose payload lies
    inside the datagram (RTCP, which shares a muxed port, must come back None or as a
    payload type a session ignores)."""
    pkt = parse_rtp(data)
    if pkt is None:
        return
    assert 0 <= pkt.payload_type < 128
    assert 0 <= pkt.seq < 2**16 and 0 <= pkt.timestamp < 2**32 and 0 <= pkt.ssrc < 2**32
    assert len(pkt.payload) <= len(data) - 12
    assert pkt.payload in data


@FUZZ
@given(st.lists(inputs(RTP_SEEDS, RTP_TOKENS), min_size=1, max_size=12))
def test_rtp_session_receive(datagrams: list[bytes]) -> None:
    """A media session's receive path takes any datagrams without raising; what the jitter
    buffer gives back is always one 20 ms G.711 frame; digits are DTMF symbols."""
    s = MediaSession(20000)
    s.update("PCMU", 0, 101, "192.0.2.10", 40000)
    for k, d in enumerate(datagrams):
        s.on_datagram(d, ("192.0.2.10", 40000), 0.02 * k)
    for _ in range(len(datagrams) + 2):
        frame = s.jitter.pop()
        assert frame is None or len(frame) == 160
    assert all(d in "0123456789*#ABCD" for d in s.dtmf_digits)
    # the same datagrams to an SRTP session: none is authentic, none reaches the buffer
    srtp = MediaSession(20002)
    srtp.update("PCMU", 0, 101, "192.0.2.10", 40000)
    srtp.srtp = SrtpContext("AES_CM_128_HMAC_SHA1_80", bytes(30), bytes(range(30)))
    for k, d in enumerate(datagrams):
        assert not srtp.on_datagram(d, ("192.0.2.10", 40000), 0.02 * k)
    assert srtp.jitter.stats.received == 0 and not srtp.dtmf_digits
    rx = DtmfReceiver()
    for d in datagrams:
        pkt = parse_rtp(d)
        if pkt is not None:
            digit = rx.feed(pkt)
            assert digit is None or digit in "0123456789*#ABCD"


# ---------------------------------------------------------------------------- verb lists


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=12,
)
VERB_KEYS = ["verb", "name", "text", "url", "length", "actionHook", "waitHook", "status",
             "record", "path", "statusEvents", "loop", "headers", "beep", "play", "say"]


@st.composite
def mutated_json(draw: st.DrawFn) -> Any:
    """A corpus verb list with some of its values replaced, keys renamed or removed."""
    doc = json.loads(draw(st.sampled_from(VERB_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        node = doc
        while isinstance(node, list | dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(range(len(node)) if isinstance(node, list) else list(node)))
            child = node[key]
            if not isinstance(child, list | dict):
                node[key] = draw(JSON)
                break
            node = child
        else:
            if isinstance(node, dict) and node:
                key = draw(st.sampled_from(list(node)))
                value = node.pop(key)
                if draw(st.booleans()):
                    node[draw(st.sampled_from(VERB_KEYS))] = value
            elif isinstance(node, list):
                node.append(draw(JSON))
    return doc


def _validate(doc: Any) -> None:
    try:
        verbs = parse_verb_list(doc)
    except VerbError as e:
        assert str(e)  # the message names the verb and attribute at fault
        return
    assert isinstance(verbs, list) and all(isinstance(v, dict) and "verb" in v for v in verbs)


@FUZZ
@given(st.one_of(mutated_json(), JSON))
def test_verb_list_values(doc: Any) -> None:
    """Validating any JSON value raises only VerbError."""
    _validate(doc)


@FUZZ
@given(inputs(VERB_SEEDS, [b"{", b"}", b"[", b"]", b'"verb":', b",", b"null", b"1e999", b"\\u0"]))
def test_verb_list_text(raw: bytes) -> None:
    """A hook's response body: parse_response returns verbs or an error string, and whatever
    it returns validates or is refused with a VerbError."""
    verbs, error = parse_response(raw.decode("utf-8", errors="replace"))
    if verbs is None:
        assert error
        return
    _validate(verbs)


# ----------------------------------------------------------------------- corpus is sane


@pytest.mark.parametrize(
    ("target", "check"),
    [
        ("sip", lambda d: parse_message(d)),
        ("sdp", lambda d: parse_sdp(d)),
        ("verbs", lambda d: parse_verb_list(parse_response(d.decode())[0])),
    ],
)
def test_corpus_seeds_are_valid(target: str, check: Callable[[bytes], object]) -> None:
    """The hand-made seeds are valid inputs (mutations start from the real thing)."""
    for data in seeds(target):
        check(data)


def test_rtp_seeds_parse() -> None:
    parsed = [parse_rtp(d) for d in seeds("rtp")]
    audio = [p for p in parsed if p is not None and p.payload_type in (0, 8)]
    assert len(audio) >= 3
    first = struct.unpack("!BB", seeds("rtp")[0][:2])
    assert first[0] >> 6 == 2
