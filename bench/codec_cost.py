"""Media cost per participant-frame by codec: the engine's tick (decode, concealment, talk
detection, mix, encode, packet build) over N participants in conferences, in process.

Not a test; a benchmark. Every participant receives one 20 ms packet per tick (like the load
generator: talkers send speech-like audio, the others silence). G.711 and G.722 packets go
into the jitter bank in one batch (the engine's receive path for latched sockets), Opus
packets one by one through `MediaSession.on_datagram()` (its path in the engine too). Sending
is a no-op transport: the system calls are not part of this figure (see bench/loadgen.py for
the whole server). Prints µs per participant-frame for the push and for the tick.

    python bench/codec_cost.py --codec PCMU --n 1000 --size 5
    python bench/codec_cost.py --codec OPUS --n 200 --size 5 --talkers 1

It runs on older checkouts too (G.711 only), for before/after figures:
    PYTHONPATH=<old checkout>/src python bench/codec_cost.py --codec PCMU
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import time

import numpy as np

from confroom.app.payload import CallInfo
from confroom.conference.audio import ConferenceAudio, MixBus
from confroom.conference.model import Member
from confroom.config import AppConfig
from confroom.media import g711
from confroom.media.engine import MediaEngine
from confroom.media.session import MediaSession

PT = {"PCMU": 0, "PCMA": 8, "G722": 9, "OPUS": 111}
TS = {"PCMU": 160, "PCMA": 160, "G722": 160, "OPUS": 960}


class NullTransport:
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        pass


def speech_like(seconds: float, rate: int) -> np.ndarray:
    """A 120 Hz pulse train through three formants, syllable-modulated, about -20 dBFS."""
    n = int(seconds * rate)
    src = np.zeros(n)
    src[:: rate // 120] = 1.0
    src += 0.05 * np.random.default_rng(1).standard_normal(n)
    t = np.arange(int(rate * 0.025)) / rate
    h = np.exp(-t * 300) * (np.sin(2 * np.pi * 700 * t) + 0.6 * np.sin(2 * np.pi * 1200 * t)
                            + 0.3 * np.sin(2 * np.pi * 2500 * t))
    x = np.convolve(src, h)[:n] * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * np.arange(n) / rate))
    return np.round(x / np.sqrt(np.mean(x * x)) * 3300).astype(np.int16)


def payloads(codec: str, frames: int, talking: bool) -> list[bytes]:
    if codec in ("PCMU", "PCMA"):
        pcm = speech_like(frames * 0.02, 8000) if talking else np.zeros(frames * 160, np.int16)
        return [g711.encode(codec, pcm[i * 160:(i + 1) * 160]).tobytes() for i in range(frames)]
    from confroom.media.codecs import make_encoder
    enc = make_encoder(codec)
    pcm = speech_like(frames * 0.02, 16000) if talking else np.zeros(frames * 320, np.int16)
    return [enc.encode(pcm[i * 320:(i + 1) * 320]) for i in range(frames)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--codec", default="PCMU", choices=sorted(PT))
    ap.add_argument("--n", type=int, default=1000, help="participants")
    ap.add_argument("--size", type=int, default=5, help="members per conference")
    ap.add_argument("--talkers", type=int, default=1, help="talkers per conference")
    ap.add_argument("--ticks", type=int, default=250, help="measured ticks (after 50 warm-up)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="measurements; the median (and the best) are shown")
    args = ap.parse_args()
    codec = args.codec
    engine = MediaEngine("127.0.0.1", 20000, 65000, 0)
    bus = MixBus(capacity=args.n)
    engine.mixers.append(bus)
    app = AppConfig(name="bench", call_hook=None, verbs_file=None)  # type: ignore[call-arg]
    sessions: list[MediaSession] = []
    conf: ConferenceAudio | None = None
    frames = 50
    talk = payloads(codec, frames, True)
    quiet = payloads(codec, frames, False)
    talkers: list[bool] = []
    for i in range(args.n):
        s = MediaSession(20000 + 2 * i)
        s.update(codec, PT[codec], 101, "10.0.0.9", 30000 + 2 * i)
        engine.add_session(s, NullTransport())
        sessions.append(s)
        if i % args.size == 0:
            conf = ConferenceAudio(lambda m, t: None)
            bus.attach(conf)
        assert conf is not None
        info = CallInfo(call_sid=f"c{i}", call_id=f"c{i}@b", from_user="u", to_user="1",
                        caller_name="", originating_sip_ip="10.0.0.9", originating_sip_port=5060,
                        local_sip_address="127.0.0.1:5060", account_sid="a", application_sid="b")
        conf.add(Member(call_sid=f"c{i}", info=info, media=s, app=app))
        talkers.append(i % args.size < args.talkers)
    streams = np.array([s.jitter.index for s in sessions], dtype=np.intp)
    ssrc = np.arange(args.n, dtype=np.int64) + 1000
    batched = codec != "OPUS"
    rows = np.zeros((args.n, 160), dtype=np.uint8)
    addr = ("10.0.0.9", 0)
    state = {"k": 0, "now": 100.0}

    def push() -> None:
        k = state["k"]
        seq = np.full(args.n, k & 0xFFFF, dtype=np.int64)
        ts = np.full(args.n, (k * TS[codec]) & 0xFFFFFFFF, dtype=np.int64)
        if batched:
            for i in range(args.n):
                rows[i] = np.frombuffer((talk if talkers[i] else quiet)[k % frames], np.uint8)
            rest = engine.jitter.push_frames(streams, seq, ts, ssrc, rows)
            assert not rest.any() or k == 0
            for i in np.flatnonzero(rest).tolist():
                sessions[i].jitter.push(k & 0xFFFF, int(ts[i]), rows[i].tobytes(), int(ssrc[i]))
        else:
            header = struct.Struct("!BBHII")
            for i, s in enumerate(sessions):
                p = (talk if talkers[i] else quiet)[k % frames]
                pkt = header.pack(0x80, PT[codec], k & 0xFFFF, int(ts[i]), int(ssrc[i])) + p
                s.on_datagram(pkt, (addr[0], 30000 + 2 * i), state["now"])

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        push()
        t1 = time.perf_counter()
        engine.tick(state["now"])
        t2 = time.perf_counter()
        state["k"] += 1
        state["now"] += 0.02
        return t1 - t0, t2 - t1

    for _ in range(50):
        step()
    gc.collect()
    gc.freeze()
    ticks, pushes = [], []
    for _ in range(args.repeat):
        p_sum = t_sum = 0.0
        for _ in range(args.ticks):
            p, t = step()
            p_sum += p
            t_sum += t
        pushes.append(p_sum / args.ticks / args.n * 1e6)
        ticks.append(t_sum / args.ticks / args.n * 1e6)
    push_us, tick_us = statistics.median(pushes), statistics.median(ticks)
    print(f"codec={codec} n={args.n} size={args.size} talkers={args.talkers} "
          f"push={push_us:.2f} tick={tick_us:.2f} (best {min(ticks):.2f}) us/participant-frame "
          f"(ticks: {' '.join(f'{t:.2f}' for t in ticks)}; sent {engine.stats.packets_sent})")


if __name__ == "__main__":
    main()
