"""End-to-end gather and leave: a PIN conference over real SIPp calls with RFC 4733 digits from
an RtpPeer (barge-in checked on the wire) and with SIP INFO digits, a wrong PIN asked again, a
timeout, speech ("sales", "support" spoken by espeak-ng into the call as RTP) recognised
offline, and `leave` from a conference waitHook."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import HookApp, HookRequest, RtpPeer, SippRunner, g711_decode, speech_pcm

from toolcheck import require_tool

PROMPT = "Welcome to the conference line. Please enter your conference PIN, then press pound. "


def _pin_gather(text: str) -> dict[str, Any]:
    return {"verb": "gather", "input": ["digits"], "finishOnKey": "#", "maxDigits": 8,
            "timeout": 10, "actionHook": "/pin", "say": {"text": text}}


def _loud_arrivals(peer: RtpPeer, since: float) -> list[float]:
    """Arrival times of received PCMU packets whose audio is loud (a prompt)."""
    out = []
    for p in peer.packets(payload_types=[0]):
        if p.arrival >= since:
            pcm = g711_decode(p.payload, 0).astype(np.float64)
            if np.sqrt(np.mean(pcm**2)) > 300:
                out.append(p.arrival)
    return out


def test_pin_conference_with_rfc4733_digits_and_bargein(
    confroom: Any, hook_app: HookApp, sipp: SippRunner, rtp_peer: RtpPeer
) -> None:
    require_tool("espeak-ng")

    def pin(req: HookRequest) -> list[Any]:
        if req.json.get("digits") == "1234":
            return [{"verb": "conference", "name": "pinroom"}]
        return [_pin_gather("That PIN is not valid. " + PROMPT)]

    hook_app.route("/call", [_pin_gather(PROMPT * 3)])
    hook_app.route("/pin", pin)
    srv = confroom(hook_app.url("/call"))
    run = sipp.start("uac_basic", srv.target, pause_ms=14000,
                     keys={"rtp_port": rtp_peer.port}, timeout=40)
    server_rtp = rtp_peer.wait_packets(1, timeout=15, payload_types=[0])[0].source
    (req,) = hook_app.wait_requests("/call", 1)
    sid = re.escape(req.json["call_sid"])
    # the caller hears the prompt
    deadline = time.monotonic() + 10
    while not _loud_arrivals(rtp_peer, 0.0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _loud_arrivals(rtp_peer, 0.0), "no prompt heard"
    time.sleep(0.5)
    assert _loud_arrivals(rtp_peer, time.monotonic() - 0.2), "the prompt is not playing"
    # barge-in: the first digit stops the prompt at once
    sent_at = time.monotonic()
    rtp_peer.send_dtmf("9", server_rtp)
    srv.wait_log(rf"dtmf .*call_sid={sid}\b.*digit=9\b", timeout=5)
    time.sleep(1.0)
    loud = _loud_arrivals(rtp_peer, sent_at)
    stop_ms = (max(loud) - sent_at) * 1000 if loud else 0.0
    assert stop_ms < 100, f"prompt audio went on {stop_ms:.0f} ms after the digit"
    # a wrong PIN is asked again
    rtp_peer.send_dtmf("9", server_rtp)
    rtp_peer.send_dtmf("#", server_rtp)
    (wrong,) = hook_app.wait_requests("/pin", 1)
    assert wrong.json["reason"] == "dtmfDetected" and wrong.json["digits"] == "99"
    assert wrong.json["call_sid"] == req.json["call_sid"]
    time.sleep(0.5)
    for d in "1234#":
        rtp_peer.send_dtmf(d, server_rtp)
    reqs = hook_app.wait_requests("/pin", 2)
    assert reqs[1].json["digits"] == "1234"
    srv.wait_log(rf"conference join name=pinroom call_sid={sid}\b", timeout=10)
    res = run.wait()
    assert res.ok(), res.describe()
    print(f"dtmf barge-in: last loud frame {stop_ms:.0f} ms after the digit was sent "
          f"(0 = none after it)")


def test_gather_timeout_reason(confroom: Any, hook_app: HookApp, sipp: SippRunner,
                               rtp_peer: RtpPeer) -> None:
    hook_app.route("/call", [{"verb": "gather", "timeout": 1.5, "actionHook": "/done"},
                             {"verb": "say", "text": "never reached"}])
    hook_app.route("/done", [{"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=30)
    assert res.ok(), res.describe()
    (done,) = hook_app.wait_requests("/done", 1)
    assert done.json["reason"] == "timeout" and "digits" not in done.json
    srv.wait_log(r"call end .*status=completed", timeout=5)


def test_pin_with_sip_info_digits(confroom: Any, hook_app: HookApp, sipp: SippRunner,
                                  rtp_peer: RtpPeer) -> None:
    require_tool("espeak-ng")
    hook_app.route("/call", [_pin_gather(PROMPT)])
    hook_app.route("/pin", lambda req: [{"verb": "conference", "name": "inforoom"}]
                   if req.json.get("digits") == "1234" else [{"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"))
    digits = {f"d{i + 1}": d for i, d in enumerate("1234#")}
    res = sipp.run("uac_dtmf_info", srv.target, pause_ms=2000,
                   keys={"rtp_port": rtp_peer.port, **digits}, timeout=40)
    assert res.ok(), res.describe()
    (req,) = hook_app.wait_requests("/pin", 1)
    assert req.json["reason"] == "dtmfDetected" and req.json["digits"] == "1234"
    srv.wait_log(rf"conference join name=inforoom call_sid={re.escape(req.json['call_sid'])}\b",
                 timeout=5)


def test_speech_gather_recognises_sales_and_support(
    confroom: Any, hook_app: HookApp, sipp: SippRunner, rtp_peer: RtpPeer, tmp_path: Path
) -> None:
    """The first gather has a long prompt with bargein: speech stops it (checked on the wire)."""
    words = ["sales", "support"]
    speech = {w: speech_pcm(tmp_path, w) for w in words}
    gather = {"verb": "gather", "input": ["speech"], "timeout": 15, "actionHook": "/speech",
              "recognizer": {"vendor": "google", "language": "en-US", "hints": words}}
    hook_app.route("/call", [{**gather, "bargein": True, "say": {"text": PROMPT * 3}}])
    hook_app.route("/speech", lambda req: [gather] if len(hook_app.received("/speech")) < 2
                   else [{"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"))
    run = sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=60)
    server_rtp = rtp_peer.wait_packets(1, timeout=15, payload_types=[0])[0].source
    deadline = time.monotonic() + 10
    while not _loud_arrivals(rtp_peer, time.monotonic() - 0.2) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _loud_arrivals(rtp_peer, time.monotonic() - 0.2), "the prompt is not playing"
    silence = np.zeros(8000, dtype=np.int16)
    for n, word in enumerate(words, 1):
        spoke_at = time.monotonic()
        rtp_peer.send_pcm(np.concatenate([speech[word], silence, silence]), server_rtp)
        if n == 1:  # barge-in: the prompt stopped soon after the speech started
            loud = _loud_arrivals(rtp_peer, spoke_at)
            stop_s = max(loud) - spoke_at if loud else 0.0
            assert stop_s < 0.6, f"prompt went on {stop_s:.2f} s into the caller's speech"
            print(f"speech barge-in: last loud frame {stop_s * 1000:.0f} ms after speech start")
        reqs = hook_app.wait_requests("/speech", n, timeout=20)
        body = reqs[n - 1].json
        assert body["reason"] == "speechDetected", body
        alt = body["speech"]["alternatives"][0]
        assert alt["transcript"] == word, body["speech"]
        assert 0 <= alt["confidence"] <= 1 and body["speech"]["is_final"] is True
    res = run.wait()
    assert res.ok(), res.describe()
    assert srv.find_logs(r"recognizer vendor 'google' is not configured")


def test_leave_from_a_conference_wait_hook(confroom: Any, hook_app: HookApp, sipp: SippRunner,
                                           rtp_peer: RtpPeer) -> None:
    hook_app.route("/call", [{"verb": "conference", "name": "leaveroom",
                              "startConferenceOnEnter": False, "waitHook": "/wait",
                              "actionHook": "/after"}])
    hook_app.route("/wait", [{"verb": "pause", "length": 1}, {"verb": "leave"}])
    hook_app.route("/after", [{"verb": "hangup"}])
    srv = confroom(hook_app.url("/call"))
    res = sipp.run("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=30)
    assert res.ok(), res.describe()
    (after,) = hook_app.wait_requests("/after", 1)
    assert after.json["conference_result"] == "left"
    assert after.json["friendly_name"] == "leaveroom"
    srv.wait_log(r"call end .*status=completed", timeout=5)
