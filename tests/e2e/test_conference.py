"""The conference verb end to end: real SIPp calls, a real webhook app, audio checked by FFT.

Conventions of this file:

* every caller has its own SIP From user (the SIPp `from_user` key), so one call hook (`/call`)
  can give each caller its own conference verb (`per_caller`), and the test finds each caller's
  call_sid / SIP Call-ID in its call-hook request;
* callers that the test hangs up use `tests/sipp/uac_hangup_on_info.xml`: the test sends an
  out-of-band INFO with the call's Call-ID to that SIPp's port when it wants the caller to hang
  up (`Caller.hang_up`), so hang-ups follow conditions instead of fixed call lengths; callers
  that the server hangs up use `uac_wait_bye.xml`;
* log times come from the server's log timestamps (ms), converted to this process's
  time.monotonic() clock, the clock of RTP arrivals and hook requests;
* every conference hook body seen in a test is checked against the jambonz callback JSON
  schemas of the installed jambonz-python-sdk (`check_hook_schemas`).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from harness import (
    ACCOUNT_SID,
    APPLICATION_SID,
    HOST,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    HookRequest,
    RtpPacket,
    RtpPeer,
    SippResult,
    SippRun,
    SippRunner,
    free_sip_port,
    g711_decode,
    parse_kv,
    rms,
    speech_pcm,
    tone,
    tone_power,
    write_tone_wav,
)
from schemas import schema_errors

pytestmark = pytest.mark.e2e

CALL, STATUS, WAIT, ENTER, ACTION = "/call", "/status", "/wait", "/enter", "/action"
HANGUP_ON_INFO = "uac_hangup_on_info"
WAIT_BYE = "uac_wait_bye"
ISO_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CALL_FIELDS = ("call_sid", "direction", "from", "to", "call_id", "account_sid",
               "application_sid")

Int16Array = npt.NDArray[np.int16]


def server_addr(peer: RtpPeer, timeout: float = 15.0) -> tuple[str, int]:
    """Where the server sends this peer's RTP from (symmetric RTP: send there)."""
    pkts = peer.wait_packets(1, timeout=timeout, payload_types=[0])
    return pkts[0].source


# ------------------------------------------------------------------------------- callers


def conference(name: str, **attrs: Any) -> list[dict[str, Any]]:
    return [{"verb": "conference", "name": name, **attrs}]


def per_caller(verbs: Mapping[str, list[dict[str, Any]]]) -> Callable[[HookRequest], Any]:
    """A /call route answering each caller (by its From user) with its own verb list."""
    return lambda req: verbs[req.json["from"]]


