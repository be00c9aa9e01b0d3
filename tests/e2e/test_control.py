"""Live call control end to end: real SIPp calls, real HTTP against the REST API, audio checked
on the wire by FFT (mute, hold, coach), kick and DELETE via actionHooks, the recording WAV,
distributeDtmf (RFC 4733 in, RFC 4733 out), auth and error codes, and the unmodified jambonz
Python SDK as an outside client."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from harness import (
    ACCOUNT_SID,
    HOST,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    HookRequest,
    Int16Array,
    RtpPeer,
    SippRun,
    SippRunner,
    free_tcp_port,
    loud_frames,
    rms,
    tone_power,
    write_tone_wav,
)
from jambonz_sdk.client import JambonzClient

pytestmark = pytest.mark.e2e

TOKEN = "e2e-api-token-9f8e7d"
MARGIN = 0.35  # seconds after a change before its effect is measured (jitter + network)


# ---- helpers ------------------------------------------------------------------------------


class Rest:
    """A tiny urllib client for the API (status, decoded JSON)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://{HOST}:{port}"

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN,
                raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def update(self, call_sid: str, body: Any) -> tuple[int, Any]:
        return self.request("PUT", f"/v1/Accounts/{ACCOUNT_SID}/Calls/{call_sid}", body)


def start(confroom: ConfroomFactory, hook_app: HookApp) -> tuple[ConfroomProcess, Rest]:
    port = free_tcp_port()
    srv = confroom(hook_app.url("/call"), extra_toml={"http": {"port": port, "token": TOKEN}})
    srv.wait_log(rf"REST API on http://{re.escape(HOST)}:{port}")
    return srv, Rest(port)


def per_caller(verbs: dict[str, list[dict[str, Any]]]) -> Callable[[HookRequest], Any]:
    """A call hook answering each caller (by its From user) with its own verb list."""
    return lambda req: verbs[req.json["from"]]


def call_sids(hook_app: HookApp, n: int) -> dict[str, str]:
    reqs = hook_app.wait_requests("/call", n, timeout=15)
    return {r.json["from"]: r.json["call_sid"] for r in reqs}


def server_addr(peer: RtpPeer, timeout: float = 15.0) -> tuple[str, int]:
    return peer.wait_packets(1, timeout=timeout, payload_types=[0])[0].source


def dial(sipp: SippRunner, srv: ConfroomProcess, peers: Mapping[str, RtpPeer],
         pause_ms: int | Mapping[str, int], timeout: float = 40
         ) -> tuple[list[SippRun], dict[str, tuple[str, int]]]:
    """One uac_basic call per named peer (its RTP port in the SDP, the name as From user), in
    the conference for `pause_ms`; returns the SIPp runs and where the server sends each one's
    RTP from (send there: symmetric RTP)."""
    runs = [sipp.start("uac_basic", srv.target, keys={"rtp_port": p.port, "from_user": name},
                       pause_ms=pause_ms if isinstance(pause_ms, int) else pause_ms[name],
                       timeout=timeout)
            for name, p in peers.items()]
    return runs, {name: server_addr(p) for name, p in peers.items()}


@dataclass
class ToneRoom:
    """Callers in one conference, each sending its own tone to the server: `start()` dials
    them, waits until all have joined and starts the tones (at `t0`); `finish()` waits for
    the tones and the calls to end (each SIPp call must succeed)."""

    peers: dict[str, RtpPeer]
    runs: list[SippRun]
    addrs: dict[str, tuple[str, int]]
    sids: dict[str, str]
    t0: float
    senders: list[Any]

    @classmethod
    def start(cls, sipp: SippRunner, srv: ConfroomProcess, hook_app: HookApp,
              rtp_peer_factory: Callable[[], RtpPeer], freqs: Mapping[str, float],
              pause_ms: int | Mapping[str, int], seconds: float) -> ToneRoom:
        peers = {name: rtp_peer_factory() for name in freqs}
        runs, addrs = dial(sipp, srv, peers, pause_ms=pause_ms)
        srv.wait_log(rf"conference join .*members={len(freqs)}", timeout=15)
        sids = call_sids(hook_app, len(freqs))
        t0 = time.monotonic()
        senders = [peers[n].send_tone_async(f, seconds, addrs[n], amplitude=0.2)
                   for n, f in freqs.items()]
        return cls(peers, runs, addrs, sids, t0, senders)

    def finish(self) -> None:
        for s in self.senders:
            s.join(timeout=15)
        for r in self.runs:
            res = r.wait()
            assert res.ok(), res.describe()


