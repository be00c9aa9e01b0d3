"""Per-stage cost of confroom's media path, in-process, with the real objects and no sockets.

    python3 bench/engine_micro.py --n 2000 --conf-size 5
    python3 bench/engine_micro.py --n 2000 --conf-size 2000

Builds a `MediaEngine` (not started) with N sessions whose transport only counts `sendto`
calls, and `ConferenceAudio` mixers (as `ConferenceService` registers them) over those
sessions, feeds every session one tone packet per tick through the same datagram callback the
server's sockets use, and times:

* receive: `_RtpProtocol.datagram_received` per packet (parse + jitter push), µs/packet;
* tick: the whole `MediaEngine.tick()`, split into the mixers (each `ConferenceAudio.mix`
  timed through a proxy) and the rest (jitter pops + decode + outbound loop + encode + send
  calls), µs per participant;
* the engine's inbound and outbound halves, replicated from `tick()` with the engine's own
  helpers, to split "the rest" further.

The kernel's share (UDP receive/send syscalls, loopback delivery) is not in here: see the
py-spy profile of the real server for that.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import numpy as np

from confroom.conference.audio import ConferenceAudio
from confroom.conference.model import Member
from confroom.media import engine as eng
from confroom.media.g711 import ULAW_DECODE, ULAW_ENCODE
from confroom.media.session import MediaSession


class _CountingTransport:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent += 1


class _TimedMixer:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.elapsed = 0.0

    def mix(self, now: float) -> None:
        t = time.perf_counter()
        self.inner.mix(now)
        self.elapsed += time.perf_counter() - t


def _tone_packets(n: int, k: int) -> list[bytes]:
    t = (np.arange(160) + k * 160) / 8000.0
    pkts = []
    for i in range(n):
        pcm = np.round(1500 * np.sin(2 * np.pi * (300 + i % 3000) * t)).astype(np.int16)
        payload = ULAW_ENCODE[pcm.view(np.uint16)].tobytes()
        hdr = bytes([0x80, 0]) + (k & 0xFFFF).to_bytes(2, "big") + (k * 160).to_bytes(
            4, "big") + (i + 1).to_bytes(4, "big")
        pkts.append(hdr + payload)
    return pkts


def run(n: int, conf_size: int, ticks: int) -> dict[str, float]:
    engine = eng.MediaEngine("127.0.0.1", 20000, 60000, rtp_timeout=0)
    transport = _CountingTransport()
    protos = []
    sessions = []
    for i in range(n):
        s = MediaSession(20000 + 2 * i)
        s.update("PCMU", 0, 101, "127.0.0.1", 30000 + i)
        engine.add_session(s, transport)
        protos.append(eng._RtpProtocol(s, time.monotonic))
        sessions.append(s)
    mixers = []
    for c in range(0, n, conf_size):
        audio = ConferenceAudio(lambda m, talking: None)
        for s in sessions[c : c + conf_size]:
            audio.add(Member(call_sid=f"c{s.local_port}", info=None, media=s, app=None))  # type: ignore[arg-type]
        timed = _TimedMixer(audio)
        mixers.append(timed)
        engine.mixers.append(timed)
    addrs = [("127.0.0.1", 30000 + i) for i in range(n)]
    # pre-built packets for a cycle of 50 ticks (continuous tones)
    cycle = [_tone_packets(n, k) for k in range(50)]
    rx_times: list[float] = []
    tick_times: list[float] = []
    mix_times: list[float] = []
    inbound_times: list[float] = []
    outbound_times: list[float] = []
    for k in range(ticks):
        pkts = cycle[k % 50]
        # seq/ts must advance past the cycle: rewrite them (cheap, outside the timing)
        if k >= 50:
            pkts = [p[:2] + (k & 0xFFFF).to_bytes(2, "big") + ((k * 160) & 0xFFFFFFFF).to_bytes(
                4, "big") + p[8:] for p in pkts]
        t = time.perf_counter()
        for proto, data, addr in zip(protos, pkts, addrs, strict=True):
            proto.datagram_received(data, addr)
        rx_times.append(time.perf_counter() - t)
        for m in mixers:
            m.elapsed = 0.0
        t = time.perf_counter()
        engine.tick(time.monotonic())
        tick_times.append(time.perf_counter() - t)
        mix_times.append(sum(m.elapsed for m in mixers))
    # replicated halves of tick(): inbound (pop + decode) and outbound (encode + send)
    for k in range(ticks, ticks + 50):
        pkts = [p[:2] + (k & 0xFFFF).to_bytes(2, "big") + ((k * 160) & 0xFFFFFFFF).to_bytes(
            4, "big") + p[8:] for p in cycle[k % 50]]
        for proto, data, addr in zip(protos, pkts, addrs, strict=True):
            proto.datagram_received(data, addr)
        t = time.perf_counter()
        us: list[MediaSession] = []
        up: list[bytes] = []
        for s in sessions:
            payload = s.jitter.pop()
            if payload is not None:
                us.append(s)
                up.append(payload)
        if us:
            eng._assign_decoded(us, up, ULAW_DECODE)
        inbound_times.append(time.perf_counter() - t)
        frames = [s.inbound for s in sessions]
        out = [(s, transport, s.remote) for s in sessions]
        t = time.perf_counter()
        eng._encode_and_send(out, frames, ULAW_ENCODE, engine.stats)  # type: ignore[arg-type]
        outbound_times.append(time.perf_counter() - t)
    skip = 10  # warm-up ticks (jitter prefill, buffer growth)

    def per(xs: list[float]) -> float:
        return statistics.median(xs[skip:]) / n * 1e6

    return {
        "n": n,
        "conf_size": conf_size,
        "conferences": len(mixers),
        "rx_us_per_packet": round(per(rx_times), 3),
        "tick_us_per_participant": round(per(tick_times), 3),
        "tick_ms": round(statistics.median(tick_times[skip:]) * 1e3, 3),
        "mixers_us_per_participant": round(per(mix_times), 3),
        "engine_rest_us_per_participant": round(per(tick_times) - per(mix_times), 3),
        "inbound_pop_decode_us_per_participant": round(
            statistics.median(inbound_times) / n * 1e6, 3),
        "outbound_encode_send_us_per_participant": round(
            statistics.median(outbound_times) / n * 1e6, 3),
        "python_us_per_participant_frame": round(per(rx_times) + per(tick_times), 3),
        "sent": transport.sent,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--conf-size", type=int, default=5)
    p.add_argument("--ticks", type=int, default=200)
    a = p.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    r = run(a.n, a.conf_size, min(a.ticks, 2000))
    for k, v in r.items():
        print(f"{k:>42}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
