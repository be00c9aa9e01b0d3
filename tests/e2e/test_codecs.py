"""Wideband codecs end to end: SIPp callers offering G.722, Opus, PCMU, PCMA (scenario
`uac_codecs`, payloads picked per caller) in conferences, their RTP sent and decoded by the
test with confroom's codec module, checked by FFT; SDP edge cases (only Opus, nothing we
support -> 488, the server's order, a re-INVITE changing codec mid-call).

Tones, not speech: the talk gate mixes a steady signal louder than -35 dBFS, and tones make
"hears X, not Y" exact (a 6 kHz tone is above the narrowband limit of 4 kHz)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from harness import (
    ACCOUNT_SID,
    CODECS,
    PCM_RATE,
    ConfroomFactory,
    HookApp,
    RtpPeer,
    SippRunner,
    g711_decode,
    tone,
    tone_power,
)
from test_conference import CALL, Caller, Env, conference
from test_outbound import Baresip
from test_outbound import start as start_outbound

pytestmark = pytest.mark.e2e

Int16Array = npt.NDArray[np.int16]
OFFER = {"PCMU": "0 101", "PCMA": "8 101", "G722": "9 101", "OPUS": "111 110"}


def rtp_addr(peer: RtpPeer, pt: int, timeout: float = 15.0) -> tuple[str, int]:
    """Where the server sends this peer's RTP from (symmetric RTP: send there)."""
    return peer.wait_packets(1, timeout=timeout, payload_types=[pt])[0].source


def heard(peer: RtpPeer, codec: str, since: float) -> tuple[Int16Array, int]:
    """What the peer received since `since` (time.monotonic()), decoded, and its rate."""
    if codec in ("G722", "OPUS"):
        return peer.decoded_wide(codec, since=since), 16000
    pkts = [p for p in peer.packets((CODECS[codec],)) if p.arrival >= since]
    pcm = [g711_decode(p.payload, p.payload_type) for p in sorted(pkts, key=lambda p: p.seq)]
    return (np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.int16)), 8000


def power(pcm: Int16Array, freq: float, rate: int) -> float:
    """Fraction of the signal's power near `freq` (0..1)."""
    return tone_power(pcm, freq, rate=rate, bandwidth=40.0)


class Room:
    """Callers of one conference, each with its codec."""

    def __init__(self, env: Env, name: str, codecs: dict[str, str]) -> None:
        self.env = env
        self.codecs = codecs
        env.hooks.route(CALL, conference(name, beep=False))  # every caller, this room
        self.callers: dict[str, Caller] = {}
        for who, codec in codecs.items():
            self.callers[who] = env.dial(who, scenario="uac_codecs",
                                         keys={"payloads": OFFER[codec]})
        self.addr = {who: rtp_addr(c.peer, CODECS[codecs[who]])
                     for who, c in self.callers.items()}
        env.srv.wait_log(rf"conference join name={name} .*members={len(codecs)}", timeout=15)

    def send(self, who: str, pcm: Int16Array) -> Any:
        caller = self.callers[who]
        return caller.peer.send_pcm(pcm, self.addr[who], codec=self.codecs[who])

    def hang_up(self) -> None:
        for c in self.callers.values():
            c.hang_up()
        for c in self.callers.values():
            c.done(timeout=20)


@pytest.fixture
def room(confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner,
         rtp_peer_factory: Callable[[], RtpPeer]) -> Callable[..., Room]:
    """room(name, {caller: codec}, **confroom kwargs): a server and its conference."""
    def make(name: str, codecs: dict[str, str], **kw: Any) -> Room:
        env = Env(confroom(hook_app.url(CALL), **kw), hook_app, sipp, rtp_peer_factory)
        return Room(env, name, codecs)
    return make


