"""Outbound calls end to end: REST create-call (the unmodified jambonz SDK and plain HTTP)
against SIPp UAS callees - answer, 486 busy, no answer (CANCEL after the timeout), 183 early
media then 200, a trunk's 401 digest challenge - with the call-status hook's reports; the
answered callee joins a conference and audio crosses both ways (FFT on the wire), also with a
real softphone (baresip, auto-answer) as the callee; policy: a target outside the allowed
domains is refused and logged, the concurrency cap answers 429. `dial`: audio and DTMF (RFC 4733
and SIP INFO) cross the bridge; CANCEL of the losing and abandoned targets."""

from __future__ import annotations

import asyncio
import subprocess
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from harness import (
    ACCOUNT_SID,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    HookRequest,
    RtpPeer,
    SippRunner,
    free_port_block,
    free_sip_port,
    tone,
    tone_power,
    write_tone_wav,
    write_wav,
)
from jambonz_sdk.client import JambonzClient
from schemas import schema_errors
from test_control import TOKEN, Rest, free_tcp_port, hears, server_addr, window
from test_harness_selfcheck import Uas

from toolcheck import require_tool

pytestmark = pytest.mark.e2e

CALLS = f"/v1/Accounts/{ACCOUNT_SID}/Calls"


def start(confroom: ConfroomFactory, hook_app: HookApp, **toml: Any) -> tuple[ConfroomProcess,
                                                                              Rest]:
    port = free_tcp_port()
    extra: dict[str, Any] = {"http": {"port": port, "token": TOKEN}, **toml}
    srv = confroom(hook_app.url("/call"), extra_toml=extra)
    srv.wait_log(rf"REST API on http://127.0.0.1:{port}")
    return srv, Rest(port)


def statuses(hook_app: HookApp, sid: str) -> list[tuple[str, int]]:
    return [(r.json["call_status"], r.json["sip_status"]) for r in hook_app.received("/cstatus")
            if r.json and r.json.get("call_sid") == sid]


def wait_status(hook_app: HookApp, sid: str, status: str, timeout: float = 15) -> None:
    hook_app.wait_for(lambda _: any(s == status for s, _ in statuses(hook_app, sid)),
                      timeout=timeout)