@dataclass
class Caller:
    """One SIPp call (signalling) + the RtpPeer that owns its SDP media port."""

    name: str
    peer: RtpPeer
    run: SippRun
    sip_port: int
    hooks: HookApp
    _addr: tuple[str, int] | None = None
    _call: dict[str, Any] | None = None

    @property
    def addr(self) -> tuple[str, int]:
        """The server's RTP address for this call (where to send our audio)."""
        if self._addr is None:
            self._addr = server_addr(self.peer)
        return self._addr

    @property
    def call(self) -> dict[str, Any]:
        """The call-hook body of this call (its call fields)."""
        if self._call is None:
            def mine(reqs: list[HookRequest]) -> bool:
                return any(r.path == CALL and r.json and r.json.get("from") == self.name
                           for r in reqs)
            reqs = self.hooks.wait_for(mine, timeout=15)
            self._call = next(r.json for r in reqs if r.path == CALL and r.json
                              and r.json.get("from") == self.name)
        return self._call

    @property
    def sid(self) -> str:
        return str(self.call["call_sid"])

    def hang_up(self) -> None:
        """Make this caller (uac_hangup_on_info) send BYE now."""
        call_id = self.call["call_id"]
        msg = (
            f"INFO sip:{self.name}@{HOST}:{self.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:9;branch=z9hG4bK-e2e-{uuid.uuid4().hex}\r\n"
            f"From: <sip:e2e-test@{HOST}>;tag=e2e-trigger\r\n"
            f"To: <sip:{self.name}@{HOST}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 INFO\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(msg.encode(), (HOST, self.sip_port))

    def done(self, timeout: float | None = None) -> SippResult:
        res = self.run.wait(timeout)
        assert res.ok(), f"caller {self.name}: {res.describe()}"
        return res


@dataclass
class Env:
    srv: ConfroomProcess
    hooks: HookApp
    sipp: SippRunner
    peers: Callable[[], RtpPeer]
    callers: list[Caller] = field(default_factory=list)

    def dial(self, name: str, scenario: str = HANGUP_ON_INFO, timeout: float = 40.0,
             keys: Mapping[str, str] | None = None, **kw: Any) -> Caller:
        peer = self.peers()
        port = free_sip_port()
        run = self.sipp.start(scenario, self.srv.target, local_port=port, timeout=timeout,
                              keys={"rtp_port": peer.port, "from_user": name, **(keys or {})},
                              **kw)
        caller = Caller(name, peer, run, port, self.hooks)
        self.callers.append(caller)
        return caller

    # -- log ---------------------------------------------------------------------------

    def join(self, conf: str, caller: Caller, timeout: float = 15) -> re.Match[str]:
        return self.srv.wait_log(
            rf"conference join name={re.escape(conf)} call_sid={re.escape(caller.sid)} ",
            timeout=timeout)

    def leave(self, conf: str, caller: Caller, timeout: float = 15) -> re.Match[str]:
        return self.srv.wait_log(
            rf"conference leave name={re.escape(conf)} call_sid={re.escape(caller.sid)} ",
            timeout=timeout)

    def end(self, conf: str, timeout: float = 15) -> re.Match[str]:
        return self.srv.wait_log(rf"conference end name={re.escape(conf)} ", timeout=timeout)

    # -- status hook -------------------------------------------------------------------

    def events(self, path: str = STATUS) -> list[dict[str, Any]]:
        return [r.json for r in self.hooks.received(path)]

    def wait_event(self, event: str, caller: Caller | None = None, path: str = STATUS,
                   count: int = 1, timeout: float = 15) -> list[HookRequest]:
        def match(r: HookRequest) -> bool:
            return (r.path == path and isinstance(r.json, dict) and r.json.get("event") == event
                    and (caller is None or r.json.get("call_sid") == caller.sid))
        reqs = self.hooks.wait_for(lambda rs: sum(map(match, rs)) >= count, timeout=timeout)
        return [r for r in reqs if match(r)]


@pytest.fixture
def env(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
        rtp_peer_factory: Callable[[], RtpPeer]) -> Callable[..., Env]:
    """env(**confroom kwargs) -> an Env whose server's call hook is the HookApp's /call."""
    def make(**kw: Any) -> Env:
        srv = confroom(hook_app.url(CALL), **kw)
        return Env(srv, hook_app, sipp, rtp_peer_factory)
    return make


# ------------------------------------------------------------------------------- log time

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_time(m: re.Match[str]) -> float:
    """When the server wrote that log line, on this process's time.monotonic() clock."""
    stamp = _LOG_TIME.match(m.string)
    assert stamp, f"no timestamp at the start of the log line {m.string!r}"
    wall = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return wall - time.time() + time.monotonic()


# ------------------------------------------------------------------------------- audio


def audio(peer: RtpPeer, t0: float | None = None, t1: float | None = None) -> list[RtpPacket]:
    """Received G.711 packets that arrived within [t0, t1]."""
    return [p for p in peer.packets((0, 8))
            if (t0 is None or p.arrival >= t0) and (t1 is None or p.arrival <= t1)]


def pcm_of(pkts: Iterable[RtpPacket]) -> Int16Array:
    chunks = [g711_decode(p.payload, p.payload_type) for p in pkts]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def tone_times(peer: RtpPeer, freq: float, t0: float | None = None, t1: float | None = None,
               *, min_rms: float = 200.0, share: float = 0.3) -> list[float]:
    """Arrival times of the 20 ms packets in which `freq` carries >= `share` of the energy."""
    out = []
    for p in audio(peer, t0, t1):
        pcm = g711_decode(p.payload, p.payload_type)
        if rms(pcm) >= min_rms and tone_power(pcm, freq, bandwidth=60) >= share:
            out.append(p.arrival)
    return out


def hears(peer: RtpPeer, t0: float, t1: float) -> Int16Array:
    pcm = pcm_of(audio(peer, t0, t1))
    assert len(pcm) >= 0.8 * (t1 - t0) * 8000, (
        f"only {len(pcm) / 8000:.2f}s of audio received in a {t1 - t0:.2f}s window")
    return pcm


def wait_received_until(peer: RtpPeer, t: float, timeout: float = 10.0) -> None:
    """Wait until this peer has received a packet that arrived at or after `t`."""
    deadline = time.monotonic() + timeout
    while True:
        pkts = peer.packets()
        if pkts and pkts[-1].arrival >= t:
            return
        left = deadline - time.monotonic()
        assert left > 0, f"RtpPeer {peer.address}: no packet arrived after t={t:.2f}"
        peer.wait_packets(len(pkts) + 1, timeout=left)


class Sender:
    """Streams a loop of `chunk` (8 kHz PCM, whole 20 ms frames) to `to` until stopped."""

    def __init__(self, peer: RtpPeer, to: tuple[str, int], chunk: Int16Array) -> None:
        self._stop = threading.Event()
        self.peer, self.to, self.chunk = peer, to, chunk
        self.last_sent = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peer.send_pcm(self.chunk, self.to)
            self.last_sent = time.monotonic()

    def stop(self) -> float:
        """Stop and return when the last packet was sent."""
        self._stop.set()
        self._thread.join(timeout=5)
        return self.last_sent


def send_tone_until_stopped(caller: Caller, freq: float, amplitude: float = 0.2) -> Sender:
    # 0.2 s chunks: a whole number of periods for every frequency used here (no phase jumps)
    return Sender(caller.peer, caller.addr, tone(freq, 0.2, amplitude=amplitude))


# ------------------------------------------------------------------------------- schemas

# Which jambonz callback schema each conference hook body must validate against. The enterHook
# is a wait-style hook (it returns play/say/pause verbs, body = call fields + conference).
HOOK_SCHEMAS = {STATUS: "conference-status", WAIT: "conference-wait",
                ENTER: "conference-wait", ACTION: "conference"}


def validate_callback(body: Any, schema_name: str, without: Iterable[str] = ()) -> None:
    errors = schema_errors(schema_name, body, without)
    assert not errors, (f"body does not validate against callbacks/{schema_name}: "
                        + "; ".join(errors) + f"\nbody: {body}")


def check_hook_schemas(hooks: HookApp, paths: Mapping[str, str] | None = None) -> int:
    """Validate every conference hook body received so far; returns how many were checked."""
    n = 0
    for path, schema_name in (paths or HOOK_SCHEMAS).items():
        for req in hooks.received(path):
            body = req.json
            assert isinstance(body, dict), f"{path}: body is not a JSON object: {req.raw!r}"
            without: tuple[str, ...] = ()
            if schema_name == "conference-status" and body.get("event") == "end-talking":
                # The seed's alias: the schema's `event` enum knows stop-talking but not
                # end-talking (spec 3.4 says to send the name the app asked for), so this one
                # body is validated with its `event` field excluded (from body and schema).
                without = ("event",)
            validate_callback(body, schema_name, without)
            n += 1
    return n


def assert_conference_fields(body: dict[str, Any], name: str, sid: str | None = None) -> None:
    assert body.get("conference_sid") == body.get("conferenceSid"), body
    assert isinstance(body["conference_sid"], str) and body["conference_sid"], body
    assert body.get("friendly_name") == body.get("friendlyName") == name, body
    if sid is not None:
        assert body["conference_sid"] == sid, body


def assert_call_fields_of(body: dict[str, Any], caller: Caller) -> None:
    """The body's call fields are those of `caller` (as in its call-hook request)."""
    for k in CALL_FIELDS:
        assert body.get(k) == caller.call.get(k), (
            f"{k}: {body.get(k)!r} in the body, {caller.call.get(k)!r} in {caller.name}'s call "
            f"hook\nbody: {body}")
    assert body["account_sid"] == ACCOUNT_SID and body["application_sid"] == APPLICATION_SID


# =============================================================================== tests


def test_three_callers_hear_each_other_but_not_themselves(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    hook_app.route("/call", [{"verb": "conference", "name": "tones"}])
    srv = confroom(hook_app.url("/call"))
    freqs = [440.0, 1000.0, 2200.0]
    peers = [rtp_peer_factory() for _ in freqs]
    runs = [
        sipp.start("uac_basic", srv.target, keys={"rtp_port": p.port}, pause_ms=9000,
                   timeout=40)
        for p in peers
    ]
    addrs = [server_addr(p) for p in peers]
    srv.wait_log(r"conference join .*members=3", timeout=15)
    t0 = max(p.packets()[-1].arrival for p in peers)
    senders = [p.send_tone_async(f, 4.0, a, amplitude=0.2) for p, f, a in zip(peers, freqs, addrs,
                                                                             strict=True)]
    for s in senders:
        s.join(timeout=10)
    for r in runs:
        res = r.wait()
        assert res.ok(), res.describe()
    for i, (peer, own) in enumerate(zip(peers, freqs, strict=True)):
        pcm = peer.decoded_pcm(since=t0 + 0.5)[: 3 * 8000]
        assert len(pcm) >= 2 * 8000, f"caller {i}: only {len(pcm) / 8000:.1f}s received"
        others = [f for f in freqs if f != own]
        for f in others:
            assert tone_power(pcm, f) > 0.2, f"caller {i} does not hear {f} Hz"
        assert tone_power(pcm, own) < 0.01, f"caller {i} hears itself ({own} Hz)"
        assert np.max(np.abs(pcm.astype(np.int32))) < 32767


# ------------------------------------------------------------------------------- 1: race


def test_eight_simultaneous_callers_start_exactly_one_conference(
    env: Callable[..., Env], hook_app: HookApp
) -> None:
    n, name = 8, "race"
    verbs = conference(name, statusHook=STATUS, statusEvents=["start", "join", "leave", "end"])

    class Barrier:
        """Holds every call-hook answer until all n call hooks have arrived: the n conference
        verbs then start within the same instant."""

        def __init__(self) -> None:
            self.count = 0
            self.all_in: asyncio.Event | None = None

        async def __call__(self, req: HookRequest) -> list[dict[str, Any]]:
            if self.all_in is None:
                self.all_in = asyncio.Event()
            self.count += 1
            if self.count >= n:
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), timeout=8)
            return verbs

    hook_app.route(CALL, Barrier())
    hook_app.route(STATUS, 200)
    e = env()
    peer = e.peers()
    run = e.sipp.start("uac_basic", e.srv.target, calls=n, rate=1000, limit=n, pause_ms=1500,
                       keys={"rtp_port": peer.port, "from_user": "racer"}, timeout=40)
    joins = e.srv.wait_logs(rf"conference join name={name} ", n, timeout=20)
    res = run.wait()
    assert res.ok(n), res.describe()
    e.end(name)
    e.wait_event("end")

    starts = e.srv.find_logs(r"conference start ")
    assert len(starts) == 1, [m.string for m in starts]
    start = parse_kv(starts[0].string)
    assert start["name"] == name
    sids = {r.json["call_sid"] for r in hook_app.received(CALL)}
    assert len(sids) == n
    assert {parse_kv(m.string)["call_sid"] for m in joins} == sids
    assert start["call_sid"] in sids
    assert len(e.srv.find_logs(r"conference join ")) == n
    assert len(e.srv.find_logs(r"conference end ")) == 1

    events = e.events()
    kinds = [b["event"] for b in events]
    assert kinds.count("start") == 1 and kinds.count("end") == 1, kinds
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    assert {b["conference_sid"] for b in events} == {start["sid"]}
    join_events = [b for b in events if b["event"] == "join"]
    assert sorted(b["call_sid"] for b in join_events) == sorted(sids)
    assert [b["members"] for b in join_events] == list(range(1, n + 1))
    assert check_hook_schemas(hook_app) == len(events)


