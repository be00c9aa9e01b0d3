"""jambonz WebSocket apps end to end: real SIPp calls into confroom, whose call hook is a ws://
URL served by an app written with an UNMODIFIED jambonz SDK running as a separate process
(`@jambonz/sdk` from npm under Node.js, or `jambonz-python-sdk`'s websocket endpoint; wss://
with a certificate from a CA made by the test). Audio is checked on the wire by FFT."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from harness import (
    HOST,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    RtpPeer,
    SippRunner,
    WsAppProcess,
    tone_power,
    write_tone_wav,
)
from test_control import MARGIN, dial, hears, silent_at, window

pytestmark = pytest.mark.e2e

STATUS = {"statusHook": "/status",
          "statusEvents": ["join", "leave", "mute", "unmute", "hold", "unhold"]}


@pytest.fixture
def ws_apps() -> Iterator[Callable[..., WsAppProcess]]:
    apps: list[WsAppProcess] = []

    def make(kind: str, spec: dict[str, Any]) -> WsAppProcess:
        app = WsAppProcess(kind, spec)
        apps.append(app)
        return app.start()

    yield make
    for app in apps:
        app.close()


def status_events(app: WsAppProcess) -> list[tuple[str, str]]:
    return [(e["data"]["event"], e["data"]["call_sid"]) for e in app.events("hook")
            if e["hook"] == "/status"]


def command(srv: ConfroomProcess, app: WsAppProcess, call_sid: str, name: str,
            data: Any) -> tuple[float, float]:
    """Send a command from the app; (sent, done) monotonic times (done: confroom logged it)."""
    mark = srv.mark()
    sent = time.monotonic()
    app.command(call_sid, name, data)
    srv.wait_log(rf"call_sid={call_sid}: ws command {name} done", since=mark)
    return sent, time.monotonic()


def test_node_sdk_conference_status_events_and_conf_mute(
    confroom: ConfroomFactory, sipp: SippRunner, ws_apps: Callable[..., WsAppProcess],
    rtp_peer_factory: Callable[[], RtpPeer], hook_app: HookApp,
) -> None:
    """@jambonz/sdk app: session:new answered with a conference, the conference's statusHook
    events arrive over the socket, `conf:mute-status` mutes the non-moderator (bob): alice no
    longer hears bob's tone, bob still hears alice's. The app's call-status hook is an absolute
    http URL: call status goes there by HTTP, not over the socket (mixed hooks)."""
    conf = {"verb": "conference", "name": "node-room", **STATUS}
    app = ws_apps("node", {"verbs": {"alice": [{**conf, "startConferenceOnEnter": True}],
                                     "*": [conf]}})
    hook_app.route("/cs", [])
    srv = confroom(app.url, call_status_hook=hook_app.url("/cs"))
    peers = {"alice": rtp_peer_factory(), "bob": rtp_peer_factory()}
    runs, addrs = dial(sipp, srv, peers, pause_ms=8000)
    srv.wait_log(r"conference join .*members=2", timeout=15)
    sids = app.sessions(n=2)
    t0 = time.monotonic()
    senders = [peers["alice"].send_tone_async(440.0, 6.0, addrs["alice"], amplitude=0.2),
               peers["bob"].send_tone_async(1000.0, 6.0, addrs["bob"], amplitude=0.2)]
    time.sleep(2.0)
    mute_sent, muted_at = command(srv, app, sids["alice"], "conf:mute-status",
                                  {"conf_mute_status": "mute"})
    for s in senders:
        s.join(timeout=15)
    for r in runs:
        res = r.wait()
        assert res.ok(), res.describe()
    t_end = t0 + 5.8
    alice, bob = peers["alice"], peers["bob"]
    assert hears(window(alice, t0 + MARGIN, mute_sent), 1000), "alice hears bob before"
    assert tone_power(window(alice, muted_at + MARGIN, t_end), 1000) < 0.01, \
        "alice still hears muted bob"
    assert hears(window(bob, muted_at + MARGIN, t_end), 440), "bob (muted) still hears alice"
    app.wait_event(lambda e: e.get("ev") == "hook" and e["data"].get("event") == "mute")
    events = status_events(app)
    assert ("join", sids["alice"]) in events and ("join", sids["bob"]) in events
    assert ("mute", sids["bob"]) in events and ("mute", sids["alice"]) not in events
    hook_app.wait_for(lambda reqs: sum(r.path == "/cs" and r.json["call_status"] == "completed"
                                       for r in reqs) == 2)
    assert {r.json["call_sid"] for r in hook_app.received("/cs")} == set(sids.values())
    assert app.events("call:status") == [], "call status went over the socket too"


def test_python_sdk_hold_kick_and_redirect_between_conferences(
    confroom: ConfroomFactory, sipp: SippRunner, ws_apps: Callable[..., WsAppProcess],
    rtp_peer_factory: Callable[[], RtpPeer],
) -> None:
    """jambonz-python-sdk app: `conf:hold-status` with a wait_hook (bob hears the hold music,
    not the room), `conf:participant-action` kick (carol leaves: hears the room no more, the
    call stays up waiting for commands), and a `redirect` command moving bob from room a to
    room b (heard: bob then hears dave, not alice)."""
    room_a = {"verb": "conference", "name": "room-a", **STATUS}
    room_b = {"verb": "conference", "name": "room-b"}
    app = ws_apps("python", {
        "verbs": {"dave": [room_b], "*": [room_a]},
        "hooks": {"/moh": [{"verb": "play", "url": "moh.wav"}]},
    })
    srv = confroom(app.url)
    write_tone_wav(srv.media_dir / "moh.wav", 3200.0, 1.0, amplitude=0.4)
    freqs = {"alice": 440.0, "bob": 1000.0, "carol": 1800.0, "dave": 2600.0}
    peers = {name: rtp_peer_factory() for name in freqs}
    runs, addrs = dial(sipp, srv, peers, pause_ms=11500)
    srv.wait_log(r"conference join name=room-a .*members=3", timeout=15)
    sids = app.sessions(n=4)
    t0 = time.monotonic()
    senders = [peers[n].send_tone_async(f, 9.0, addrs[n], amplitude=0.2)
               for n, f in freqs.items()]
    time.sleep(1.5)
    hold_sent, held = command(srv, app, sids["bob"], "conf:hold-status",
                              {"conf_hold_status": "hold", "wait_hook": "/moh"})
    time.sleep(2.0)
    unhold_sent, _ = command(srv, app, sids["bob"], "conf:hold-status",
                             {"conf_hold_status": "unhold"})
    _, kicked = command(srv, app, sids["carol"], "conf:participant-action",
                                {"action": "kick"})
    time.sleep(1.5)
    move_sent, moved = command(srv, app, sids["bob"], "redirect",
                               [{"verb": "conference", "name": "room-b"}])
    srv.wait_log(r"conference join name=room-b .*members=2", timeout=10)
    moved = time.monotonic()
    time.sleep(2.5)
    t_end = time.monotonic()
    for s in senders:
        s.join(timeout=15)
    for r in runs:
        res = r.wait()
        assert res.ok(), res.describe()
    alice, bob, carol, dave = (peers[n] for n in ("alice", "bob", "carol", "dave"))
    # hold: bob gets the wait_hook's audio and not the room; the room does not hear bob
    held_bob = window(bob, held + MARGIN, unhold_sent)
    assert tone_power(held_bob, 3200) > 0.5, "held bob does not hear the wait_hook audio"
    assert silent_at(held_bob, 440), "held bob still hears alice"
    assert silent_at(window(alice, held + MARGIN, unhold_sent), 1000), "alice hears held bob"
    # kick: carol hears room a no more; bob (unheld) hears alice again
    assert hears(window(carol, t0 + MARGIN, hold_sent), 440)
    assert silent_at(window(carol, kicked + MARGIN, move_sent), 440), "kicked carol hears alice"
    assert hears(window(bob, kicked + MARGIN, move_sent), 440)
    # redirect: bob is in room b with dave, no longer with alice
    after = window(bob, moved + MARGIN, t_end)
    assert hears(after, 2600) and silent_at(after, 440), "bob was not moved to room b"
    assert hears(window(dave, moved + MARGIN, t_end), 1000), "dave does not hear bob"
    assert silent_at(window(alice, moved + MARGIN, t_end), 1000), "alice still hears bob"
    assert [h for h in app.events("hook") if h["hook"] == "/moh"], "no wait_hook verb:hook"
    events = status_events(app)
    for ev in (("hold", sids["bob"]), ("unhold", sids["bob"]), ("leave", sids["carol"]),
               ("leave", sids["bob"])):
        assert ev in events, (ev, events)
    # no call-status hook: call status goes over the socket (not acked)
    app.wait_event(lambda e: e.get("ev") == "call:status" and e["call_status"] == "completed",
                   n=4)
    progress = {e["call_sid"] for e in app.events("call:status")
                if e["call_status"] == "in-progress"}
    assert progress == set(sids.values())


def test_app_killed_and_restarted_mid_call(
    confroom: ConfroomFactory, sipp: SippRunner, ws_apps: Callable[..., WsAppProcess],
    rtp_peer: RtpPeer,
) -> None:
    """The app process is killed mid-call: the call stays up, confroom reconnects and sends
    session:reconnect (the restarted SDK app sees the same call_sid again); the app's next
    command (a redirect to a tone, then call:status completed) works: heard, then BYE."""
    app = ws_apps("python", {"verbs": {"*": [{"verb": "conference", "name": "solo"}]}})
    srv = confroom(app.url)
    write_tone_wav(srv.media_dir / "tone.wav", 1500.0, 1.5, amplitude=0.4)
    run = sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=40)
    sid = app.sessions()["alice"]
    srv.wait_log(r"conference join name=solo", timeout=10)
    mark = srv.mark()
    app.kill()
    srv.wait_log(rf"call_sid={sid}: ws to .* dropped", since=mark, timeout=10)
    app.start()
    srv.wait_log(rf"call_sid={sid}: ws reconnected", since=mark, timeout=15)
    app.wait_event(lambda e: e.get("ev") == "session" and e["call_sid"] == sid, n=2)
    assert run.poll() is None, "the call did not survive the app restart"
    _, done = command(srv, app, sid, "redirect", [{"verb": "play", "url": "tone.wav"}])
    time.sleep(1.2)
    assert tone_power(window(rtp_peer, done + MARGIN, time.monotonic()), 1500) > 0.5
    command(srv, app, sid, "call:status", {"call_status": "completed"})
    res = run.wait()
    assert res.ok(), res.describe()
    assert srv.find_logs(rf"call end call_sid={sid} status=completed")


def test_redirect_to_another_websocket_app_hands_the_call_over(
    confroom: ConfroomFactory, sipp: SippRunner, ws_apps: Callable[..., WsAppProcess],
    rtp_peer: RtpPeer,
) -> None:
    """A `redirect` command naming another app's ws:// URL: confroom opens a socket there with
    session:new for the same call, closes the first one, and runs the new app's verbs (a tone,
    heard); the new app's `call:status` command then ends the call."""
    first = ws_apps("python", {"verbs": {"*": [{"verb": "conference", "name": "solo"}]}})
    second = ws_apps("python", {"verbs": {"*": [{"verb": "play", "url": "tone.wav"},
                                                {"verb": "pause", "length": 20}]}})
    srv = confroom(first.url)
    write_tone_wav(srv.media_dir / "tone.wav", 1200.0, 1.5, amplitude=0.4)
    run = sipp.start("uac_wait_bye", srv.target, keys={"rtp_port": rtp_peer.port}, timeout=30)
    sid = first.sessions()["alice"]
    srv.wait_log(r"conference join name=solo", timeout=10)
    mark = srv.mark()
    first.command(sid, "redirect", {"call_hook": second.url})
    assert second.sessions()["alice"] == sid
    srv.wait_log(r"conference leave name=solo .*reason=redirected", since=mark, timeout=5)
    t = time.monotonic()
    rtp_peer.wait_packets(60, timeout=10)
    time.sleep(1.0)
    assert tone_power(window(rtp_peer, t + MARGIN, time.monotonic()), 1200) > 0.5
    second.command(sid, "call:status", {"call_status": "completed"})
    res = run.wait()
    assert res.ok(), res.describe()


