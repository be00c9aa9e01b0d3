"""Unit tests for confroom.sip.sdp: parsing, building and RFC 3264 audio negotiation."""

from __future__ import annotations

import pytest

from confroom.sip.sdp import (
    MediaDescription,
    Negotiated,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    answer_direction,
    build_answer,
    build_offer,
    negotiate,
    parse_sdp,
)


def offer(media: str, *, session: str = "c=IN IP4 192.0.2.10\n", extra: str = "") -> bytes:
    """Test helper: an offer with the given m= section(s); LF written, CRLF sent."""
    text = (
        "v=0\n"
        "o=alice 2890844526 2890844526 IN IP4 192.0.2.10\n"
        "s=-\n" + session + "t=0 0\n" + extra + media
    )
    return text.replace("\n", "\r\n").encode()


def test_parse_sdp_structure() -> None:
    sdp = parse_sdp(
        offer(
            "m=audio 49170 RTP/AVP 0 8 101\n"
            "c=IN IP4 198.51.100.7/127\n"
            "a=rtpmap:101 telephone-event/8000\n"
            "a=fmtp:101 0-15\n"
            "a=ptime:30\n"
            "a=sendonly\n"
            "m=video 51372 RTP/AVP 31\n"
            "a=rtpmap:31 H261/90000\n",
            extra="a=tool:x\n",
        )
    )
    assert sdp.origin == "alice 2890844526 2890844526 IN IP4 192.0.2.10"
    assert sdp.session_name == "-"
    assert sdp.connection == "192.0.2.10"
    assert sdp.attributes == [("tool", "x")]
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio",
        49170,
        "RTP/AVP",
        ["0", "8", "101"],
    )
    assert audio.connection == "198.51.100.7"
    assert audio.rtpmap() == {101: ("TELEPHONE-EVENT", 8000, 1)}
    assert audio.fmtp() == {101: "0-15"}
    assert audio.ptime == 30
    assert audio.direction == "sendonly"
    assert video.rtpmap() == {31: ("H261", 90000, 1)}
    assert video.direction is None and video.ptime is None


def test_parse_sdp_lf_and_unknown_lines_and_str() -> None:
    text = (
        "v=0\no=- 1 1 IN IP6 ::1\ns=x\ni=info\nb=AS:64\nz=whatever\nc=IN IP6 2001:db8::2\n"
        "t=0 0\nm=audio 4000/2 RTP/AVP 0\nb=TIAS:64000\na=rtcp-mux\n"
    )
    sdp = parse_sdp(text)
    assert sdp.connection == "2001:db8::2"
    assert sdp.media[0].port == 4000
    assert sdp.media[0].attributes == [("rtcp-mux", None)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "o=- 1 1 IN IP4 1.2.3.4\n",
        "v=1\no=- 1 1 IN IP4 1.2.3.4\n",
        "v=0\ns=-\n",
        "v=0\no=x\nm=audio\n",
        "v=0\no=x\nm=audio abc RTP/AVP 0\n",
        "v=0\no=x\nc=IN\n",
        "v=0\no=x\ngarbage line\n",
    ],
)
def test_parse_sdp_errors(text: str) -> None:
    with pytest.raises(SdpError):
        parse_sdp(text)


