"""End-to-end calls: SIPp (UAC) -> confroom (subprocess) -> HookApp (webhooks) + RtpPeer (media).

Every test starts its own confroom on free ports with a real webhook server; nothing here
uses confroom's own code, so the server is checked from the outside.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from typing import Any

import numpy as np
import pytest
from harness import (
    ACCOUNT_SID,
    APPLICATION_SID,
    HOST,
    WEBHOOK_SECRET,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    HookRequest,
    Reply,
    RtpPeer,
    SippRunner,
    band_power,
    dominant_frequency,
    loud_frames,
    parse_kv,
    require_tool,
    rms,
    tone_power,
    verify_signature,
    write_tone_wav,
)
from schemas import schema_errors

pytestmark = pytest.mark.e2e

TO_USER = "1000"
FROM_USER = "alice"
ANSWER_AND_WAIT = [{"verb": "answer"}, {"verb": "pause", "length": 5}]
TRANSPORTS = [pytest.param("u1", "udp", id="udp"), pytest.param("t1", "tcp", id="tcp")]


# ------------------------------------------------------------------------------- helpers


def is_uuid4(value: object) -> bool:
    try:
        return uuid.UUID(str(value)).version == 4
    except ValueError:
        return False


def call_start(srv: ConfroomProcess, call_sid: str, timeout: float = 10) -> dict[str, str]:
    line = srv.wait_log(rf"call start .*call_sid={re.escape(call_sid)}\b", timeout=timeout)
    return parse_kv(line.string)


def call_end(srv: ConfroomProcess, call_sid: str, timeout: float = 15) -> dict[str, str]:
    line = srv.wait_log(rf"call end .*call_sid={re.escape(call_sid)}\b", timeout=timeout)
    return parse_kv(line.string)


def assert_signed(req: HookRequest, secret: str = WEBHOOK_SECRET) -> None:
    header = req.header("Jambonz-Signature")
    assert header, f"no Jambonz-Signature header on {req.method} {req.path}: {req.headers}"
    assert verify_signature(header, req.raw, secret), f"bad signature {header!r}"


def assert_call_fields(body: dict[str, Any], *, call_id: str, srv: ConfroomProcess,
                       rtp_port: int | None = None) -> None:
    """The call fields jambonz puts into the first call hook (spec section 2)."""
    assert is_uuid4(body.get("call_sid")), body
    assert body["direction"] == "inbound"
    assert body["from"] == FROM_USER
    assert body["to"] == TO_USER
    assert body["call_id"] == call_id
    assert body["caller_name"] == FROM_USER
    assert body["originating_sip_ip"] == HOST
    assert str(srv.sip_port) in str(body["local_sip_address"])
    assert body["account_sid"] == ACCOUNT_SID
    assert body["application_sid"] == APPLICATION_SID
    assert body["call_status"] in ("trying", "ringing", "early-media")
    assert "sip_status" in body
    assert isinstance(body.get("sip"), dict) and body["sip"], "no INVITE in 'sip'"
    if rtp_port is not None:  # the INVITE body (our SDP offer) is in there
        assert f"m=audio {rtp_port} RTP/AVP" in json.dumps(body["sip"])


def audio_packets(peer: RtpPeer) -> list[Any]:
    return peer.packets((0, 8))


# ------------------------------------------------------------------------------- 1, 2: basic


@pytest.mark.parametrize(("transport", "proto"), TRANSPORTS)
def test_basic_call(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                    rtp_peer: RtpPeer, transport: str, proto: str) -> None:
    hook_app.route("/call", ANSWER_AND_WAIT)
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_basic", srv.target, transport=transport, pause_ms=1000,
                   keys={"rtp_port": rtp_peer.port}, timeout=20)
    assert res.ok(), res.describe()

    (req,) = hook_app.wait_requests("/call", 1)
    assert req.method == "POST"
    assert_signed(req)
    body = req.json
    assert isinstance(body, dict), req.raw
    (sip_call_id,) = res.call_ids
    assert_call_fields(body, call_id=sip_call_id, srv=srv, rtp_port=rtp_peer.port)
    assert schema_errors("session-new", body) == []

    start = call_start(srv, body["call_sid"])
    assert start["call_id"] == sip_call_id
    assert (start["from"], start["to"], start["transport"]) == (FROM_USER, TO_USER, proto)
    end = call_end(srv, body["call_sid"])
    assert end["status"] == "completed", end
    # the server sent RTP (silence) to the SDP address from the answer on
    assert len(audio_packets(rtp_peer)) >= 25


def test_call_status_hook(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                          rtp_peer: RtpPeer) -> None:
    hook_app.route("/call", ANSWER_AND_WAIT)
    hook_app.route("/status", Reply(status=200))
    srv = confroom(hook_app.url("/call"), call_status_hook=hook_app.url("/status"))
    res = sipp.run("uac_basic", srv.target, pause_ms=500, keys={"rtp_port": rtp_peer.port})
    assert res.ok(), res.describe()
    (call,) = hook_app.wait_requests("/call", 1)
    sid = call.json["call_sid"]
    hook_app.wait_for(lambda reqs: any(r.path == "/status" and r.json and
                                       r.json.get("call_status") == "completed" for r in reqs))
    statuses = hook_app.received("/status")
    for r in statuses:
        assert_signed(r)
        assert r.json["call_sid"] == sid and r.json["call_id"] == call.json["call_id"]
        assert schema_errors("call-status", r.json) == []
    seq = [r.json["call_status"] for r in statuses]
    assert "in-progress" in seq and seq.index("in-progress") < seq.index("completed"), seq
    call_end(srv, sid)


# ------------------------------------------------------------------------------- 3: CANCEL


def test_cancel_before_answer(confroom: ConfroomFactory, hook_app: HookApp,
                              sipp: SippRunner) -> None:
    hook_app.route("/call", Reply(verbs=ANSWER_AND_WAIT, delay=3.0))
    srv = confroom(hook_app.url("/call"))
    # CANCEL 1 s after the last provisional: the call hook is pending (it answers after 3 s)
    res = sipp.run("uac_cancel_late", srv.target, timeout=20)
    assert res.ok(), res.describe()  # 100/180 -> CANCEL -> 200 + 487 -> ACK
    (req,) = hook_app.wait_requests("/call", 1)
    (sip_call_id,) = res.call_ids
    assert req.json["call_id"] == sip_call_id
    assert call_start(srv, req.json["call_sid"])["call_id"] == sip_call_id
    end = call_end(srv, req.json["call_sid"])
    assert end["status"] != "completed", end
    # the late hook answer (3 s) must not resurrect the call, and the server keeps serving
    hook_app.route("/call", ANSWER_AND_WAIT)
    res = sipp.run("uac_basic", srv.target, pause_ms=300, timeout=20)
    assert res.ok(), res.describe()


def test_cancel_on_first_provisional(confroom: ConfroomFactory, hook_app: HookApp,
                                     sipp: SippRunner) -> None:
    """CANCEL as soon as 100 Trying arrives, possibly before the hook is even called."""
    hook_app.route("/call", Reply(verbs=ANSWER_AND_WAIT, delay=3.0))
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_cancel", srv.target, timeout=20)
    assert res.ok(), res.describe()
    (sip_call_id,) = res.call_ids
    sid = srv.wait_log(rf"call start .*call_id={re.escape(sip_call_id)}(\s|$)").string
    end = call_end(srv, parse_kv(sid)["call_sid"])
    assert end["status"] != "completed", end


# ------------------------------------------------------------------------------- 4: hold


@pytest.mark.parametrize(("transport", "proto"), TRANSPORTS)
def test_reinvite_hold_resume(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                              rtp_peer: RtpPeer, transport: str, proto: str) -> None:
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "pause", "length": 10}])
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_hold", srv.target, transport=transport, pause_ms=700,
                   keys={"rtp_port": rtp_peer.port}, timeout=20)
    assert res.ok(), res.describe()  # sendonly -> recvonly, sendrecv -> sendrecv
    (req,) = hook_app.wait_requests("/call", 1)
    assert call_end(srv, req.json["call_sid"])["status"] == "completed"


# ------------------------------------------------------------------------------- 5: OPTIONS


@pytest.mark.parametrize(("transport", "proto"), TRANSPORTS)
def test_options(confroom: ConfroomFactory, sipp: SippRunner, transport: str,
                 proto: str) -> None:
    srv = confroom(verbs=[{"verb": "hangup"}])
    res = sipp.run("uac_options", srv.target, transport=transport, timeout=10)
    assert res.ok(), res.describe()  # 200 with Allow: ...INVITE...
    assert not srv.find_logs(r"call start"), "OPTIONS must not create a call"


# ------------------------------------------------------------------------------- 6: server BYE


def test_server_hangs_up_after_say(confroom: ConfroomFactory, hook_app: HookApp,
                                   sipp: SippRunner, rtp_peer: RtpPeer) -> None:
    require_tool("espeak-ng")
    hook_app.route("/call", [{"verb": "say", "text": "goodbye"}, {"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=30)
    assert res.ok(), res.describe()  # the BYE came from the server
    (req,) = hook_app.wait_requests("/call", 1)
    assert call_end(srv, req.json["call_sid"])["status"] == "completed"
    assert audio_packets(rtp_peer), "no RTP during 'say'"


# ------------------------------------------------------------------------------- 7: decline


@pytest.mark.parametrize("status", [486, 603])
def test_sip_decline(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                     status: int) -> None:
    hook_app.route("/call", [{"verb": "sip:decline", "status": status, "reason": "Not Today"}])
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_decline", srv.target, variables={"expected_status": status},
                   timeout=15)
    assert res.ok(), res.describe()
    assert res.final_statuses == [status]
    assert re.search(rf"^SIP/2\.0 {status} Not Today", res.messages, re.M), "reason not used"
    (req,) = hook_app.wait_requests("/call", 1)
    call_end(srv, req.json["call_sid"])


def test_sip_decline_alternate_verb_spelling(confroom: ConfroomFactory, hook_app: HookApp,
                                             sipp: SippRunner) -> None:
    hook_app.route("/call", [{"sip:decline": {"status": 486}}])
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_decline", srv.target, variables={"expected_status": 486}, timeout=15)
    assert res.ok(), res.describe()


# ------------------------------------------------------------------------------- 8: loss


def test_signalling_loss_10_percent(confroom: ConfroomFactory, hook_app: HookApp,
                                    sipp: SippRunner) -> None:
    hook_app.route("/call", [{"verb": "pause", "length": 1}, {"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"))
    calls = 20
    res = sipp.run("uac_wait_bye", srv.target, calls=calls, rate=5, lost=10, timeout=120,
                   recv_timeout=60)
    assert res.ok(calls), res.describe()
    ends = srv.wait_logs(r"call end ", calls, timeout=60)
    assert len(ends) == calls
    assert len(hook_app.received("/call")) >= calls


# ------------------------------------------------------------------------------- 9: load


def test_load_100_calls(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                        capsys: pytest.CaptureFixture[str],
                        record_property: Any) -> None:
    hook_app.route("/call", ANSWER_AND_WAIT)
    srv = confroom(hook_app.url("/call"))
    calls, rate = 100, 20
    cpu0 = srv.cpu_seconds()
    t0 = time.monotonic()
    res = sipp.run("uac_basic", srv.target, calls=calls, rate=rate, pause_ms=1000,
                   timeout=90, trace_msg=False)
    wall = time.monotonic() - t0
    assert res.ok(calls), res.describe()
    srv.wait_logs(r"call end .*status=completed", calls, timeout=30)
    cpu = srv.cpu_seconds() - cpu0
    assert len(hook_app.received("/call")) == calls
    record_property("server_cpu_seconds", round(cpu, 3))
    record_property("calls_per_second", round(calls / wall, 2))
    with capsys.disabled():
        print(f"\n[load] {calls} calls at {rate}/s: {res.successful} ok, {res.failed} failed, "
              f"wall {wall:.1f}s ({calls / wall:.1f} calls/s), server CPU {cpu:.2f}s "
              f"({1000 * cpu / calls:.1f} ms/call)")


# ------------------------------------------------------------------------------- 10: media


@pytest.mark.parametrize(("payloads", "pt"), [("0 8 101", 0), ("8 101", 8)],
                         ids=["pcmu", "pcma-only"])
def test_play_tone_reaches_caller(confroom: ConfroomFactory, hook_app: HookApp,
                                  sipp: SippRunner, rtp_peer: RtpPeer, payloads: str,
                                  pt: int) -> None:
    require_tool("sox")  # confroom may convert media with it
    srv = confroom(hook_app.url("/call"))
    wav = write_tone_wav(srv.media_dir / "tone440.wav", 440, 1.5, amplitude=0.5)
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "play", "url": str(wav)},
                             {"verb": "hangup"}])
    run = sipp.start("uac_wait_bye", srv.target,
                     keys={"rtp_port": rtp_peer.port, "payloads": payloads}, timeout=30)
    rtp_peer.wait_packets(50, timeout=15, payload_types=[pt])
    res = run.wait()
    assert res.ok(), res.describe()

    pkts = rtp_peer.packets()
    assert {p.payload_type for p in pkts} <= {pt, 101, 13}, "unexpected payload types"
    audio = [p for p in pkts if p.payload_type == pt]
    assert len({p.ssrc for p in audio}) == 1
    src_ip, src_port = audio[0].source
    assert src_ip == HOST and srv.rtp_lo <= src_port <= srv.rtp_hi
    gaps = np.diff([p.arrival for p in audio])
    assert 0.015 < float(np.median(gaps)) < 0.025, "RTP is not paced at 20 ms"
    assert all(len(p.payload) == 160 for p in audio), "ptime is not 20 ms"

    pcm = rtp_peer.decoded_pcm()
    tone_part = loud_frames(pcm, threshold=1000)
    assert len(tone_part) >= 1.2 * 8000, f"only {len(tone_part) / 8000:.2f}s of tone"
    assert abs(dominant_frequency(tone_part) - 440) <= 10
    assert tone_power(tone_part, 440) > 0.8
    assert rms(tone_part) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.25)


def test_say_produces_speech(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                             rtp_peer: RtpPeer) -> None:
    require_tool("espeak-ng")
    text = "Hello, this is the confroom media test. One two three four five."
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "say", "text": text},
                             {"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=40)
    assert res.ok(), res.describe()
    pcm = rtp_peer.decoded_pcm()
    assert len(pcm) > 8000
    speech = loud_frames(pcm, threshold=300)
    assert len(speech) >= 1.0 * 8000, f"only {len(speech) / 8000:.2f}s above silence"
    assert rms(speech) > 1000
    assert band_power(speech, 100, 3800) > 0.9
    quiet = np.sort(np.sqrt(np.mean(pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
                                    .astype(np.float64) ** 2, axis=1)))
    assert quiet[0] < 50, "no silent frame at all (silence must be real silence)"


def test_symmetric_rtp(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                       rtp_peer_factory: Any) -> None:
    """The server sends to where the caller's RTP comes from, not to the SDP address."""
    sdp_peer, real_peer = rtp_peer_factory(), rtp_peer_factory()
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "pause", "length": 4},
                             {"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"))
    run = sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": sdp_peer.port}, timeout=30)
    first = sdp_peer.wait_packets(1, timeout=15, payload_types=[0])[0]
    server_rtp = first.source
    sender = real_peer.send_tone_async(1000, 1.0, server_rtp)
    real_peer.wait_packets(10, timeout=5, payload_types=[0])
    sender.join(5)
    res = run.wait()
    assert res.ok(), res.describe()
    assert {p.source for p in real_peer.packets()} == {server_rtp}