def window(peer: RtpPeer, t1: float, t2: float) -> Int16Array:
    """The audio `peer` received between monotonic times t1 and t2."""
    pcm = peer.decoded_pcm(since=t1)[: int((t2 - t1) * 8000)]
    assert len(pcm) >= 0.8 * (t2 - t1) * 8000, f"only {len(pcm) / 8000:.2f}s received"
    return pcm


def timed(change: Callable[[], object]) -> tuple[float, float]:
    """Run a control request; return (sent, answered) monotonic times. The server applies a
    change before it answers, so audio of the old state ends at `sent` and audio of the new
    state starts at `answered` (+ MARGIN)."""
    sent = time.monotonic()
    change()
    return sent, time.monotonic()


def ok(answer: tuple[int, Any]) -> None:
    assert answer[0] == 202, answer


def hears(pcm: Int16Array, freq: float) -> bool:
    return tone_power(pcm, freq) > 0.15


def silent_at(pcm: Int16Array, freq: float) -> bool:
    return rms(pcm) < 60 or tone_power(pcm, freq) < 0.01


def status_events(hook_app: HookApp) -> list[tuple[str, str]]:
    return [(r.json["event"], r.json["call_sid"]) for r in hook_app.received("/status")]


def log_time(line: str) -> float:
    stamp = line.split(" ")[0] + " " + line.split(" ")[1]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


# ---- audio: mute, hold, coach ----------------------------------------------------------------


