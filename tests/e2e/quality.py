"""Speech quality through a real conference of 3, measured with PESQ (ITU-T P.862).

Shared by tests/e2e/test_quality.py and bench/quality.py: one run starts a confroom server
(a verb file puts every caller in one conference), dials three SIPp callers whose media are
`RtpPeer`s, lets the talker send espeak-ng speech as PCMU through an impaired network on its
side (random packet loss, uniform random extra delay), records what one listener receives and
scores it with PESQ-NB against the speech sent. `silent_loss_pesq()` is the bracketed
baseline of issue 12: the same lost packets decoded without the server, lost frames silent.
With `codec` G722 or OPUS every caller uses that codec, the speech is 16 kHz and the score
is PESQ-WB (ITU-T P.862.2).
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from harness import (
    ACCOUNT_SID,
    APPLICATION_SID,
    CODECS,
    PCM_RATE,
    ConfroomProcess,
    RtpPeer,
    SippRunner,
    g711_decode,
    g711_encode,
)

__all__ = ["Impairment", "conference_pesq", "espeak_speech", "silent_loss_pesq"]

Int16Array = npt.NDArray[np.int16]
RATE = 8000
FRAME = 160
LEAD_S = 1.0  # silence before the speech (the streams settle)
TAIL_S = 1.0  # and after it (the jitter buffer drains)


@dataclass(frozen=True)
class Impairment:
    """The talker's upstream: `loss` (a fraction) of packets dropped at random, each packet
    delayed by a uniform random 0..`jitter_ms`."""

    loss: float = 0.0
    jitter_ms: float = 0.0

    def plan(self, packets: int, rng: random.Random) -> tuple[set[int], list[float]]:
        lost = {i for i in range(packets) if rng.random() < self.loss}
        delays = [rng.uniform(0.0, self.jitter_ms) for _ in range(packets)]
        return lost, delays

    def __str__(self) -> str:
        return f"loss {self.loss * 100:g} %, jitter 0-{self.jitter_ms:g} ms"


def espeak_speech(workdir: Path, text: str, dbfs: float = -20.0, voice: str = "en",
                  rate: int = RATE) -> Int16Array:
    """espeak-ng speech, `rate` Hz mono 16-bit via sox, scaled to `dbfs` RMS over the voiced
    part."""
    raw, pcm8k = workdir / "speech.wav", workdir / f"speech{rate}.raw"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True,
                   capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", "-e",
                    "signed-integer", "-t", "raw", str(pcm8k)], check=True, capture_output=True)
    pcm = np.frombuffer(pcm8k.read_bytes(), dtype="<i2").astype(np.float64)
    frames = pcm[: len(pcm) // FRAME * FRAME].reshape(-1, FRAME)
    levels = np.sqrt(np.mean(frames**2, axis=1))
    level = np.sqrt(np.mean(frames[levels > 0.05 * levels.max()] ** 2))
    scaled = frames.reshape(-1) * (32768 * 10 ** (dbfs / 20) / level)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def _pesq(ref: Int16Array, deg: Int16Array, rate: int = RATE) -> float:
    from pesq import pesq  # the test extra's dependency (a C extension)

    mode = "nb" if rate == 8000 else "wb"
    return float(pesq(rate, ref.astype(np.float32), deg.astype(np.float32), mode))


def _padded(speech: Int16Array, rate: int = RATE) -> Int16Array:
    pad = np.zeros(int(LEAD_S * rate), np.int16)
    tail = np.zeros(int(TAIL_S * rate), np.int16)
    sig = np.concatenate([pad, speech, tail])
    return np.pad(sig, (0, -len(sig) % (rate // 50)))


def silent_loss_pesq(speech: Int16Array, lost: set[int], codec: str = "PCMU") -> float:
    """PESQ of `speech` through `codec` with the packets numbered in `lost` left silent."""
    rate = PCM_RATE[codec]
    frame = rate // 50
    sig = _padded(speech, rate)
    if codec in ("PCMU", "PCMA"):
        pt = CODECS[codec]
        coded = g711_decode(g711_encode(sig, pt), pt).reshape(-1, frame).copy()
    else:
        from confroom.media.codecs import make_decoder, make_encoder
        enc, dec = make_encoder(codec), make_decoder(codec)
        frames = [dec.decode(enc.encode(f)) for f in sig.reshape(-1, frame)]
        coded = np.stack([f if f is not None else np.zeros(frame, np.int16) for f in frames])
    coded[sorted(i for i in lost if i < len(coded))] = 0
    return _pesq(sig, coded.reshape(-1), rate)


def conference_pesq(
    workdir: Path, speech: Int16Array, impairment: Impairment, seed: int, codec: str = "PCMU"
) -> tuple[float, float]:
    """One run (see the module docstring): (PESQ of what a listener heard, the baseline
    with the same lost packets left silent). `speech` is at the codec's rate."""
    rate = PCM_RATE[codec]
    frame = rate // 50
    workdir.mkdir(parents=True, exist_ok=True)
    verbs = workdir / "app.json"
    verbs.write_text(json.dumps([{"verb": "conference", "name": "quality"}]))
    app = {"name": "quality", "call_hook": str(verbs), "account_sid": ACCOUNT_SID,
           "application_sid": APPLICATION_SID, "numbers": ["*"]}
    srv = ConfroomProcess(workdir / "server", apps=[app], rtp_port_count=40)
    sipp = SippRunner(workdir / "sipp")
    peers = [RtpPeer() for _ in range(3)]
    sig = _padded(speech, rate)
    lost, delays = impairment.plan(len(sig) // frame, random.Random(seed))
    try:
        srv.start()
        srv.wait_ready()
        call_ms = int((len(sig) / rate + 6) * 1000)
        if codec == "PCMU":
            runs = [sipp.start("uac_basic", srv.target, keys={"rtp_port": p.port},
                               pause_ms=call_ms, timeout=call_ms / 1000 + 20) for p in peers]
        else:  # hung up by kill() below, like the others
            offer = {"PCMA": "8 101", "G722": "9 101", "OPUS": "111 110"}[codec]
            runs = [sipp.start("uac_codecs", srv.target, timeout=call_ms / 1000 + 20,
                               keys={"rtp_port": p.port, "payloads": offer}) for p in peers]
        talker, listener = peers[0], peers[1]
        to = talker.wait_packets(1, timeout=15, payload_types=[CODECS[codec]])[0].source
        srv.wait_log(r"conference join .*members=3", timeout=15)
        t0 = time.monotonic()
        talker.send_pcm(sig, to, codec=codec, lost=lost, delays_ms=delays)
        deadline = time.monotonic() + 3
        need = t0 + len(sig) / rate + 0.3
        while time.monotonic() < deadline and (
            not listener.packets() or listener.packets()[-1].arrival < need
        ):
            time.sleep(0.05)
        if codec in ("G722", "OPUS"):
            heard = listener.decoded_wide(codec, since=t0)[: len(sig) + rate // 2]
        else:
            heard = listener.decoded_pcm(since=t0)[: len(sig) + rate // 2]
        for r in runs:
            r.kill()
    finally:
        for p in peers:
            p.close()
        sipp.close()
        srv.kill()  # the calls are still up: no graceful drain to wait for
    return _pesq(sig, heard, rate), silent_loss_pesq(speech, lost, codec)