# ------------------------------------------------------------------------------- 11: DTMF


def test_dtmf_from_sipp_pcap(confroom: ConfroomFactory, hook_app: HookApp,
                             sipp: SippRunner) -> None:
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "pause", "length": 10}])
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_dtmf", srv.target, pause_ms=1500, timeout=20)
    assert res.ok(), res.describe()
    (req,) = hook_app.wait_requests("/call", 1)
    sid = req.json["call_sid"]
    srv.wait_log(rf"dtmf .*call_sid={re.escape(sid)}\b.*digit=1\b", timeout=10)
    call_end(srv, sid)
    # one event (its end packet is sent three times) is one digit
    assert len(srv.find_logs(rf"dtmf .*call_sid={re.escape(sid)}\b")) == 1


def test_dtmf_from_rtp_peer(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                           rtp_peer: RtpPeer) -> None:
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "pause", "length": 10}])
    srv = confroom(hook_app.url("/call"))
    run = sipp.start("uac_basic", srv.target, pause_ms=3000,
                     keys={"rtp_port": rtp_peer.port}, timeout=20)
    server_rtp = rtp_peer.wait_packets(1, timeout=15, payload_types=[0])[0].source
    (req,) = hook_app.wait_requests("/call", 1)
    sid = re.escape(req.json["call_sid"])
    for digit in "4#":
        rtp_peer.send_dtmf(digit, server_rtp)
        srv.wait_log(rf"dtmf .*call_sid={sid}\b.*digit={re.escape(digit)}(\s|$)", timeout=5)
    res = run.wait()
    assert res.ok(), res.describe()
    assert len(srv.find_logs(rf"dtmf .*call_sid={sid}\b")) == 2