# ------------------------------------------------------------------------------- 2: waiting


def test_waiters_hear_wait_hook_until_the_moderator_starts_the_conference(
    env: Callable[..., Env], hook_app: HookApp
) -> None:
    name = "moderated"
    waiter = conference(name, startConferenceOnEnter=False, waitHook=WAIT)
    hook_app.route(CALL, per_caller({
        "waiter1": waiter, "waiter2": waiter,
        "mod": conference(name, startConferenceOnEnter=True, endConferenceOnExit=True),
    }))
    e = env(prepare=lambda s: write_tone_wav(s.media_dir / "wait600.wav", 600, 1.0,
                                             amplitude=0.4))
    hook_app.route(WAIT, [{"verb": "play", "url": str(e.srv.media_dir / "wait600.wav")}])
    waiters = [e.dial(w, WAIT_BYE) for w in ("waiter1", "waiter2")]
    for w in waiters:
        e.srv.wait_log(rf"conference {name}: call_sid={w.sid} waits for it to start")

    # the wait loop: the waitHook is fetched again after its play (>= 2 rounds per waiter)
    def two_rounds_each(reqs: list[HookRequest]) -> bool:
        return all(sum(1 for r in reqs if r.path == WAIT and r.json["call_sid"] == w.sid) >= 2
                   for w in waiters)
    hook_app.wait_for(two_rounds_each, timeout=10)
    for w in waiters:
        wait600 = tone_times(w.peer, 600, share=0.8)
        assert len(wait600) >= 40, f"{w.name}: only {len(wait600) * 20} ms of the 600 Hz wait"
    assert not e.srv.find_logs(r"conference (start|join) "), "a waiter started/joined"

    mod = e.dial("mod")
    e.srv.wait_log(rf"conference start name={name} sid=\S+ by call_sid={mod.sid}")
    joined = {w.name: log_time(e.join(name, w)) for w in waiters}
    sender = send_tone_until_stopped(mod, 1000)
    t_tone = max(joined.values()) + 0.3  # the moderator's tone is on its way by then
    for w in waiters:
        wait_received_until(w.peer, t_tone + 1.0)
    sender.stop()
    for w in waiters:
        pcm = hears(w.peer, t_tone, t_tone + 1.0)
        assert tone_power(pcm, 1000) > 0.5, f"{w.name} does not hear the moderator (1000 Hz)"
        late = tone_times(w.peer, 600, joined[w.name] + 0.1)
        assert not late, f"{w.name} still hears the waitHook's 600 Hz {len(late)} packet(s) " \
                         f"after joining"
        # a waiter is not mixed: nothing of the conference reaches it before it joined
        assert not tone_times(w.peer, 1000, None, joined[w.name] - 0.05)

    mod.hang_up()
    mod.done()
    e.end(name)
    for w in waiters:  # the conference ended; no actionHook, no next verb: hung up
        w.done()
        assert parse_kv(e.leave(name, w).string)["reason"] == "ended"
    for r in hook_app.received(WAIT):
        assert r.json["friendly_name"] == name
        assert r.json["call_sid"] in {w.sid for w in waiters}
    assert check_hook_schemas(hook_app) >= 4