def test_sip_request_command_sends_an_in_dialog_info(
    confroom: ConfroomFactory, sipp: SippRunner, ws_apps: Callable[..., WsAppProcess],
    rtp_peer: RtpPeer,
) -> None:
    """`sip:request` (INFO) reaches the caller inside its dialog (this SIPp scenario answers
    an INFO with 200 and hangs up); an invalid command before it changes nothing."""
    app = ws_apps("python", {"verbs": {"*": [{"verb": "say", "text": "hello"},
                                             {"verb": "pause", "length": 20}]}})
    srv = confroom(app.url)
    run = sipp.start("uac_hangup_on_info", srv.target, keys={"rtp_port": rtp_peer.port},
                     timeout=30)
    sid = app.sessions()["alice"]
    rtp_peer.wait_packets(10, timeout=10)  # answered (and ACKed: 200 ms of the say)
    app.command(sid, "sip:request", {"method": "REFER"})
    srv.wait_log(r"refused from the ws app .*sip_request.method must be one of", timeout=5)
    assert run.poll() is None, "an invalid command changed the call"
    app.command(sid, "sip:request", {"method": "INFO", "content_type": "application/x-test",
                                     "content": "hello from the app",
                                     "headers": {"X-Confroom-Test": "1"}})
    res = run.wait()
    assert res.ok(), res.describe()
    messages = res.messages
    assert "INFO sip:" in messages and "hello from the app" in messages
    assert "X-Confroom-Test: 1" in messages