# ------------------------------------------------------------------------------- 12: bad hooks

FAILURES = [
    pytest.param(Reply(verbs=ANSWER_AND_WAIT, delay=3.0), 480, id="hook-timeout"),
    pytest.param(Reply(status=500, body="boom", content_type="text/plain"), 480, id="hook-500"),
    # a 2xx whose body is not a verb list is an app error, like invalid verbs: 500
    pytest.param(Reply(body="[{not json", status=200), 500, id="invalid-json"),
    pytest.param([{"verb": "play"}], 500, id="invalid-verbs"),
]


@pytest.mark.parametrize(("reply", "expected"), FAILURES)
def test_failing_call_hook(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
                           reply: Reply | list[Any], expected: int) -> None:
    hook_app.route("/call", reply)
    srv = confroom(hook_app.url("/call"), webhook_timeout=1.0)
    mark = srv.mark()
    res = sipp.run("uac_expect_status", srv.target, variables={"expected_status": expected},
                   timeout=20)
    assert res.ok(), res.describe()
    assert res.final_statuses == [expected]
    if isinstance(reply, Reply) and reply.delay:
        assert res.elapsed < reply.delay, "the webhook timeout (1 s) was not applied"
    problem = r"(?i)(?=.*\b(warn|warning|error)\b)"
    if isinstance(reply, list):  # invalid verbs: the log names the verb and the attribute
        srv.wait_log(problem + r"(?=.*\bplay\b)(?=.*\burl\b)", timeout=5, since=mark)
    else:  # the failed hook is logged with its URL
        srv.wait_log(problem + rf"(?=.*{re.escape(hook_app.url('/call'))})", timeout=5,
                     since=mark)
    # the server keeps serving
    hook_app.route("/call", ANSWER_AND_WAIT)
    res = sipp.run("uac_basic", srv.target, pause_ms=500, timeout=20)
    assert res.ok(), res.describe()
    assert srv.proc is not None and srv.proc.poll() is None


