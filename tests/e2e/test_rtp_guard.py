"""RTP hijack protection end to end (issue 9): two members in a conference over real SIP calls
(SIPp signalling, RtpPeer media), a stranger sending to a paused member's server RTP port, and
a member whose NAT binding changes; who hears what is checked by FFT on the decoded RTP."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from harness import ConfroomFactory, HookApp, RtpPeer, SippRunner, tone
from test_conference import (  # the conference tests' callers, senders and audio checks
    CALL,
    Caller,
    Env,
    Sender,
    audio,
    conference,
    log_time,
    send_tone_until_stopped,
    tone_times,
    wait_received_until,
)

pytestmark = pytest.mark.e2e

A_HZ, B_HZ, STRANGER_HZ = 440.0, 1000.0, 2200.0


Peers = Callable[[], RtpPeer]


def two_members(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, peers: Peers, name: str
) -> tuple[Env, Caller, Caller]:
    hook_app.route(CALL, conference(name))
    e = Env(confroom(hook_app.url(CALL)), hook_app, sipp, peers)
    a, b = e.dial("alice"), e.dial("bob")
    e.srv.wait_log(rf"conference join name={name} .*members=2")
    return e, a, b


def addr_rx(addr: tuple[str, int]) -> str:
    return re.escape(f"{addr[0]}:{addr[1]}")


def first_time(times: list[float], what: str) -> float:
    assert times, f"never: {what}"
    return times[0]


def test_stranger_cannot_take_over_a_paused_members_port(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, rtp_peer_factory: Peers
) -> None:
    e, a, b = two_members(confroom, hook_app, sipp, rtp_peer_factory, "guarded")
    port = a.addr[1]
    sa, sb = send_tone_until_stopped(a, A_HZ), send_tone_until_stopped(b, B_HZ)
    t_talk = time.monotonic()
    wait_received_until(b.peer, t_talk + 1.0)
    first_time(tone_times(b.peer, A_HZ, t_talk), "bob hears alice before the pause")

    # Alice pauses 2.5 s; meanwhile a stranger sends a loud tone to her server port, 4 s long.
    stranger = rtp_peer_factory()
    mark = e.srv.mark()
    t_pause = sa.stop()
    sender = stranger.send_tone_async(STRANGER_HZ, 4.0, a.addr, amplitude=0.5)
    e.srv.wait_log(rf"RTP port {port}: packets from {addr_rx(stranger.address)} rejected",
                   timeout=5.0, since=mark)
    time.sleep(max(0.0, t_pause + 2.5 - time.monotonic()))  # the rest of alice's pause
    sa = send_tone_until_stopped(a, A_HZ)
    t_resume = time.monotonic()
    sender.join(timeout=10)
    t_end = time.monotonic()
    wait_received_until(b.peer, t_end + 0.5)
    wait_received_until(a.peer, t_end + 0.5)
    sa.stop()
    sb.stop()

    assert tone_times(b.peer, STRANGER_HZ, t_pause, min_rms=100, share=0.1) == [], (
        "bob hears the stranger")
    assert stranger.packets() == [], "the stranger received the call's RTP"
    # Alice was never locked out: her mix (bob's tone) reached her during the pause and after.
    heard_by_a = tone_times(a.peer, B_HZ, t_pause + 0.3, t_resume)
    assert len(heard_by_a) >= 0.5 * (t_resume - t_pause - 0.3) / 0.02, "alice lost her mix"
    back = first_time(tone_times(b.peer, A_HZ, t_resume), "bob hears alice again")
    assert back - t_resume < 1.0, f"bob hears alice again only after {back - t_resume:.2f} s"
    assert tone_times(a.peer, B_HZ, t_resume + 0.5, t_end), "alice's mix after she resumed"
    assert {p.source for p in audio(a.peer, t_pause)} == {a.addr}
    # One line for the stranger (however many packets), no change of source.
    assert len(e.srv.find_logs(rf"RTP port {port}: ", since=mark)) == 1
    for x in (a, b):
        x.hang_up()
        x.done()


def test_member_whose_nat_binding_changes_recovers(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, rtp_peer_factory: Peers
) -> None:
    e, a, b = two_members(confroom, hook_app, sipp, rtp_peer_factory, "rebinding")
    port = a.addr[1]
    sa, sb = send_tone_until_stopped(a, A_HZ), send_tone_until_stopped(b, B_HZ)
    t_talk = time.monotonic()
    wait_received_until(b.peer, t_talk + 1.0)
    first_time(tone_times(b.peer, A_HZ, t_talk), "bob hears alice before the re-binding")

    # Alice's NAT maps her to a new port: the same stream goes on from there, at once.
    rebound = rtp_peer_factory()
    mark = e.srv.mark()
    sa.stop()
    rebound.continue_stream_of(a.peer)
    t_switch = time.monotonic()
    sr = Sender(rebound, a.addr, tone(A_HZ, 0.2, amplitude=0.2))
    changed = e.srv.wait_log(
        rf"RTP port {port}: source changed from {addr_rx(a.peer.address)} to "
        rf"{addr_rx(rebound.address)} ", timeout=5.0, since=mark)
    wait_received_until(b.peer, time.monotonic() + 1.0)
    wait_received_until(rebound, time.monotonic() + 0.5)
    sr.stop()
    sb.stop()

    took = log_time(changed) - t_switch
    assert took < 2.0, f"the re-binding was accepted after {took:.2f} s"
    heard = first_time(tone_times(b.peer, A_HZ, t_switch + 0.3), "bob hears alice again")
    assert heard - t_switch < 2.2, f"bob hears alice again after {heard - t_switch:.2f} s"
    mix = first_time(tone_times(rebound, B_HZ), "alice's mix at her new port")
    assert mix - t_switch < 2.2, f"alice's mix reached her new port after {mix - t_switch:.2f} s"
    assert not audio(a.peer, mix + 0.1), "RTP still goes to alice's old port"
    # One line for the change.
    assert len(e.srv.find_logs(rf"RTP port {port}: ", since=mark)) == 1
    for x in (a, b):
        x.hang_up()
        x.done()