# ------------------------------------------------------------------------------- 3: end on exit


@pytest.mark.parametrize("end_duration", [0, 2], ids=["at-once", "endConferenceDuration-2"])
def test_moderator_leaving_ends_the_conference(
    env: Callable[..., Env], hook_app: HookApp, end_duration: int
) -> None:
    name = "ends"
    mod_attrs: dict[str, Any] = {"endConferenceOnExit": True}
    if end_duration:
        mod_attrs["endConferenceDuration"] = end_duration
    member = conference(name, actionHook=ACTION)
    hook_app.route(CALL, per_caller({"mod": conference(name, **mod_attrs),
                                     "m1": member, "m2": member}))
    hook_app.route(ACTION, [{"verb": "hangup"}])
    e = env()
    mod = e.dial("mod")
    e.join(name, mod)
    members = [e.dial(m, WAIT_BYE) for m in ("m1", "m2")]
    for m in members:
        e.join(name, m)
    sid = parse_kv(e.srv.find_logs(rf"conference start name={name} ")[0].string)["sid"]

    mod.hang_up()
    mod.done()
    left = log_time(e.leave(name, mod))
    end = e.end(name)
    ended = log_time(end)
    assert parse_kv(end.string)["sid"] == sid
    actions = hook_app.wait_requests(ACTION, 2, timeout=10)
    for m in members:
        m.done()  # the actionHook's hangup: the server sent BYE
        assert parse_kv(e.leave(name, m).string)["reason"] == "ended"
    if end_duration:
        assert ended - left >= end_duration - 0.1, (
            f"conference ended {ended - left:.3f}s after the moderator left, "
            f"endConferenceDuration is {end_duration}")
        assert ended - left < end_duration + 1.5
        assert min(r.time for r in actions) - left >= end_duration - 0.1
    else:
        assert ended - left < 1.0, f"ended {ended - left:.3f}s after the moderator left"

    assert sorted(r.json["call_sid"] for r in actions) == sorted(m.sid for m in members)
    for r in actions:
        assert r.json["conference_result"] == "ended", r.json
        assert_conference_fields(r.json, name, sid)
        assert isinstance(r.json["duration"], int) and r.json["duration"] >= 0
        assert_call_fields_of(r.json, next(m for m in members if m.sid == r.json["call_sid"]))
    assert check_hook_schemas(hook_app) == 2


