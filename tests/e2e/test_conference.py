"""The conference verb end to end: real SIPp calls, a real webhook app, audio checked by FFT."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from tests.e2e.conftest import ConfroomFactory
from tests.e2e.harness import (
    HookApp,
    RtpPeer,
    SippRunner,
    tone_power,
)

pytestmark = pytest.mark.e2e


def server_addr(peer: RtpPeer, timeout: float = 15.0) -> tuple[str, int]:
    """Where the server sends this peer's RTP from (symmetric RTP: send there)."""
    pkts = peer.wait_packets(1, timeout=timeout, payload_types=[0])
    return pkts[0].source


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