def test_create_call_callee_joins_conference_audio_both_ways(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, tmp_path: Path,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    """The jambonz SDK creates a call to a SIPp callee; its call hook (direction outbound)
    answers with a conference that an inbound caller is in; each hears the other's tone."""
    def call_hook(req: HookRequest) -> list[dict[str, Any]]:
        conf: dict[str, Any] = {"verb": "conference", "name": "pull-in", "beep": False}
        if req.json["from"] == "alice":
            conf["endConferenceOnExit"] = True
        return [conf]

    hook_app.route("/call", call_hook)
    hook_app.route("/cstatus", [])
    srv, rest = start(confroom, hook_app, outbound={"allowed_domains": ["127.0.0.1"]})
    alice, bob = rtp_peer_factory(), rtp_peer_factory()
    inbound = sipp.start("uac_basic", srv.target, keys={"rtp_port": alice.port,
                                                        "from_user": "alice"},
                         pause_ms=9000, timeout=30)
    alice_addr = server_addr(alice)
    callee = Uas(tmp_path, "uas_answer", keys={"rtp_port": bob.port})

    async def create() -> str:
        async with JambonzClient(base_url=rest.base, account_sid=ACCOUNT_SID,
                                 api_key=TOKEN) as client:
            return await client.calls.create({
                "from": "confbot", "to": {"type": "sip", "sipUri": f"sip:bob@{callee.target}"},
                "call_hook": hook_app.url("/call"),
                "call_status_hook": hook_app.url("/cstatus"), "timeout": 10,
                "tag": {"why": "pull in"}})

    sid = asyncio.run(create())
    assert sid
    srv.wait_log(r"conference join .*members=2", timeout=15)
    hook = next(r.json for r in hook_app.wait_requests("/call", 2)
                if r.json["call_sid"] == sid)
    assert hook["direction"] == "outbound" and hook["from"] == "confbot"
    assert hook["to"] == "bob" and hook["customerData"] == {"why": "pull in"}
    assert schema_errors("session-new", hook) == []
    bob_addr = server_addr(bob)
    t0 = time.monotonic()
    senders = [alice.send_tone_async(440.0, 2.5, alice_addr, amplitude=0.2),
               bob.send_tone_async(1000.0, 2.5, bob_addr, amplitude=0.2)]
    for s in senders:
        s.join(timeout=10)
    t1 = time.monotonic()
    assert hears(window(bob, t0 + 0.4, t1 - 0.2), 440.0), "the callee does not hear alice"
    assert hears(window(alice, t0 + 0.4, t1 - 0.2), 1000.0), "alice does not hear the callee"
    res = inbound.wait()
    assert res.ok(), res.describe()
    assert callee.wait() == 0, callee.messages()  # got confroom's BYE when the room ended
    wait_status(hook_app, sid, "completed")
    seen = [s for s, _ in statuses(hook_app, sid)]
    assert seen == ["trying", "ringing", "in-progress", "completed"], seen
    for r in hook_app.received("/cstatus"):
        assert schema_errors("call-status", r.json) == [], r.json


class Baresip:
    """A headless baresip softphone on 127.0.0.1 that auto-answers: its config dir is written
    here (one codec: PCMU, or G722 / opus with `rate` 16000 / 48000; a tone WAV as the
    microphone via `aufile`, no audio player; the `sndfile` filter writes what it hears to
    dump-*-dec.wav in its directory). `tone_hz` may list several frequencies (summed)."""

    def __init__(self, tmp: Path, user: str, tone_hz: float | tuple[float, ...],
                 codec: str = "PCMU", rate: int = 8000) -> None:
        exe = require_tool("baresip")
        self.dir = tmp / "baresip"
        self.dir.mkdir()
        self.port = free_sip_port()
        self.rate = rate
        rtp = free_port_block(8)
        freqs = tone_hz if isinstance(tone_hz, tuple) else (tone_hz,)
        mic = sum(tone(f, 60.0, rate, 0.2 / len(freqs)) for f in freqs)
        wav = write_wav(self.dir / "tone.wav", np.asarray(mic, dtype=np.int16), rate)
        (self.dir / "config").write_text("\n".join([
            "poll_method epoll", f"sip_listen 127.0.0.1:{self.port}", "sip_trans_def udp",
            "net_interface 127.0.0.1", f"audio_source aufile,{wav}",
            f"ausrc_srate {rate}", f"auplay_srate {rate}", "ausrc_channels 1",
            "auplay_channels 1",
            f"rtp_ports {rtp}-{rtp + 7}", "module_path /usr/lib/baresip/modules",
            # only the one codec's module: it can answer with nothing else
            f"module {'g711' if codec in ('PCMU', 'PCMA') else codec.lower()}.so",
            "module aufile.so",
            "module sndfile.so", "module_app account.so", f"snd_path {self.dir}", ""]))
        (self.dir / "accounts").write_text(
            f"<sip:{user}@127.0.0.1:{self.port}>;regint=0;answermode=auto;"
            f"audio_codecs={codec}\n")
        self.log_path = self.dir / "baresip.log"
        with self.log_path.open("wb") as out:
            # -t: it quits by itself after 90 s even if this test dies before stop()
            self.proc = subprocess.Popen([exe, "-f", str(self.dir), "-t", "90"],
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.wait_log("baresip is ready", timeout=15)
        self.uri = f"sip:{user}@127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"baresip: no {text!r} within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def heard(self) -> npt.NDArray[np.int16]:
        """What it received in its (ended) call, decoded, from the sndfile dump."""
        (dump,) = self.dir.glob("dump-*-dec.wav")
        with wave.open(str(dump)) as w:
            # (its Opus decoder runs in stereo, as opus/48000/2 says: then the left channel)
            channels = w.getnchannels()
            assert (w.getframerate(), w.getsampwidth()) == (self.rate, 2) and channels in (1, 2)
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            return pcm[::channels]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_create_call_to_baresip_softphone_joins_conference(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, tmp_path: Path,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    """A REST-created call to a real softphone (baresip, auto-answer): its call hook puts it in
    a conference with an inbound SIPp caller; the caller hears baresip's 1000 Hz tone (FFT on
    the RTP it receives) and baresip hears the caller's 440 Hz tone (FFT on what it decoded)."""
    phone = Baresip(tmp_path, "bob", 1000.0)
    try:
        hook_app.route("/call", [{"verb": "conference", "name": "softphone", "beep": False}])
        hook_app.route("/cstatus", [])
        srv, rest = start(confroom, hook_app, outbound={"allowed_domains": ["127.0.0.1"]})
        alice = rtp_peer_factory()
        inbound = sipp.start("uac_basic", srv.target, keys={"rtp_port": alice.port,
                                                            "from_user": "alice"},
                             pause_ms=30000, timeout=45)
        alice_addr = server_addr(alice)

        async def create() -> str:
            async with JambonzClient(base_url=rest.base, account_sid=ACCOUNT_SID,
                                     api_key=TOKEN) as client:
                return await client.calls.create({
                    "from": "confbot", "to": {"type": "sip", "sipUri": phone.uri},
                    "call_hook": hook_app.url("/call"),
                    "call_status_hook": hook_app.url("/cstatus"), "timeout": 10})

        sid = asyncio.run(create())
        srv.wait_log(r"conference join name=softphone .*members=2", timeout=15)
        phone.wait_log("Call established", timeout=10)
        t0 = time.monotonic()
        alice.send_tone_async(440.0, 2.0, alice_addr, amplitude=0.2).join(timeout=10)
        t1 = time.monotonic()
        assert hears(window(alice, t0 + 0.4, t1 - 0.2), 1000.0), "alice does not hear baresip"
        # kicked out of the conference, with no actionHook: confroom hangs the softphone up
        assert rest.request("PUT", f"{CALLS}/{sid}", {"conferenceParticipantAction": {
            "action": "kick"}})[0] == 202
        phone.wait_log("session closed", timeout=10)
        wait_status(hook_app, sid, "completed")
    finally:
        phone.stop()
    assert hears(phone.heard(), 440.0), "baresip does not hear alice"
    inbound.kill()


def test_create_call_outcomes_digest_and_policy(
    confroom: ConfroomFactory, hook_app: HookApp, tmp_path: Path,
) -> None:
    """Busy, no answer (CANCEL after `timeout`), early media, a trunk's 401 challenge answered
    with digest credentials; a disallowed target refused (403, logged); the per-account cap
    answers 429 while a call rings."""
    hook_app.route("/call", [{"verb": "pause", "length": 0.3}])
    hook_app.route("/cstatus", [])
    trunk_uas = Uas(tmp_path, "uas_auth", keys={"rtp_port": 9})
    trunk = {"name": "carrier", "host": trunk_uas.target, "username": "trunkuser",
             "password": "trunk-secret", "prefix": ["+1"]}
    srv, rest = start(confroom, hook_app, trunks=[trunk],
                      outbound={"allowed_domains": ["127.0.0.1"], "max_concurrent_calls": 1,
                                "calls_per_second": 50.0})

    def create(to: dict[str, str], timeout: int = 10) -> tuple[int, Any]:
        return rest.request("POST", CALLS, {
            "from": "15550100", "to": to, "call_hook": hook_app.url("/call"),
            "call_status_hook": hook_app.url("/cstatus"), "timeout": timeout})

    # a phone number through the trunk, which challenges (401) -> digest -> answered
    status, body = create({"type": "phone", "number": "+15551234567"})
    assert status == 201, body
    wait_status(hook_app, body["sid"], "completed")
    assert trunk_uas.wait() == 0, trunk_uas.messages()
    assert [s for s, _ in statuses(hook_app, body["sid"])] == [
        "trying", "in-progress", "completed"]
    assert "Authorization: Digest" in trunk_uas.messages()

    # busy
    uas = Uas(tmp_path, "uas_busy")
    status, body = create({"type": "sip", "sipUri": f"sip:bob@{uas.target}"})
    assert status == 201, body
    wait_status(hook_app, body["sid"], "busy")
    assert ("busy", 486) in statuses(hook_app, body["sid"])
    assert uas.wait() == 0, uas.messages()

    # no answer within the timeout: CANCEL; meanwhile the cap of 1 call refuses another
    uas = Uas(tmp_path, "uas_noanswer")
    status, body = create({"type": "sip", "sipUri": f"sip:bob@{uas.target}"}, timeout=2)
    assert status == 201, body
    wait_status(hook_app, body["sid"], "ringing")
    status2, refused = create({"type": "sip", "sipUri": f"sip:carol@{uas.target}"})
    assert status2 == 429 and "max_concurrent_calls" in refused["error"], refused
    wait_status(hook_app, body["sid"], "no-answer")
    assert uas.wait() == 0, uas.messages()  # it got the CANCEL

    # 183 with SDP (early media), then 200
    uas = Uas(tmp_path, "uas_early_media", keys={"rtp_port": 9})
    status, body = create({"type": "sip", "sipUri": f"sip:bob@{uas.target}"})
    assert status == 201, body
    wait_status(hook_app, body["sid"], "completed")
    assert [s for s, _ in statuses(hook_app, body["sid"])] == [
        "trying", "early-media", "in-progress", "completed"]
    assert uas.wait() == 0, uas.messages()

    # policy: a domain that is not allowed, an unknown account, a malformed body
    mark = srv.mark()
    status, refused = create({"type": "sip", "sipUri": "sip:premium@198.51.100.7"})
    assert status == 403 and "not an allowed outbound domain" in refused["error"], refused
    srv.wait_log(r"outbound call refused .*198\.51\.100\.7", since=mark)
    status, refused = create({"type": "phone", "number": "+445550000"})
    assert status == 403 and "no outbound trunk" in refused["error"], refused
    assert rest.request("POST", "/v1/Accounts/nope/Calls", {
        "from": "1", "to": {"type": "phone", "number": "+1555"},
        "call_hook": hook_app.url("/call")})[0] == 404
    status, err = rest.request("POST", CALLS, {"to": {"type": "phone", "number": "+1555"}})
    assert status == 400 and "'from'" in err["error"]


# ---- dial ------------------------------------------------------------------------------------


def test_dial_two_targets_second_answers_audio_both_ways_then_callee_hangs_up(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, tmp_path: Path,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    """An inbound caller dials two SIPp callees: the first only rings and gets CANCEL, the
    second answers; its confirmHook plays it a tone first; then each hears the other (FFT)
    and DTMF crosses; the callee hangs up, the actionHook gets dial_call_status completed and
    its verbs continue the caller's call."""
    alice, bob = rtp_peer_factory(), rtp_peer_factory()
    ringer = Uas(tmp_path, "uas_noanswer")
    callee = Uas(tmp_path, "uas_answer_hangup", keys={"rtp_port": bob.port})
    hook_app.route("/call", [{"verb": "dial", "callerId": "15550100", "timeout": 10,
                              "actionHook": "/dialaction", "headers": {"X-Dial": "yes"},
                              "target": [{"type": "sip", "sipUri": f"sip:r@{ringer.target}"},
                                         {"type": "sip", "sipUri": f"sip:b@{callee.target}",
                                          "confirmHook": {"url": "/confirm"}}]}])
    hook_app.route("/confirm", [{"verb": "play", "url": "confirm.wav"}])
    hook_app.route("/dialaction", [{"verb": "pause", "length": 0.2}, {"verb": "hangup"}])
    srv, _ = start(confroom, hook_app, outbound={"allowed_domains": ["127.0.0.1"],
                                                 "calls_per_second": 10.0})
    write_tone_wav(srv.media_dir / "confirm.wav", 2500.0, 0.6, amplitude=0.4)
    inbound = sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": alice.port,
                                                           "from_user": "alice"}, timeout=30)
    alice_addr = server_addr(alice)
    srv.wait_log(r"dial bridge call_sid=", timeout=15)
    bob_addr = server_addr(bob)
    # the confirmHook's prompt reached the dialled party before the bridge
    assert tone_power(bob.decoded_pcm(), 2500.0) > 0.05, "the callee never heard the confirm"
    confirm = hook_app.wait_requests("/confirm", 1)[0].json
    assert confirm["direction"] == "outbound" and confirm["parent_call_sid"]
    assert schema_errors("session-new", confirm) == []
    t0 = time.monotonic()
    senders = [alice.send_tone_async(440.0, 2.0, alice_addr, amplitude=0.2),
               bob.send_tone_async(1000.0, 2.0, bob_addr, amplitude=0.2)]
    for s in senders:
        s.join(timeout=10)
    t1 = time.monotonic()
    assert hears(window(bob, t0 + 0.4, t1 - 0.2), 440.0), "the callee does not hear alice"
    assert hears(window(alice, t0 + 0.4, t1 - 0.2), 1000.0), "alice does not hear the callee"
    # DTMF crosses the bridge both ways (RFC 4733 in, RFC 4733 out)
    alice.send_dtmf("7", alice_addr)
    bob.send_dtmf("3", bob_addr)
    to_bob = bob.wait_packets(3, timeout=5, payload_types=[101])
    to_alice = alice.wait_packets(3, timeout=5, payload_types=[101])
    assert {p.payload[0] for p in to_bob} == {7} and {p.payload[0] for p in to_alice} == {3}
    assert ringer.wait() == 0, ringer.messages()  # it was CANCELled
    assert callee.wait() == 0, callee.messages()  # it hung up (BYE answered)
    assert "X-Dial: yes" in callee.messages()
    action = hook_app.wait_requests("/dialaction", 1, timeout=15)[0].json
    assert action["dial_call_status"] == "completed" and action["dial_sip_status"] == 200
    assert 3 <= action["dial_call_duration"] <= 10 and action["dial_call_sid"]
    assert schema_errors("dial", action) == []
    res = inbound.wait()  # the actionHook's hangup reached the caller
    assert res.ok(), res.describe()


def test_dial_refused_domain_and_busy_go_to_action_hook(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, tmp_path: Path,
) -> None:
    """A dial to a domain outside [outbound] allowed_domains places no call: it is logged and
    the actionHook gets dial_call_status failed (403); a busy callee gives busy (486)."""
    busy = Uas(tmp_path, "uas_busy")

    def call_hook(req: HookRequest) -> list[dict[str, Any]]:
        uri = "sip:premium@203.0.113.9" if req.json["from"] == "alice" else f"sip:b@{busy.target}"
        return [{"verb": "dial", "actionHook": "/dialaction",
                 "target": [{"type": "sip", "sipUri": uri}]}]

    hook_app.route("/call", call_hook)
    hook_app.route("/dialaction", [{"verb": "hangup"}])
    srv, _ = start(confroom, hook_app, outbound={"allowed_domains": ["127.0.0.1"]})
    for who in ("alice", "bob"):
        res = sipp.run("uac_wait_bye", srv.target, keys={"from_user": who}, timeout=20)
        assert res.ok(), res.describe()
    srv.wait_log(r"dial target refused: sip target 'sip:premium@203\.0\.113\.9': 203\.0\.113\.9 "
                 r"is not an allowed outbound domain")
    results = {r.json["from"]: (r.json["dial_call_status"], r.json["dial_sip_status"])
               for r in hook_app.wait_requests("/dialaction", 2)}
    assert results == {"alice": ("failed", 403), "bob": ("busy", 486)}
    assert busy.wait() == 0, busy.messages()
    assert not srv.find_logs(r"outbound INVITE .*203\.0\.113\.9")


def test_dial_caller_gives_up_while_ringing_cancels_the_target(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, tmp_path: Path,
) -> None:
    """answerOnBridge: the caller is not answered while the target rings; when the caller
    CANCELs, the target's INVITE is CANCELled too and no actionHook runs."""
    ringer = Uas(tmp_path, "uas_noanswer")
    hook_app.route("/call", [{"verb": "dial", "answerOnBridge": True, "actionHook": "/act",
                              "target": [{"type": "sip", "sipUri": f"sip:r@{ringer.target}"}]}])
    hook_app.route("/act", [])
    srv, _ = start(confroom, hook_app, outbound={"allowed_domains": ["127.0.0.1"]})
    res = sipp.run("uac_cancel_late", srv.target, timeout=20)
    assert res.ok(), res.describe()
    assert ringer.wait() == 0, ringer.messages()  # got the CANCEL, answered 487, got the ACK
    # both legs end as cancelled: the caller's and the dialled one
    srv.wait_logs(r"call end .*status=no-answer reason=cancelled", count=2, timeout=10)
    assert hook_app.received("/act") == []


def test_dial_passes_sip_info_digits_as_rfc4733(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, tmp_path: Path,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    """Digits the caller sends as SIP INFO (application/dtmf-relay) while bridged by `dial`
    reach the dialled party as RFC 4733 telephone-events (decoded from the RTP it receives)."""
    alice, bob = rtp_peer_factory(), rtp_peer_factory()
    callee = Uas(tmp_path, "uas_answer", keys={"rtp_port": bob.port})
    hook_app.route("/call", [{"verb": "dial", "target": [
        {"type": "sip", "sipUri": f"sip:b@{callee.target}"}]}])
    srv, _ = start(confroom, hook_app, outbound={"allowed_domains": ["127.0.0.1"]})
    digits = {f"d{i + 1}": d for i, d in enumerate("1934#")}
    inbound = sipp.start("uac_dtmf_info", srv.target, pause_ms=1500,
                         keys={"rtp_port": alice.port, "from_user": "alice", **digits},
                         timeout=30)
    srv.wait_log(r"dial bridge call_sid=", timeout=15)
    want = {1, 9, 3, 4, 11}  # RFC 4733 event codes of 1 9 3 4 #
    deadline = time.monotonic() + 15
    seen: set[int] = set()
    packets: list[Any] = []
    while seen != want:
        packets = bob.wait_packets(len(packets) + 1, timeout=max(0.1, deadline - time.monotonic()),
                                   payload_types=[101])
        seen = {p.payload[0] for p in packets}
        assert seen <= want, seen
    res = inbound.wait()
    assert res.ok(), res.describe()
    assert callee.wait() == 0, callee.messages()  # the caller's BYE ended the dialled leg too