# ------------------------------------------------------------------------------- 4: full


def test_max_participants_turns_the_third_caller_away(
    env: Callable[..., Env], hook_app: HookApp
) -> None:
    name = "small"
    hook_app.route(CALL, [{"verb": "conference", "name": name, "maxParticipants": 2,
                           "actionHook": ACTION}])
    hook_app.route(ACTION, [{"verb": "hangup"}])
    e = env()
    a, b = e.dial("alice"), e.dial("bob")
    e.srv.wait_log(rf"conference join name={name} .*members=2")
    tones = {a.name: 440, b.name: 1500}
    senders = [send_tone_until_stopped(c, tones[c.name]) for c in (a, b)]

    c = e.dial("carol", WAIT_BYE)
    e.srv.wait_log(rf"conference {name} is full: call_sid={c.sid} not admitted")
    (action,) = hook_app.wait_requests(ACTION, 1)
    c.done()  # the actionHook's hangup
    assert action.json["call_sid"] == c.sid
    assert action.json["conference_result"] == "full", action.json
    assert_conference_fields(action.json, name)
    assert_call_fields_of(action.json, c)

    # the first two are still in and still hear each other
    t0 = time.monotonic()
    for x in (a, b):
        wait_received_until(x.peer, t0 + 1.0)
    for s in senders:
        s.stop()
    assert tone_power(hears(a.peer, t0, t0 + 1.0), 1500) > 0.5, "alice no longer hears bob"
    assert tone_power(hears(b.peer, t0, t0 + 1.0), 440) > 0.5, "bob no longer hears alice"
    assert not e.srv.find_logs(r"conference leave "), "a member left when carol was refused"
    assert len(e.srv.find_logs(r"conference join ")) == 2
    # carol was answered, then refused: nothing of the conference reaches her
    assert not tone_times(c.peer, 440) and not tone_times(c.peer, 1500), \
        "carol (not admitted) hears the conference"

    for x in (a, b):
        x.hang_up()
        x.done()
    e.end(name)
    assert check_hook_schemas(hook_app) == 1


# ------------------------------------------------------------------------------- 5: enterHook


def test_enter_hook_is_played_to_the_joiner_only_before_it_joins(
    env: Callable[..., Env], hook_app: HookApp
) -> None:
    name = "entering"
    hook_app.route(CALL, per_caller({"alice": conference(name),
                                     "bob": conference(name, enterHook=ENTER)}))
    e = env(prepare=lambda s: write_tone_wav(s.media_dir / "enter700.wav", 700, 1.0,
                                             amplitude=0.4))
    hook_app.route(ENTER, [{"verb": "play", "url": str(e.srv.media_dir / "enter700.wav")}])
    a = e.dial("alice")
    e.join(name, a)
    sender = send_tone_until_stopped(a, 440)
    b = e.dial("bob")
    joined = log_time(e.join(name, b, timeout=20))
    wait_received_until(b.peer, joined + 1.2)
    wait_received_until(a.peer, joined + 1.2)
    sender.stop()

    (enter,) = hook_app.received(ENTER)
    assert enter.time < joined
    assert enter.json["call_sid"] == b.sid
    assert_conference_fields(enter.json, name)
    greeting = tone_times(b.peer, 700, share=0.8)
    assert len(greeting) >= 40, f"bob got only {len(greeting) * 20} ms of the 700 Hz enterHook"
    assert max(greeting) <= joined + 0.06, (
        f"700 Hz reached bob {max(greeting) - joined:.3f}s after his 'conference join'")
    # bob is not in the mix while his enterHook plays, and is afterwards
    assert not tone_times(b.peer, 440, None, joined - 0.05), "bob heard alice before joining"
    assert tone_power(hears(b.peer, joined + 0.2, joined + 1.2), 440) > 0.5, \
        "bob does not hear alice after joining"
    assert not tone_times(a.peer, 700), "alice heard bob's enterHook"

    for x in (a, b):
        x.hang_up()
        x.done()
    e.end(name)
    assert check_hook_schemas(hook_app) == 1