def send_all(room: Room, signals: dict[str, Int16Array]) -> tuple[float, float]:
    """Every caller sends its signal at once; returns the window (start, end) to look at."""
    t0 = time.monotonic()
    threads = [threading.Thread(target=room.send, args=(who, pcm), daemon=True)
               for who, pcm in signals.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return t0 + 0.5, time.monotonic() - 0.1


def window(peer: RtpPeer, codec: str, start: float, end: float) -> tuple[Int16Array, int]:
    pcm, rate = heard(peer, codec, start)
    n = int((end - start) * rate)
    return pcm[:n], rate


def test_wideband_member_hears_6khz_narrowband_member_hears_it_band_limited(
    room: Callable[..., Room],
) -> None:
    """A G.722 talker sends 1 kHz + 6 kHz: the Opus member hears both, the PCMU member hears
    1 kHz only (nothing at 6 kHz's 2 kHz alias either), the talker hears neither."""
    r = room("hd", {"talker": "G722", "wide": "OPUS", "narrow": "PCMU"})
    rate = PCM_RATE["G722"]
    talker = tone(1000, 2.5, rate, amplitude=0.2) + tone(6000, 2.5, rate, amplitude=0.2)
    start, end = send_all(r, {"talker": talker})
    wide, wrate = window(r.callers["wide"].peer, "OPUS", start, end)
    narrow, nrate = window(r.callers["narrow"].peer, "PCMU", start, end)
    own, orate = window(r.callers["talker"].peer, "G722", start, end)
    assert len(wide) > wrate and len(narrow) > nrate
    assert power(wide, 6000, wrate) > 0.2 and power(wide, 1000, wrate) > 0.2
    assert power(narrow, 1000, nrate) > 0.5
    assert power(narrow, 2000, nrate) < 0.001 and power(narrow, 3500, nrate) < 0.01
    assert power(own, 1000, orate) < 0.05 and power(own, 6000, orate) < 0.05
    r.hang_up()


def test_mixed_codec_conference_of_four(room: Callable[..., Room]) -> None:
    """PCMU, PCMA, G.722 and Opus members each send their own tone at once: everyone hears
    the three others and not itself."""
    codecs = {"u": "PCMU", "a": "PCMA", "g": "G722", "o": "OPUS"}
    freqs = {"u": 500.0, "a": 900.0, "g": 1300.0, "o": 1700.0}
    r = room("mixed", codecs)
    signals = {w: tone(freqs[w], 2.5, PCM_RATE[c], amplitude=0.12) for w, c in codecs.items()}
    start, end = send_all(r, signals)
    for who, codec in codecs.items():
        pcm, rate = window(r.callers[who].peer, codec, start, end)
        assert len(pcm) > rate, (who, len(pcm))
        for other, f in freqs.items():
            p = power(pcm, f, rate)
            if other == who:
                assert p < 0.01, f"{codec} hears itself ({p:.3f})"
            else:
                assert p > 0.1, f"{codec} does not hear {codecs[other]} ({p:.3f})"
    r.hang_up()


def test_sdp_edge_cases_only_opus_nothing_supported_server_order_and_reinvite(
    room: Callable[..., Room], sipp: SippRunner,
) -> None:
    """With `codec_priority = "server"` and codecs G722, OPUS, PCMU: an offer of only Opus
    gets Opus (48 kHz RTP time: 960 per packet, telephone-event/48000); an offer of PCMU,
    Opus, G.722 gets G.722 (the server's order); offers of only G.729 or only PCMA (not
    configured) get 488 with a log naming what was offered; a re-INVITE offering only G.722
    moves a PCMU call to G.722 mid-call, after which it hears the Opus member's 6 kHz tone
    and the Opus member hears its own 6 kHz tone (both wideband)."""
    cfg = {"media": {"codecs": ["G722", "OPUS", "PCMU"], "codec_priority": "server"}}
    r = room("edge", {"opus_only": "OPUS"}, extra_toml=cfg)
    srv, env = r.env.srv, r.env
    opus = r.callers["opus_only"]
    srv.wait_log(rf"call_sid={opus.sid} codec=OPUS pt=111 telephone-event=110")
    pkts = opus.peer.wait_packets(20, payload_types=[111])
    steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(pkts)
             if (b.seq - a.seq) & 0xFFFF == 1}
    assert steps == {960}

    ordered = env.dial("ordered", scenario="uac_codecs", keys={"payloads": "0 111 9 101 110"})
    srv.wait_log(rf"call_sid={ordered.sid} codec=G722 pt=9 telephone-event=101")
    rtp_addr(ordered.peer, 9)

    for payloads in ("18", "8 101"):
        res = sipp.run("uac_expect_status", srv.target, variables={"expected_status": "488"},
                       keys={"payloads": payloads, "rtp_port": "9"}, timeout=20)
        assert res.ok(), res.describe()
        assert res.final_statuses == [488]
    srv.wait_log(r"no common codec \(no common audio codec: offered PCMA/8000 "
                 r"TELEPHONE-EVENT/8000, we accept G722 OPUS PCMU\)")

    switch = env.dial("switch", scenario="uac_reinvite_codec",
                      keys={"payloads": "0 101", "payloads2": "9 101"})
    srv.wait_log(rf"call_sid={switch.sid} codec=PCMU pt=0 telephone-event=101")
    addr = rtp_addr(switch.peer, 0)
    srv.wait_log(r"conference join name=edge .*members=3")
    switch.hang_up()  # the first INFO: the scenario sends its re-INVITE
    srv.wait_log(rf"call_sid={switch.sid} codec PCMU -> G722")
    switch.peer.wait_packets(5, payload_types=[9])
    # both talk at once, each a tone above the narrowband limit plus one in it (the talk
    # gate decides from the 8 kHz band, where speech always has energy)
    threads = [
        threading.Thread(target=opus.peer.send_pcm, daemon=True, kwargs={
            "pcm": tone(6000, 2.0, 16000, 0.2) + tone(1000, 2.0, 16000, 0.2),
            "to": r.addr["opus_only"], "codec": "OPUS"}),
        threading.Thread(target=switch.peer.send_pcm, daemon=True, kwargs={
            "pcm": tone(5000, 2.0, 16000, 0.2) + tone(700, 2.0, 16000, 0.2),
            "to": addr, "codec": "G722"}),
    ]
    start = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10)
    end = time.monotonic()
    g722, rate = window(switch.peer, "G722", start + 0.5, end - 0.1)
    assert len(g722) > rate
    assert power(g722, 6000, rate) > 0.2 and power(g722, 5000, rate) < 0.01
    heard_by_opus, rate = window(opus.peer, "OPUS", start + 0.5, end - 0.1)
    assert power(heard_by_opus, 5000, rate) > 0.2 and power(heard_by_opus, 6000, rate) < 0.01
    switch.hang_up()  # the second INFO: BYE
    res = switch.done(timeout=20)
    assert "reinvite_answer=m=audio" in res.logs and "RTP/AVP 9" in res.logs, res.logs[-2000:]
    ordered.hang_up()
    ordered.done(timeout=20)
    r.hang_up()


