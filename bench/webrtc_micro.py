"""Micro-benchmark: CPU per participant-frame of a WebRTC member (SRTP + Opus, and SRTP + PCMU)
against a G.711 member, in one run.

`python bench/webrtc_micro.py --n 500 --ticks 500` builds n sessions of one kind in one
`MediaEngine` (fake transports, no sockets) and, per 20 ms tick, feeds every session one
received 20 ms packet through `MediaSession.on_datagram()` and runs `engine.tick()` (the mix is
sent to every session). The kinds, timed alternately round after round so that load changes
hit them alike:
  g711       plain RTP, PCMU;
  srtp-pcmu  a WebRTC member on PCMU: SRTP (AES_CM_128_HMAC_SHA1_80, keys as DTLS would give
             them; the session has its `WebRtcTransport`, so packets go through the RFC 7983
             demultiplexing), unprotected on the way in and protected on the way out;
  opus       plain RTP, Opus (a 16 kHz tone in, decoded; the mix encoded), to split the cost;
  srtp-opus  a WebRTC member as a browser joins: SRTP + Opus.
The result is the median CPU time per tick divided by n. The plain G.711 path here goes through
`on_datagram()` too, which costs more than the engine's batched receive of latched G.711
sockets: the G.711 figure is an upper bound, the differences lower bounds. Every member sends
a tone (no silence): Opus is at its dearest. Results: bench/RESULTS.md, "WebRTC members".
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from confroom.media.codecs import make_encoder
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


KINDS = ("g711", "srtp-pcmu", "opus", "srtp-opus")
LABELS = {"g711": "G.711 (plain RTP, PCMU)", "srtp-pcmu": "WebRTC (SRTP, PCMU)",
          "opus": "Opus (plain RTP)", "srtp-opus": "WebRTC (SRTP, Opus)"}


def payloads(opus: bool, count: int = 50) -> tuple[list[bytes], int, int]:
    """`count` received 20 ms payloads of a tone, the payload type and the RTP units per
    frame."""
    if not opus:
        frame = (np.sin(np.arange(160) * 0.3) * 8000).astype(np.int16)
        return [g711_encode("PCMU", frame).tobytes()] * count, 0, 160
    enc = make_encoder("OPUS")
    tone = (np.sin(np.arange(320 * count) * 2 * np.pi * 440 / 16000) * 8000).astype(np.int16)
    return [enc.encode(tone[i * 320:(i + 1) * 320]) for i in range(count)], 111, 960


def run(n: int, ticks: int, kind: str) -> float:
    """Median seconds of CPU per tick (receive one packet per session + tick)."""
    webrtc, opus = kind.startswith("srtp"), kind.endswith("opus")
    engine = MediaEngine("127.0.0.1", 20000, 20000 + 2 * n + 2, rtp_timeout=0)
    identity = DtlsIdentity.generate()
    frame = (np.sin(np.arange(160) * 0.3) * 8000).astype(np.int16)
    received, pt, step = payloads(opus)
    sessions: list[tuple[MediaSession, SrtpContext | None, tuple[str, int]]] = []
    for i in range(n):
        s = MediaSession(20000 + 2 * i)
        addr = ("10.0.0.9", 40000 + i)
        s.update("OPUS" if opus else "PCMU", pt, 101, addr[0], addr[1], "sendrecv")
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
        header_fields = (t & 0xFFFF, (t * step) & 0xFFFFFFFF)
        payload = received[t % len(received)]
        packets = []
        for s, peer, addr in sessions:
            pkt = build_rtp_header(pt, False, header_fields[0], header_fields[1],
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
    # the work was done: every session sent a packet a tick and heard what it was sent
    assert engine.stats.packets_sent >= n * (ticks - 5), (kind, engine.stats.packets_sent)
    assert all(s.inbound is not None and np.abs(s.inbound).max() > 1000 for s, _, _ in sessions)
    return statistics.median(times[50:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--ticks", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated, of {', '.join(KINDS)} (g711 always runs)")
    args = ap.parse_args()
    kinds = ["g711"] + [k for k in args.kinds.split(",") if k in KINDS and k != "g711"]
    per: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):  # interleaved, so load changes hit every kind alike
        for k in kinds:
            per[k].append(run(args.n, args.ticks, k) / args.n * 1e6)
    print(f"n={args.n} ticks={args.ticks} rounds={args.rounds}")
    base = statistics.median(per["g711"])
    for k in kinds:
        us = statistics.median(per[k])
        print(f"{LABELS[k] + ':':26} {us:7.2f} us CPU per participant-frame, {us / base:5.2f}x "
              f"G.711, one core holds about {int(20000 / us)} "
              f"(rounds: {', '.join(f'{x:.2f}' for x in per[k])})")


if __name__ == "__main__":
    main()