# ------------------------------------------------------------------------------- 6: beep


def test_beep_when_a_member_joins(env: Callable[..., Env], hook_app: HookApp) -> None:
    name = "beeps"
    hook_app.route(CALL, per_caller({"alice": conference(name), "bob": conference(name),
                                     "carol": conference(name, beep=True)}))
    e = env()
    a, b = e.dial("alice"), e.dial("bob")
    e.srv.wait_log(rf"conference join name={name} .*members=2")
    c = e.dial("carol")
    joined = log_time(e.join(name, c))
    for x in (a, b):
        wait_received_until(x.peer, joined + 1.0)
        beep = tone_times(x.peer, 1000, min_rms=1000, share=0.5)
        assert beep, f"{x.name} heard no 1 kHz beep when carol joined"
        assert joined - 0.1 <= beep[0] <= joined + 0.3, (
            f"{x.name}: the beep starts {beep[0] - joined:+.3f}s from carol's join")
        assert 0.14 <= len(beep) * 0.02 <= 0.26, f"{x.name}: beep lasts {len(beep) * 20} ms"
        assert beep[-1] - beep[0] <= 0.3, f"{x.name}: the 1 kHz is not one short beep"
        assert abs(rms(pcm_of(audio(x.peer, beep[0], beep[-1]))) - 0.25 * 32767 / np.sqrt(2)) \
            < 0.4 * 0.25 * 32767 / np.sqrt(2), f"{x.name}: beep level off"
    for x in (a, b, c):
        x.hang_up()
        x.done()
    e.end(name)


# ------------------------------------------------------------------------------- 7: status


def test_status_events_sequence_and_payload(env: Callable[..., Env], hook_app: HookApp) -> None:
    name = "statusroom"
    hook_app.route(CALL, conference(name, statusHook=STATUS,
                                    statusEvents=["start", "join", "leave", "end"]))
    hook_app.route(STATUS, 200)
    e = env()
    a = e.dial("alice")
    e.join(name, a)
    b = e.dial("bob")
    e.join(name, b)
    e.wait_event("join", b)
    b.hang_up()
    b.done()
    e.wait_event("leave", b)
    a.hang_up()
    a.done()
    e.wait_event("end")
    e.end(name)

    reqs = hook_app.received(STATUS)
    bodies = [r.json for r in reqs]
    got = [(x["event"], x["members"]) for x in bodies]
    # members = current member count: start counts the starter; join counts the joiner; leave
    # no longer counts the leaver; end: nobody is left
    assert got == [("start", 1), ("join", 1), ("join", 2), ("leave", 1), ("leave", 0),
                   ("end", 0)], got
    sid = parse_kv(e.srv.find_logs(rf"conference start name={name} ")[0].string)["sid"]
    now_wall = time.time()
    prev_duration, prev_time = 0, ""
    for x in bodies:
        assert_conference_fields(x, name, sid)
        assert ISO_MS_UTC.match(x["time"]), f"time {x['time']!r} is not like " \
                                            "2020-04-27T13:44:17.336Z"
        stamp = datetime.fromisoformat(x["time"].replace("Z", "+00:00")).timestamp()
        assert now_wall - 30 < stamp <= now_wall + 1, f"time {x['time']} is not now (UTC)"
        assert x["time"] >= prev_time, "events' times go backwards"
        assert isinstance(x["duration"], int) and not isinstance(x["duration"], bool)
        assert x["duration"] >= prev_duration >= 0, x
        prev_duration, prev_time = x["duration"], x["time"]
        assert isinstance(x["members"], int)
    who = [a, a, b, b, a]
    for x, caller in zip(bodies, who, strict=False):
        assert_call_fields_of(x, caller)
    # end: the call fields of the member concerned, i.e. the last one, whose leaving ended it
    assert bodies[-1].get("call_sid") == a.sid, (
        f"the 'end' event carries no/other call fields: {bodies[-1]}")
    assert_call_fields_of(bodies[-1], a)
    assert check_hook_schemas(hook_app) == 6


# ------------------------------------------------------------------------------- 8: schemas


