"""Micro-benchmark: CPU per participant-frame of a WebRTC member against a G.711 member.

`python bench/webrtc_micro.py --n 500 --ticks 500` builds n sessions of each kind in one
`MediaEngine` (fake transports, no sockets) and, per 20 ms tick, feeds every session one
received 20 ms PCMU packet through `MediaSession.on_datagram()` and runs `engine.tick()` (the
mix is sent to every session). A WebRTC member's packets are SRTP (AES_CM_128_HMAC_SHA1_80,
keys as DTLS would give them; the session has its `WebRtcTransport`, so it goes through the
RFC 7983 demultiplexing), unprotected on the way in and protected on the way out; a G.711
member's are plain. Each kind is timed in its own engine; the result is the median CPU time
per tick divided by n. The plain path here goes through `on_datagram()` too, which costs more
than the engine's batched receive of latched G.711 sockets: the G.711 figure is an upper
bound, the difference a lower bound of what WebRTC adds. The codec is PCMU for both (Opus is
not in this branch). Results: bench/RESULTS.md, "WebRTC members".
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from confroom.media.dtls import DtlsIdentity
from confroom.media.engine import MediaEngine
from confroom.media.g711 import encode as g711_encode
from confroom.media.rtp import build_rtp_header
from confroom.media.session import MediaSession
from confroom.media.srtp import SrtpContext, new_key
from confroom.media.webrtc import WebRtcTransport


class NullTransport:
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        pass


def run(n: int, ticks: int, webrtc: bool) -> float:
    """Median seconds of CPU per tick (receive one packet per session + tick)."""
    engine = MediaEngine("127.0.0.1", 20000, 20000 + 2 * n + 2, rtp_timeout=0)
    identity = DtlsIdentity.generate()
    frame = (np.sin(np.arange(160) * 0.3) * 8000).astype(np.int16)
    payload = g711_encode("PCMU", frame).tobytes()
    sessions: list[tuple[MediaSession, SrtpContext | None, tuple[str, int]]] = []
    for i in range(n):
        s = MediaSession(20000 + 2 * i)
        addr = ("10.0.0.9", 40000 + i)
        s.update("PCMU", 0, 101, addr[0], addr[1], "sendrecv")
        engine.add_session(s, NullTransport())
        peer: SrtpContext | None = None
        if webrtc:
            ours, theirs = new_key(), new_key()
            rtc = WebRtcTransport(identity, identity.fingerprint, "x", 100.0)
            engine.set_webrtc(s, rtc)
            # as after a completed handshake (its cost, ~1 ms once per call, is not per frame)
            rtc.dtls.srtp = s.srtp = SrtpContext("AES_CM_128_HMAC_SHA1_80", ours, theirs)
            peer = SrtpContext("AES_CM_128_HMAC_SHA1_80", theirs, ours)
        sessions.append((s, peer, addr))
    now = 100.0
    times: list[float] = []
    for t in range(ticks):
        header_fields = (t & 0xFFFF, (t * 160) & 0xFFFFFFFF)
        packets = []
        for s, peer, addr in sessions:
            pkt = build_rtp_header(0, False, header_fields[0], header_fields[1],
                                   0x1000 + s.local_port) + payload
            if peer is not None:
                protected = peer.protect(pkt)
                assert protected is not None
                pkt = protected
            packets.append((s, pkt, addr))
        for s, _, _ in sessions:
            s.mix_out = frame
        t0 = time.process_time()
        for s, pkt, addr in packets:
            s.on_datagram(pkt, addr, now)
        engine.tick(now)
        times.append(time.process_time() - t0)
        now += 0.02
    return statistics.median(times[50:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--ticks", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    plain: list[float] = []
    rtc: list[float] = []
    for _ in range(args.rounds):  # interleaved, so load changes hit both alike
        plain.append(run(args.n, args.ticks, webrtc=False))
        rtc.append(run(args.n, args.ticks, webrtc=True))
    p = statistics.median(plain) / args.n * 1e6
    w = statistics.median(rtc) / args.n * 1e6
    print(f"n={args.n} ticks={args.ticks} rounds={args.rounds}")
    print(f"G.711 member:  {p:.2f} us CPU per participant-frame "
          f"(rounds: {', '.join(f'{x / args.n * 1e6:.2f}' for x in plain)})")
    print(f"WebRTC member: {w:.2f} us CPU per participant-frame "
          f"(rounds: {', '.join(f'{x / args.n * 1e6:.2f}' for x in rtc)})")
    print(f"WebRTC adds {w - p:.2f} us ({w / p:.2f}x); one core (20 ms per tick) holds "
          f"about {int(0.02 / (w * 1e-6))} WebRTC members by this measure "
          f"({int(0.02 / (p * 1e-6))} G.711)")


if __name__ == "__main__":
    main()