def test_app_that_never_acks_is_released_within_the_timeout(
    confroom: ConfroomFactory, sipp: SippRunner, ws_apps: Callable[..., WsAppProcess],
) -> None:
    """session:new never acked: the caller gets 480 once the ack timeout (1 s here) passes."""
    app = ws_apps("python", {"no_ack": True, "verbs": {}})
    srv = confroom(app.url, extra_toml={"webhooks": {"ws_ack_timeout": 1.0}})
    t = time.monotonic()
    res = sipp.run("uac_expect_status", srv.target, variables={"expected_status": 480},
                   timeout=15)
    elapsed = time.monotonic() - t
    assert res.ok(), res.describe()
    assert app.sessions(), "the app never got session:new"
    assert elapsed < 5.0, f"released after {elapsed:.1f} s"
    srv.wait_log(r"no ack for session:new .* within 1 s")


def test_wss_app_trusted_through_ca_file_and_refused_with_a_wrong_ca(
    confroom: ConfroomFactory, sipp: SippRunner, ws_apps: Callable[..., WsAppProcess],
    rtp_peer_factory: Callable[[], RtpPeer], tmp_path: Path,
) -> None:
    """A wss:// app (jambonz-python-sdk behind TLS, certificate from a CA made here) trusted
    through `[webhooks] ca_file`: two SIPp callers join its conference and hear each other
    (FFT); its status events come over the TLS socket. A server whose ca_file is another CA
    refuses the certificate: the caller gets 480 at once (no retries, no hang) and the log
    says the certificate is not trusted."""
    ca, wrong = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert(HOST)
    pem = {n: tmp_path / f"{n}.pem" for n in ("ca", "wrong", "cert", "key")}
    ca.cert_pem.write_to_path(str(pem["ca"]))
    wrong.cert_pem.write_to_path(str(pem["wrong"]))
    leaf.cert_chain_pems[0].write_to_path(str(pem["cert"]))
    leaf.private_key_pem.write_to_path(str(pem["key"]))
    app = ws_apps("python", {"verbs": {"*": [{"verb": "conference", "name": "tls-room",
                                              **STATUS}]},
                             "tls": {"cert": str(pem["cert"]), "key": str(pem["key"])}})
    assert app.url.startswith("wss://")
    srv = confroom(app.url, extra_toml={"webhooks": {"ca_file": str(pem["ca"])}})
    peers = {"alice": rtp_peer_factory(), "bob": rtp_peer_factory()}
    runs, addrs = dial(sipp, srv, peers, pause_ms=6000)
    srv.wait_log(r"conference join name=tls-room .*members=2", timeout=15)
    sids = app.sessions(n=2)
    t0 = time.monotonic()
    senders = [peers["alice"].send_tone_async(440.0, 2.5, addrs["alice"], amplitude=0.2),
               peers["bob"].send_tone_async(1000.0, 2.5, addrs["bob"], amplitude=0.2)]
    for sender in senders:
        sender.join(timeout=15)
    t_end = t0 + 2.3
    assert hears(window(peers["alice"], t0 + MARGIN, t_end), 1000), "alice does not hear bob"
    assert hears(window(peers["bob"], t0 + MARGIN, t_end), 440), "bob does not hear alice"
    events = status_events(app)
    assert ("join", sids["alice"]) in events and ("join", sids["bob"]) in events
    for run in runs:
        res = run.wait()
        assert res.ok(), res.describe()

    untrusting = confroom(app.url, extra_toml={"webhooks": {"ca_file": str(pem["wrong"])}})
    sessions_before = len(app.events("session"))
    t = time.monotonic()
    res = sipp.run("uac_expect_status", untrusting.target, variables={"expected_status": 480},
                   timeout=15)
    elapsed = time.monotonic() - t
    assert res.ok(), res.describe()
    assert elapsed < 5.0, f"released after {elapsed:.1f} s"
    untrusting.wait_log(r"ws app lost: could not connect to wss://.*: TLS certificate not "
                        r"trusted \(unable to get local issuer certificate; the trusted CAs "
                        r"are \[webhooks\] ca_file")
    assert len(untrusting.find_logs(r"ws connect to .* failed")) == 0, "a cert error was retried"
    assert len(app.events("session")) == sessions_before