# ------------------------------------------------------------------------------- 13: SIGTERM


def test_sigterm_drains_then_hangs_up_calls_and_exits_0(
        confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
        rtp_peer: RtpPeer) -> None:
    """SIGTERM: new calls get 503 + Retry-After at once, calls up may go on for the drain
    time (2 s here), then get BYE; exit 0."""
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "pause", "length": 30}])
    srv = confroom(hook_app.url("/call"), extra_toml={"limits": {"drain_time": 2.0}})
    run = sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=30)
    rtp_peer.wait_packets(5, timeout=15)  # answered: media flows
    (req,) = hook_app.wait_requests("/call", 1)
    assert srv.proc is not None
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_log(r"draining: new calls get 503", timeout=5)
    refused = sipp.run("uac_flood", srv.target, service="1000", timeout=10)
    assert refused.ok(), refused.describe()
    assert refused.final_statuses == [503]
    assert run.poll() is None, "the call was ended before the drain time"
    assert srv.stop(timeout=15) == 0
    res = run.wait()
    assert res.ok(), res.describe()  # SIPp got the server's BYE
    assert 1.9 < time.monotonic() - t0 < 15
    assert srv.find_logs(rf"call end .*call_sid={re.escape(req.json['call_sid'])}\b")
    assert len(hook_app.received("/call")) == 1  # the refused INVITE cost no webhook


def test_second_sigterm_ends_the_drain_at_once(
        confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
        rtp_peer: RtpPeer) -> None:
    hook_app.route("/call", [{"verb": "answer"}, {"verb": "pause", "length": 30}])
    srv = confroom(hook_app.url("/call"))  # the default drain time: 30 s
    run = sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=30)
    rtp_peer.wait_packets(5, timeout=15)
    assert srv.proc is not None
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_log(r"draining: new calls get 503; 1 call\(s\) may finish for up to 30s",
                 timeout=5)
    assert srv.stop(timeout=15) == 0  # the second SIGTERM
    res = run.wait()
    assert res.ok(), res.describe()
    assert time.monotonic() - t0 < 10