@pytest.mark.parametrize(("codec", "rate"), [("G722", 16000), ("opus", 48000)])
def test_baresip_softphone_negotiates_wideband_and_hears_full_band(
    confroom: ConfroomFactory, hook_app: HookApp, sipp: SippRunner, tmp_path: Path,
    rtp_peer_factory: Callable[[], RtpPeer], codec: str, rate: int,
) -> None:
    """confroom calls a real softphone (baresip, auto-answer, offering only `codec`) into a
    conference with an Opus SIPp caller: the outbound offer lists every codec, baresip
    answers with its one; the caller hears baresip's 6 kHz tone (it crossed baresip ->
    confroom in `codec` and confroom -> caller in Opus, decoded here with confroom's codec
    module), and baresip hears the caller's 5 kHz tone (decoded by baresip itself)."""
    phone = Baresip(tmp_path, "hd", (1000.0, 6000.0), codec=codec, rate=rate)
    try:
        hook_app.route(CALL, lambda req: conference(  # alice leaving ends the room
            "softphone-hd", beep=False, endConferenceOnExit=req.json["from"] == "alice"))
        hook_app.route("/cstatus", [])
        srv, rest = start_outbound(confroom, hook_app,
                                   outbound={"allowed_domains": ["127.0.0.1"]})
        env = Env(srv, hook_app, sipp, rtp_peer_factory)
        alice = env.dial("alice", scenario="uac_codecs", keys={"payloads": "111 110"})
        alice_addr = rtp_addr(alice.peer, 111)
        status, body = rest.request("POST", "/v1/Accounts/" + ACCOUNT_SID + "/Calls", {
            "from": "confbot", "to": {"type": "sip", "sipUri": phone.uri},
            "call_hook": hook_app.url(CALL), "call_status_hook": hook_app.url("/cstatus"),
            "timeout": 10})
        assert status == 201, body
        srv.wait_log(rf"outbound call answered call_sid={body['sid']} codec={codec.upper()}")
        srv.wait_log(r"conference join name=softphone-hd .*members=2", timeout=15)
        phone.wait_log("Call established", timeout=10)
        start = time.monotonic()
        alice.peer.send_pcm(tone(5000, 2.5, 16000, 0.2) + tone(700, 2.5, 16000, 0.2),
                            alice_addr, codec="OPUS")
        end = time.monotonic()
        pcm, prate = window(alice.peer, "OPUS", start + 0.5, end - 0.1)
        assert len(pcm) > prate
        assert power(pcm, 6000, prate) > 0.1 and power(pcm, 1000, prate) > 0.1
        assert power(pcm, 5000, prate) < 0.01  # not itself
        alice.hang_up()
        alice.done(timeout=20)
        phone.wait_log("session closed", timeout=15)  # the room ended: confroom hung up
    finally:
        phone.stop()
    heard_by_phone = phone.heard()
    assert power(heard_by_phone, 5000, rate) > 0.1, "baresip does not hear the 5 kHz tone"
    assert power(heard_by_phone, 700, rate) > 0.1