def test_mute_via_rest_with_the_jambonz_sdk(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    """Mute/unmute driven by the unmodified jambonz Python SDK (JambonzClient.calls.mute): the
    muted member's tone leaves what the others receive and comes back on unmute; the app's
    statusHook gets `mute` and `unmute`."""
    hook_app.route("/call", [{"verb": "conference", "name": "mute-room", "statusHook": "/status",
                              "statusEvents": ["mute", "unmute"]}])
    hook_app.route("/status", [])
    srv, rest = start(confroom, hook_app)
    freqs = {"alice": 440.0, "bob": 1000.0, "carol": 2200.0}
    room = ToneRoom.start(sipp, srv, hook_app, rtp_peer_factory, freqs, 11000, 7.5)
    peers, sids, t0 = room.peers, room.sids, room.t0

    async def sdk(status: str) -> None:
        # base_url is the server root: the SDK itself appends /v1/Accounts/<account_sid>/...
        async with JambonzClient(base_url=rest.base, account_sid=ACCOUNT_SID,
                                 api_key=TOKEN) as client:
            result = await client.calls.mute(sids["alice"], status)
            assert result["action"] == status and result["call_sids"] == [sids["alice"]]

    time.sleep(2.0)
    mute_sent, t_mute = timed(lambda: asyncio.run(sdk("mute")))
    time.sleep(2.5)
    unmute_sent, t_unmute = timed(lambda: asyncio.run(sdk("unmute")))
    room.finish()
    t_end = t0 + 7.3
    for listener in ("bob", "carol"):
        peer = peers[listener]
        before = window(peer, t0 + MARGIN, mute_sent)
        muted = window(peer, t_mute + MARGIN, unmute_sent)
        after = window(peer, t_unmute + MARGIN, t_end)
        assert hears(before, 440), f"{listener} does not hear alice before the mute"
        assert tone_power(muted, 440) < 0.01, f"{listener} still hears muted alice"
        other = 2200.0 if listener == "bob" else 1000.0
        assert hears(muted, other), f"{listener} lost the unmuted member during the mute"
        assert hears(after, 440), f"{listener} does not hear alice after the unmute"
    # alice, muted, still hears the others
    muted_alice = window(peers["alice"], t_mute + MARGIN, unmute_sent)
    assert hears(muted_alice, 1000) and hears(muted_alice, 2200)
    hook_app.wait_for(lambda _: len(status_events(hook_app)) >= 2)
    assert status_events(hook_app) == [("mute", sids["alice"]), ("unmute", sids["alice"])]


def test_hold_plays_the_wait_hook_and_isolates_the_member(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    hook_app.route("/call", [{"verb": "conference", "name": "hold-room", "statusHook": "/status",
                              "statusEvents": ["hold", "unhold"]}])
    hook_app.route("/status", [])
    hook_app.route("/moh", [{"verb": "play", "url": "moh.wav"}])
    srv, rest = start(confroom, hook_app)
    write_tone_wav(srv.media_dir / "moh.wav", 3000.0, 1.0, amplitude=0.4)
    freqs = {"alice": 440.0, "bob": 1000.0}
    room = ToneRoom.start(sipp, srv, hook_app, rtp_peer_factory, freqs, 11000, 8.0)
    peers, sids, t0 = room.peers, room.sids, room.t0
    time.sleep(1.5)
    hold_sent, t_hold = timed(lambda: ok(rest.update(
        sids["bob"], {"conf_hold_status": "hold", "waitHook": "/moh"})))
    time.sleep(3.5)
    unhold_sent, t_unhold = timed(lambda: ok(rest.update(
        sids["bob"], {"conf_hold_status": "unhold"})))
    room.finish()
    t_end = t0 + 7.8
    alice, bob = peers["alice"], peers["bob"]
    assert hears(window(alice, t0 + MARGIN, hold_sent), 1000)
    assert hears(window(bob, t0 + MARGIN, hold_sent), 440)
    held_bob = window(bob, t_hold + MARGIN, unhold_sent)
    held_alice = window(alice, t_hold + MARGIN, unhold_sent)
    assert tone_power(held_bob, 3000) > 0.5, "held bob does not get the hold waitHook audio"
    assert silent_at(held_bob, 440), "held bob still hears alice"
    assert silent_at(held_alice, 1000), "alice still hears held bob"
    assert silent_at(held_alice, 3000), "the hold audio leaks into the conference"
    after_bob = window(bob, t_unhold + MARGIN, t_end)
    assert hears(after_bob, 440) and silent_at(after_bob, 3000)
    assert hears(window(alice, t_unhold + MARGIN, t_end), 1000)
    moh = hook_app.received("/moh")
    assert moh and all(r.json["call_sid"] == sids["bob"] for r in moh)
    hook_app.wait_for(lambda _: len(status_events(hook_app)) >= 2)
    assert status_events(hook_app) == [("hold", sids["bob"]), ("unhold", sids["bob"])]


def test_coach_is_heard_only_by_the_tagged_member(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    """coach joins with speakOnlyTo=agent (verb attribute), agent has memberTag=agent; then
    REST `uncoach` makes the coach public and REST `coach` restricts it again."""
    conf = {"verb": "conference", "name": "coach-room"}
    hook_app.route("/call", per_caller({
        "coach": [{**conf, "speakOnlyTo": "agent"}],
        "agent": [{**conf, "memberTag": "agent"}],
        "customer": [conf],
    }))
    srv, rest = start(confroom, hook_app)
    freqs = {"coach": 440.0, "agent": 1000.0, "customer": 2200.0}
    room = ToneRoom.start(sipp, srv, hook_app, rtp_peer_factory, freqs, 12000, 8.5)
    peers, sids, t0 = room.peers, room.sids, room.t0
    time.sleep(2.5)
    action = "conferenceParticipantAction"
    t1_sent, t1 = timed(lambda: ok(rest.update(sids["coach"], {action: {"action": "uncoach"}})))
    time.sleep(2.5)
    t2_sent, t2 = timed(lambda: ok(rest.update(
        sids["coach"], {action: {"action": "coach", "tag": "agent"}})))
    room.finish()
    t_end = t0 + 8.3
    agent, customer, coach = peers["agent"], peers["customer"], peers["coach"]
    for start_t, end_t, public in ((t0 + MARGIN, t1_sent, False), (t1 + MARGIN, t2_sent, True),
                                   (t2 + MARGIN, t_end, False)):
        a = window(agent, start_t, end_t)
        c = window(customer, start_t, end_t)
        k = window(coach, start_t, end_t)
        assert hears(a, 440), "the tagged agent must always hear the coach"
        assert hears(a, 2200) and hears(c, 1000), "agent and customer hear each other"
        if public:
            assert hears(c, 440), "after uncoach the customer hears the coach"
        else:
            assert tone_power(c, 440) < 0.01, "the customer hears the coach"
        assert hears(k, 1000) and hears(k, 2200), "the coach hears everyone"
        assert tone_power(k, 440) < 0.01, "the coach hears itself"


# ---- kick, DELETE, detail, errors -------------------------------------------------------


def test_kick_runs_the_action_hook_and_delete_ends_the_conference(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    conf = {"verb": "conference", "name": "kick-room", "actionHook": "/action",
            "endConferenceOnExit": False}
    hook_app.route("/call", per_caller({
        "alice": [{**conf, "memberTag": "host"}],
        "bob": [conf],
        "lonely": [{"verb": "pause", "length": 8}],
    }))

    def action(req: HookRequest) -> list[dict[str, Any]]:
        if req.json["conference_result"] == "kicked":
            return [{"verb": "say", "text": "you have been removed"}, {"verb": "hangup"}]
        return [{"verb": "hangup"}]

    hook_app.route("/action", action)
    srv, rest = start(confroom, hook_app)
    peers = {name: rtp_peer_factory() for name in ("alice", "bob", "lonely")}
    runs = {name: sipp.start("uac_wait_bye", srv.target,
                             keys={"rtp_port": p.port, "from_user": name}, timeout=40)
            for name, p in peers.items()}
    srv.wait_log(r"conference join .*members=2", timeout=15)
    sids = call_sids(hook_app, 3)
    base = f"/v1/Accounts/{ACCOUNT_SID}/Conferences"

    # errors first: auth, unknown call, not in a conference, bad body
    path = f"/v1/Accounts/{ACCOUNT_SID}/Calls/{sids['bob']}"
    assert rest.request("PUT", path, {"mute_status": "mute"}, token=None)[0] == 401
    assert rest.request("PUT", path, {"mute_status": "mute"}, token="wrong")[0] == 401
    assert rest.request("GET", base, token="wrong")[0] == 401
    assert rest.update("no-such-call", {"mute_status": "mute"})[0] == 404
    assert rest.request("PUT", f"/v1/Accounts/other/Calls/{sids['bob']}",
                        {"mute_status": "mute"})[0] == 404
    status, body = rest.update(sids["lonely"], {"mute_status": "mute"})
    assert (status, body["error"]) == (422, f"call {sids['lonely']} is not in a conference")
    status, body = rest.update(sids["bob"], {"conferenceParticipantAction": {"action": "fly"}})
    assert status == 400 and "action must be one of" in body["error"]
    status, body = rest.request("PUT", path, raw=b"not json")
    assert status == 400 and "not valid JSON" in body["error"]
    assert rest.request("GET", "/health", token=None) == (
        200, {"status": "ok", "calls": 3, "conferences": 1})

    # detail
    status, detail = rest.request("GET", f"{base}/kick-room")
    assert status == 200 and detail["friendly_name"] == "kick-room"
    parts = {p["from"]: p for p in detail["participants"]}
    assert set(parts) == {"alice", "bob"} and parts["alice"]["tag"] == "host"
    assert parts["bob"]["call_sid"] == sids["bob"] and parts["bob"]["joined_at"].endswith("Z")
    assert rest.request("GET", base) == (200, ["kick-room"])

    # kick bob: its actionHook says goodbye and hangs up; alice stays
    status, body = rest.update(sids["bob"], {"conferenceParticipantAction": {"action": "kick"}})
    assert status == 202 and body["action"] == "kick"
    bob_result = runs["bob"].wait()
    assert bob_result.ok(), bob_result.describe()
    kicked = [r.json for r in hook_app.received("/action")]
    assert [(k["call_sid"], k["conference_result"]) for k in kicked] == [(sids["bob"], "kicked")]
    assert kicked[0]["friendly_name"] == "kick-room"
    status, detail = rest.request("GET", f"{base}/kick-room")
    assert [p["from"] for p in detail["participants"]] == ["alice"]

    # DELETE: alice's actionHook gets "ended" and hangs up
    assert rest.request("DELETE", f"{base}/kick-room")[0] == 202
    alice_result = runs["alice"].wait()
    assert alice_result.ok(), alice_result.describe()
    ended = hook_app.received("/action")[-1].json
    assert (ended["call_sid"], ended["conference_result"]) == (sids["alice"], "ended")
    assert rest.request("GET", base) == (200, [])
    assert rest.request("GET", f"{base}/kick-room")[0] == 404
    lonely = runs["lonely"].wait()
    assert lonely.ok(), lonely.describe()


# ---- recording and DTMF -----------------------------------------------------------------------


def test_recording_holds_the_mix_for_the_conference_duration(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    hook_app.route("/call", [{"verb": "conference", "name": "rec-room",
                              "record": {"path": "recordings/rec-room.wav"}}])
    srv, _ = start(confroom, hook_app)
    freqs = {"alice": 440.0, "bob": 1000.0}
    ToneRoom.start(sipp, srv, hook_app, rtp_peer_factory, freqs,
                   {"alice": 6000, "bob": 5000}, 3.0).finish()
    done = srv.wait_log(r"conference recording done name=rec-room path=(\S+)", timeout=10)
    start_line = srv.wait_log(r"conference start name=rec-room").string
    end_line = srv.wait_log(r"conference end name=rec-room").string
    conf_duration = log_time(end_line) - log_time(start_line)
    path = srv.media_dir / "recordings" / "rec-room.wav"
    assert path.exists() and done.group(1) == str(path.resolve())
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        wav_duration = w.getnframes() / 8000
    assert abs(wav_duration - conf_duration) <= 0.5, (wav_duration, conf_duration)
    loud = loud_frames(pcm, threshold=500)
    assert len(loud) >= 2.0 * 8000, "the members' tones are missing from the recording"
    assert hears(loud, 440) and hears(loud, 1000)
    assert np.max(np.abs(pcm.astype(np.int32))) < 32767


def test_distribute_dtmf_sends_rfc4733_to_the_other_members(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    conf = {"verb": "conference", "name": "dtmf-room"}
    hook_app.route("/call", per_caller({
        "alice": [{**conf, "distributeDtmf": True}],
        "bob": [conf],
        "carol": [conf],
    }))
    srv, _ = start(confroom, hook_app)
    peers = {name: rtp_peer_factory() for name in ("alice", "bob", "carol")}
    runs, addrs = dial(sipp, srv, peers, pause_ms=5000, timeout=30)
    srv.wait_log(r"conference join .*members=3", timeout=15)
    peers["alice"].send_dtmf("7", addrs["alice"])
    peers["bob"].send_dtmf("3", addrs["bob"])  # bob did not ask: his digit stays with him
    srv.wait_log(r"conference dtmf name=dtmf-room .*digit=7 sent_to=2", timeout=5)
    for name in ("bob", "carol"):
        events = peers[name].wait_packets(4, timeout=5, payload_types=[101])
        codes = {e.payload[0] for e in events}
        assert codes == {7}, f"{name} got events {codes}"
        assert len({e.timestamp for e in events}) == 1, "one digit = one event"
        assert events[0].marker and events[-1].payload[1] & 0x80, "start marker, end bit"
    time.sleep(0.5)
    assert not peers["alice"].packets(payload_types=[101]), "alice got a digit back"
    for r in runs:
        res = r.wait()
        assert res.ok(), res.describe()