def test_every_conference_hook_body_validates_against_the_jambonz_schemas(
    env: Callable[..., Env], hook_app: HookApp
) -> None:
    name = "schemas"
    hook_app.route(CALL, per_caller({
        "waiter": conference(name, startConferenceOnEnter=False, waitHook=WAIT,
                             enterHook=ENTER, actionHook=ACTION),
        "mod": conference(name, endConferenceOnExit=True, statusHook=STATUS,
                          statusEvents=["start", "end", "join", "leave", "start-talking",
                                        "stop-talking"]),
    }))
    hook_app.route(WAIT, [{"verb": "pause", "length": 0.3}])
    hook_app.route(ENTER, [{"verb": "pause", "length": 0.2}])
    hook_app.route(ACTION, [{"verb": "hangup"}])
    hook_app.route(STATUS, 200)
    e = env()
    w = e.dial("waiter", WAIT_BYE)
    hook_app.wait_requests(WAIT, 2)
    mod = e.dial("mod")
    e.join(name, w)
    e.wait_event("join", w)
    mod.hang_up()
    mod.done()
    w.done()
    e.wait_event("end")
    seen = {path: len(hook_app.received(path)) for path in HOOK_SCHEMAS}
    assert all(seen.values()), f"not every hook kind was called: {seen}"
    assert check_hook_schemas(hook_app) == sum(seen.values())
    (action,) = hook_app.received(ACTION)
    assert action.json["conference_result"] == "ended"


# ------------------------------------------------------------------------------- 9: talking


@pytest.mark.parametrize("stop_name", ["stop-talking", "end-talking"])
def test_talking_events_for_speech_not_for_noise(
    env: Callable[..., Env], hook_app: HookApp, tmp_path: Path, stop_name: str
) -> None:
    name = "talkers"
    speech = speech_pcm(tmp_path, "The quick brown fox jumps over the lazy dog "
                                  "and then runs back home")
    assert 3.0 <= len(speech) / 8000 <= 6.0, f"speech is {len(speech) / 8000:.1f}s long"
    noise = np.clip(np.random.default_rng(7).normal(0, 32768 * 10 ** (-30 / 20), len(speech)),
                    -32768, 32767).astype(np.int16)
    hook_app.route(CALL, conference(name, statusHook=STATUS,
                                    statusEvents=["start-talking", stop_name]))
    hook_app.route(STATUS, 200)
    e = env()
    a, b = e.dial("alice"), e.dial("bob")
    e.srv.wait_log(rf"conference join name={name} .*members=2")
    silence = np.zeros(int(1.5 * 8000), dtype=np.int16)
    results: dict[str, tuple[float, float]] = {}

    def talk(who: Caller, pcm: Int16Array) -> None:
        t0 = time.monotonic()
        who.peer.send_pcm(pcm, who.addr)
        results[who.name] = (t0, time.monotonic())
        who.peer.send_pcm(silence, who.addr)  # then silence (not no RTP at all)

    threads = [threading.Thread(target=talk, args=(x, p)) for x, p in ((a, speech), (b, noise))]
    for t in threads:
        t.start()
    stop = e.wait_event(stop_name, a, timeout=15)[0]
    for t in threads:
        t.join(timeout=10)
    speech_start, speech_end = results["alice"]
    for x in (a, b):
        x.hang_up()
        x.done()
    e.end(name)

    bodies = e.events()
    mine = [x for x in bodies if x["call_sid"] == a.sid]
    assert [x["event"] for x in mine] == ["start-talking", stop_name], mine
    start = next(r for r in hook_app.received(STATUS) if r.json["event"] == "start-talking")
    assert speech_start + 0.15 < start.time < speech_end, (
        f"start-talking {start.time - speech_start:.2f}s into {speech_end - speech_start:.2f}s "
        "of speech")
    assert stop.time > speech_end + 0.3, (
        f"{stop_name} {stop.time - speech_end:+.2f}s from the end of the speech")
    assert not [x for x in bodies if x["call_sid"] == b.sid], \
        f"white noise counted as talking: {[x for x in bodies if x['call_sid'] == b.sid]}"
    for x in mine:
        assert_call_fields_of(x, a)
        assert_conference_fields(x, name)
    assert check_hook_schemas(hook_app) == 2


# ------------------------------------------------------------------------------- 10: hang-up


def test_member_hanging_up_leaves_the_others_talking(
    env: Callable[..., Env], hook_app: HookApp
) -> None:
    name = "threesome"
    hook_app.route(CALL, conference(name, statusHook=STATUS,
                                    statusEvents=["start", "join", "leave", "end"]))
    hook_app.route(STATUS, 200)
    e = env()
    a, b, c = (e.dial(n) for n in ("alice", "bob", "carol"))
    e.srv.wait_log(rf"conference join name={name} .*members=3")
    freqs = {"alice": 440, "bob": 1000, "carol": 2200}
    senders = {x.name: send_tone_until_stopped(x, freqs[x.name]) for x in (a, b, c)}

    c.hang_up()
    c.done()
    senders["carol"].stop()
    left = log_time(e.leave(name, c))
    (leave,) = e.wait_event("leave", c)
    assert leave.json["members"] == 2, leave.json
    assert_call_fields_of(leave.json, c)
    t0 = max(left, time.monotonic()) + 0.1
    for x in (a, b):
        wait_received_until(x.peer, t0 + 1.0)
    for s in ("alice", "bob"):
        senders[s].stop()
    pa, pb = hears(a.peer, t0, t0 + 1.0), hears(b.peer, t0, t0 + 1.0)
    assert tone_power(pa, 1000) > 0.5, "alice no longer hears bob"
    assert tone_power(pb, 440) > 0.5, "bob no longer hears alice"
    assert tone_power(pa, 2200) < 0.01 and tone_power(pb, 2200) < 0.01, "carol is still heard"
    assert not e.srv.find_logs(r"conference end "), "the conference ended with 2 members in"

    for x in (a, b):
        x.hang_up()
        x.done()
    e.wait_event("end")
    e.end(name)
    # (the end event's call fields are checked in test_status_events_sequence_and_payload)
    got = [(x["event"], x["members"], x.get("call_sid")) for x in e.events()]
    leaves = [g for g in got if g[0] == "leave"]
    assert [(ev, n) for ev, n, _ in leaves] == [("leave", 2), ("leave", 1), ("leave", 0)], got
    assert {s for _, _, s in leaves} == {a.sid, b.sid, c.sid}
    assert [g[0] for g in got].count("end") == 1 and got[-1][0] == "end", got
    assert check_hook_schemas(hook_app) == len(got)


