"""Wideband codecs end to end: SIPp callers offering G.722, Opus, PCMU, PCMA (scenario
`uac_codecs`, payloads picked per caller) in conferences, their RTP sent and decoded by the
test with confroom's codec module, checked by FFT; SDP edge cases (only Opus, nothing we
support -> 488, the server's order, a re-INVITE changing codec mid-call).

Tones, not speech: the talk gate mixes a steady signal louder than -35 dBFS, and tones make
"hears X, not Y" exact (a 6 kHz tone is above the narrowband limit of 4 kHz)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from harness import (
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
from test_conference import CALL, Caller, Env, conference, per_caller

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
        env.hooks.route(CALL, per_caller({c: conference(name, beep=False) for c in codecs}))
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
    import threading
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