def test_round_trip_to_bytes() -> None:
    sdp = SessionDescription(
        origin="- 1 2 IN IP4 10.0.0.1",
        connection="10.0.0.1",
        attributes=[("group", "BUNDLE a")],
        media=[
            MediaDescription(
                "audio",
                5000,
                "RTP/AVP",
                ["8"],
                "10.0.0.2",
                [("rtpmap", "8 PCMA/8000"), ("recvonly", None)],
            )
        ],
    )
    wire = sdp.to_bytes()
    assert wire.startswith(
        b"v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    )
    assert wire.endswith(b"\r\n") and b"\n" not in wire.replace(b"\r\n", b"")
    assert parse_sdp(wire) == sdp


# --------------------------------------------------------------------------- negotiate


def test_negotiate_pcmu_first() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 49170 RTP/AVP 0 8\n")))
    assert neg == Negotiated("PCMU", 0, None, "192.0.2.10", 49170, "sendrecv", 20)


def test_negotiate_pcma_first() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 49170 RTP/AVP 8 0\n")))
    assert (neg.codec, neg.payload_type) == ("PCMA", 8)


def test_negotiate_skips_unsupported_in_offer_order() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 49170 RTP/AVP 18 3 8 0\na=rtpmap:18 G729/8000\n")))
    assert (neg.codec, neg.payload_type) == ("PCMA", 8)


def test_negotiate_supported_restricts() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 49170 RTP/AVP 0 8\n")), supported=("pcma",))
    assert neg.codec == "PCMA"


def test_negotiate_only_dynamic_pcma() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 40000 RTP/AVP 96\na=rtpmap:96 pcma/8000\n")))
    assert (neg.codec, neg.payload_type) == ("PCMA", 96)


def test_negotiate_dynamic_wrong_rate_ignored() -> None:
    with pytest.raises(NoCommonCodec):
        negotiate(parse_sdp(offer("m=audio 40000 RTP/AVP 96\na=rtpmap:96 PCMU/16000\n")))


def test_negotiate_telephone_event() -> None:
    neg = negotiate(
        parse_sdp(
            offer(
                "m=audio 49170 RTP/AVP 0 97 101\n"
                "a=rtpmap:97 telephone-event/16000\n"
                "a=rtpmap:101 telephone-event/8000\n"
                "a=fmtp:101 0-16\n"
            )
        )
    )
    assert neg.dtmf_payload_type == 101
    neg2 = negotiate(parse_sdp(offer("m=audio 49170 RTP/AVP 0\n")))
    assert neg2.dtmf_payload_type is None


def test_negotiate_no_common_codec() -> None:
    with pytest.raises(NoCommonCodec):
        negotiate(parse_sdp(offer("m=audio 49170 RTP/AVP 18\na=rtpmap:18 G729/8000\n")))


@pytest.mark.parametrize(
    "media",
    [
        "m=video 5000 RTP/AVP 31\n",
        "m=audio 0 RTP/AVP 0\n",
        "m=audio 5000 RTP/SAVP 0\n",
        "m=audio 5000 UDP/TLS/RTP/SAVPF 0\n",
        "",
    ],
)
def test_negotiate_no_usable_audio(media: str) -> None:
    with pytest.raises(NoCommonCodec):
        negotiate(parse_sdp(offer(media)))


def test_negotiate_uses_first_usable_audio() -> None:
    neg = negotiate(
        parse_sdp(
            offer(
                "m=audio 0 RTP/AVP 0\n"
                "m=audio 6000 RTP/SAVP 0\n"
                "m=audio 7000 RTP/AVPF 8\n"
                "m=audio 8000 RTP/AVP 0\n"
            )
        )
    )
    assert (neg.remote_port, neg.codec) == (7000, "PCMA")


def test_negotiate_hold_sendonly() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 5000 RTP/AVP 0\na=sendonly\n")))
    assert neg.remote_direction == "sendonly"
    assert answer_direction(neg.remote_direction) == "recvonly"


def test_negotiate_inactive() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 5000 RTP/AVP 0\na=inactive\n")))
    assert neg.remote_direction == "inactive"


def test_negotiate_rfc2543_hold() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 5000 RTP/AVP 0\n", session="c=IN IP4 0.0.0.0\n")))
    assert (neg.remote_host, neg.remote_direction) == ("0.0.0.0", "sendonly")
    neg = negotiate(
        parse_sdp(offer("m=audio 5000 RTP/AVP 0\na=inactive\n", session="c=IN IP4 0.0.0.0\n"))
    )
    assert neg.remote_direction == "inactive"
    neg = negotiate(
        parse_sdp(offer("m=audio 5000 RTP/AVP 0\na=recvonly\n", session="c=IN IP4 0.0.0.0\n"))
    )
    assert neg.remote_direction == "inactive"


def test_negotiate_media_level_overrides_session_level() -> None:
    sdp = parse_sdp(
        offer(
            "m=audio 5000 RTP/AVP 0\nc=IN IP4 198.51.100.1\na=recvonly\na=ptime:40\n",
            extra="a=sendonly\na=ptime:30\n",
        )
    )
    neg = negotiate(sdp)
    assert (neg.remote_host, neg.remote_direction, neg.ptime) == ("198.51.100.1", "recvonly", 40)


def test_negotiate_session_level_fallbacks() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 5000 RTP/AVP 0\n", extra="a=sendonly\na=ptime:30\n")))
    assert (neg.remote_host, neg.remote_direction, neg.ptime) == ("192.0.2.10", "sendonly", 30)


def test_negotiate_missing_connection() -> None:
    with pytest.raises(SdpError):
        negotiate(parse_sdp(offer("m=audio 5000 RTP/AVP 0\n", session="")))


@pytest.mark.parametrize(
    ("remote", "local"),
    [
        ("sendrecv", "sendrecv"),
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
    ],
)
def test_answer_direction(remote: str, local: str) -> None:
    assert answer_direction(remote) == local


# --------------------------------------------------------------------------- build_answer


def test_build_answer_parsed_back() -> None:
    neg = negotiate(
        parse_sdp(
            offer(
                "m=audio 49170 RTP/AVP 96 101\n"
                "a=rtpmap:96 PCMA/8000\n"
                "a=rtpmap:101 telephone-event/8000\n"
            )
        )
    )
    wire = build_answer(neg, local_host="203.0.113.5", local_port=30000, session_id=42, version=1)
    assert wire.startswith(b"v=0\r\no=confroom 42 1 IN IP4 203.0.113.5\r\ns=confroom\r\n")
    assert b"c=IN IP4 203.0.113.5\r\nt=0 0\r\nm=audio 30000 RTP/AVP 96 101\r\n" in wire
    ans = parse_sdp(wire)
    assert ans.connection == "203.0.113.5"
    (m,) = ans.media
    assert (m.port, m.proto, m.formats) == (30000, "RTP/AVP", ["96", "101"])
    assert m.rtpmap() == {96: ("PCMA", 8000, 1), 101: ("TELEPHONE-EVENT", 8000, 1)}
    assert m.fmtp() == {101: "0-16"}
    assert m.ptime == 20
    assert m.direction == "sendrecv"
    # our answer is itself an acceptable offer for the same codec
    back = negotiate(ans)
    assert (back.codec, back.payload_type, back.dtmf_payload_type) == ("PCMA", 96, 101)
    assert (back.remote_host, back.remote_port) == ("203.0.113.5", 30000)


def test_build_answer_hold_and_override_and_ipv6() -> None:
    neg = negotiate(parse_sdp(offer("m=audio 5000 RTP/AVP 0\na=sendonly\n")))
    ans = parse_sdp(build_answer(neg, local_host="::1", local_port=4000, session_id=1, version=2))
    assert ans.origin == "confroom 1 2 IN IP6 ::1"
    assert ans.media[0].direction == "recvonly"
    assert ans.media[0].formats == ["0"]
    assert ans.media[0].fmtp() == {}
    wire = build_answer(
        neg, local_host="10.0.0.1", local_port=4000, session_id=1, version=3, direction="inactive"
    )
    assert b"c=IN IP6" not in wire
    assert parse_sdp(wire).media[0].direction == "inactive"


# --------------------------------------------------------------------------- wideband codecs

_ALL = (
    "m=audio 49170 RTP/AVP 0 9 96 8 101 102\n"
    "a=rtpmap:96 opus/48000/2\n"
    "a=fmtp:96 useinbandfec=1\n"
    "a=rtpmap:9 G722/8000\n"
    "a=rtpmap:101 telephone-event/8000\n"
    "a=rtpmap:102 telephone-event/48000\n"
)


def test_negotiate_caller_order_wins_by_default() -> None:
    neg = negotiate(parse_sdp(offer(_ALL)))
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("PCMU", 0, 101)
    neg = negotiate(parse_sdp(offer(_ALL.replace("RTP/AVP 0 9 96", "RTP/AVP 9 0 96"))))
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("G722", 9, 101)


def test_negotiate_server_order_wins_when_preferred() -> None:
    neg = negotiate(parse_sdp(offer(_ALL)), supported=("OPUS", "G722", "PCMU"), prefer_ours=True)
    # Opus: its RTP clock is 48000, so the telephone-event at 48000 is chosen
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("OPUS", 96, 102)
    neg = negotiate(parse_sdp(offer(_ALL)), supported=("PCMA", "OPUS"), prefer_ours=True)
    assert (neg.codec, neg.dtmf_payload_type) == ("PCMA", 101)


def test_negotiate_only_opus_and_no_dtmf_at_its_clock() -> None:
    neg = negotiate(parse_sdp(offer(
        "m=audio 5000 RTP/AVP 111 101\na=rtpmap:111 OPUS/48000/2\n"
        "a=rtpmap:101 telephone-event/8000\n")))
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("OPUS", 111, None)


def test_negotiate_rejects_wrong_clock_and_reports_what_was_offered() -> None:
    with pytest.raises(NoCommonCodec) as e:
        negotiate(parse_sdp(offer(
            "m=audio 5000 RTP/AVP 96 97 18\na=rtpmap:96 opus/16000/2\n"
            "a=rtpmap:97 G722/16000\n")))
    assert "OPUS/16000" in str(e.value) and "G722/16000" in str(e.value)
    assert "18" in str(e.value)
    with pytest.raises(NoCommonCodec):  # a codec the config left out is not accepted
        negotiate(parse_sdp(offer("m=audio 5000 RTP/AVP 0\n")), supported=("OPUS", "G722"))


def test_answer_for_opus_and_g722() -> None:
    neg = negotiate(parse_sdp(offer(_ALL)), supported=("OPUS",))
    ans = parse_sdp(build_answer(neg, local_host="203.0.113.5", local_port=30000,
                                 session_id=1, version=1))
    m = ans.media[0]
    assert m.formats == ["96", "102"]
    assert m.rtpmap() == {96: ("OPUS", 48000, 2), 102: ("TELEPHONE-EVENT", 48000, 1)}
    assert "useinbandfec=1" in m.fmtp()[96]
    neg = negotiate(parse_sdp(offer(_ALL)), supported=("G722",))
    m = parse_sdp(build_answer(neg, local_host="203.0.113.5", local_port=30000,
                               session_id=1, version=1)).media[0]
    assert m.rtpmap() == {9: ("G722", 8000, 1), 101: ("TELEPHONE-EVENT", 8000, 1)}


def test_offer_lists_configured_codecs_in_order_and_round_trips() -> None:
    wire = build_offer(local_host="192.0.2.1", local_port=4000, session_id=7,
                       codecs=("G722", "OPUS", "PCMU"))
    m = parse_sdp(wire).media[0]
    assert m.formats == ["9", "111", "0", "101", "110"]
    assert m.rtpmap()[111] == ("OPUS", 48000, 2)
    assert m.rtpmap()[110] == ("TELEPHONE-EVENT", 48000, 1)
    # answering our own offer picks its first codec
    assert negotiate(parse_sdp(wire)).codec == "G722"
    narrow = parse_sdp(build_offer(local_host="192.0.2.1", local_port=4000, session_id=7,
                                   codecs=("PCMU", "PCMA"))).media[0]
    assert narrow.formats == ["0", "8", "101"]