# ------------------------------------------------------------------------------- 11: timeout


def test_rtp_timeout_ends_a_silent_members_call(
    env: Callable[..., Env], hook_app: HookApp
) -> None:
    name = "timeouts"
    hook_app.route(CALL, conference(name, statusHook=STATUS,
                                    statusEvents=["start", "join", "leave", "end"]))
    hook_app.route(STATUS, 200)
    e = env(rtp_timeout=2)
    a, b, c = (e.dial(n, WAIT_BYE) for n in ("alice", "bob", "carol"))
    # everyone sends from its first server packet on (the timeout runs from the answer)
    senders = {x.name: send_tone_until_stopped(x, f)
               for x, f in ((a, 440), (b, 1000), (c, 2200))}
    e.srv.wait_log(rf"conference join name={name} .*members=3")
    a_last = senders["alice"].stop()  # alice's RTP stops; bob and carol keep sending

    end_a = e.srv.wait_log(rf"call end call_sid={a.sid} ", timeout=10)
    a.done()  # alice got the server's BYE
    assert parse_kv(end_a.string)["reason"] == "rtp-timeout", end_a.string
    waited = log_time(end_a) - a_last
    assert 1.9 <= waited <= 3.5, f"alice's call ended {waited:.2f}s after her last RTP packet"
    (leave,) = e.wait_event("leave", a)
    assert leave.json["members"] == 2, leave.json
    left = log_time(e.leave(name, a))
    assert not e.srv.find_logs(r"conference end "), "the conference ended with 2 members in"
    t0 = max(left, time.monotonic()) + 0.1
    wait_received_until(b.peer, t0 + 0.6)
    assert tone_power(hears(b.peer, t0, t0 + 0.6), 2200) > 0.5, "bob no longer hears carol"
    assert [x.name for x in (b, c) if x.run.poll() is not None] == []

    for s in ("bob", "carol"):  # now everyone is silent: both calls time out, the conf ends
        senders[s].stop()
    for x in (b, c):
        x.done()
        end_x = e.srv.wait_log(rf"call end call_sid={x.sid} ", timeout=10)
        assert parse_kv(end_x.string)["reason"] == "rtp-timeout", end_x.string
    e.wait_event("end")
    e.end(name)
    got = [(x["event"], x["members"]) for x in e.events()]
    assert got[-4:] == [("leave", 2), ("leave", 1), ("leave", 0), ("end", 0)], got
    assert check_hook_schemas(hook_app) == len(got)


# ------------------------------------------------------------------------------- memory


def test_ended_calls_and_conference_leave_no_reference_cycles(
    env: Callable[..., Env], hook_app: HookApp
) -> None:
    """A full garbage-collector pass stops the media clock for a time that grows with every
    object alive, so ended calls must be freed by reference counting: after three callers
    have been in a conference (with a beep and a wait) and hung up, the server's SIGUSR1 GC
    report finds none of confroom's objects among the cyclic garbage."""
    name = "tidy"
    hook_app.route(CALL, [{"verb": "say", "text": "hi"},
                          {"verb": "conference", "name": name, "beep": True,
                           "statusHook": STATUS, "statusEvents": ["end"]}])
    hook_app.route(STATUS, 200)
    e = env()
    callers = [e.dial(n) for n in ("ann", "ben", "cat")]
    e.srv.wait_log(rf"conference join name={name} .*members=3")
    for c in callers:
        c.hang_up()
        c.done()
    e.end(name)
    e.wait_event("end")
    for c in callers:
        e.srv.wait_log(rf"call end call_sid={re.escape(c.sid)} ")
    os.kill(e.srv.pid, signal.SIGUSR1)
    report = e.srv.wait_log(r"gc: tracked=\d+ frozen=(\d+) garbage=\d+ confroom_garbage=(\d+)")
    assert int(report.group(1)) > 10_000, "start-up objects were not frozen"
    assert int(report.group(2)) == 0, f"ended calls left cycles: {report.string}"
