"""Cluster pieces that need no Redis: node-to-node leg rows in the mix bus (each leg gets this
node's local sum, nothing received from a node is sent on), the pinned source guard of a
leg, and the [cluster] configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_conference_core import member

from confroom.conference.audio import ConferenceAudio, MixBus, TalkGate
from confroom.config import ConfigError, load
from confroom.media.latch import SourceGuard, Verdict
from confroom.media.sources import FRAME_SAMPLES


def const(v: int) -> np.ndarray:
    return np.full(FRAME_SAMPLES, v, dtype=np.int16)


def test_legs_get_the_local_sum_and_members_hear_everything_but_themselves() -> None:
    bus = MixBus(gate=TalkGate(enabled=False))
    audio = ConferenceAudio(lambda m, t: None)
    bus.attach(audio)
    a, b = member("A"), member("B")
    x, y = member("leg-x", leg=True), member("leg-y", leg=True)
    values = {"A": 100, "B": 20, "leg-x": 3000, "leg-y": 400}
    for m in (a, x, b, y):
        audio.add(m)
        m.media.inbound = const(values[m.call_sid])
    bus.mix(0.0)
    heard = {m.call_sid: int(m.media.mix_out[0]) for m in (a, b, x, y)}  # type: ignore[index]
    assert heard == {"A": 20 + 3000 + 400, "B": 100 + 3000 + 400,
                     "leg-x": 100 + 20, "leg-y": 100 + 20}  # no node's sum goes on


def test_a_leg_is_always_summed_and_never_talks() -> None:
    """The gate is the sending node's business: a quiet leg (its node's quiet members) is
    summed although a member that quiet would not be, and a leg never reports talking."""
    talked: list[str] = []
    bus = MixBus(gate=TalkGate(enabled=True))
    audio = ConferenceAudio(lambda m, t: talked.append(m.call_sid))
    bus.attach(audio)
    a, quiet = member("A"), member("Q")
    leg = member("leg-x", leg=True)
    for m in (a, quiet, leg):
        audio.add(m)
    rng = np.random.default_rng(1)
    for tick in range(50):
        a.media.inbound = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        quiet.media.inbound = rng.integers(-30, 30, FRAME_SAMPLES).astype(np.int16)
        leg.media.inbound = (np.sin(np.arange(FRAME_SAMPLES) * 0.3) * 8000).astype(np.int16)
        bus.mix(tick * 0.02)
    out = a.media.mix_out
    assert out is not None
    assert np.abs(out.astype(np.int32)).max() > 7000  # the leg is heard
    assert "leg-x" not in talked


def test_pinned_guard_accepts_only_its_peer() -> None:
    g = SourceGuard(30000)
    g.pin(None)
    assert g.check(("127.0.0.1", 5000), 1, 1, 160, 0.0) is Verdict.REJECTED  # nobody yet
    g.pin(("10.0.0.2", 20002))
    assert g.check(("10.0.0.3", 20002), 1, 2, 320, 0.1) is Verdict.REJECTED
    assert g.check(("10.0.0.2", 20002), 1, 3, 480, 0.2) is Verdict.CHANGED
    # even the latched stream's own SSRC/sequence from elsewhere is refused
    assert g.check(("10.0.0.2", 20004), 1, 4, 640, 0.3) is Verdict.REJECTED
    assert g.check(("10.0.0.2", 20002), 1, 5, 800, 0.4) is Verdict.SAME
    assert g.counters.rtp_source_rejected == 3


def test_cluster_config_from_toml_env_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[cluster]\nredis = "redis://10.0.0.5:6379/0"\nnode_id = "a"\n'
                    'advertise = "10.0.0.7"\n')
    cfg = load(toml, env={})
    assert (cfg.cluster_redis, cfg.cluster_node_id, cfg.node_advertise) == (
        "redis://10.0.0.5:6379/0", "a", "10.0.0.7")
    assert "10.0.0.5" not in repr(cfg)  # the URL may carry a password
    cfg = load(toml, env={"CONFROOM_REDIS": "rediss://:pw@h:6380/1", "CONFROOM_NODE_ID": "b"})
    assert (cfg.cluster_redis, cfg.cluster_node_id) == ("rediss://:pw@h:6380/1", "b")
    cfg = load(toml, env={}, overrides={"cluster_redis": "redis://x:1/2", "cluster_node_id": "c"})
    assert (cfg.cluster_redis, cfg.cluster_node_id) == ("redis://x:1/2", "c")
    assert load(None, env={}).cluster_redis == ""  # off by default
    assert load(None, env={}).node_advertise == "127.0.0.1"


@pytest.mark.parametrize(("env", "message"), [
    ({"CONFROOM_REDIS": "http://h:6379"}, "redis://, rediss:// or unix://"),
    ({"CONFROOM_NODE_ID": "bad id!"}, "node_id"),
    ({"CONFROOM_CLUSTER_ADVERTISE": "0.0.0.0"}, "not a wildcard"),
])
def test_cluster_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, env=env)


def test_the_single_node_path_never_imports_redis() -> None:
    import subprocess
    import sys

    code = ("import sys, confroom.server, confroom.cli\n"
            "from confroom.config import load\n"
            "confroom.server.Server(load(None, env={}))\n"
            "print('redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_capped_jitter_stream_plays_each_frame_on_the_tick_it_arrives() -> None:
    from confroom.media.jitter import JitterBuffer

    capped, free = JitterBuffer(depth=2, min_depth=1), JitterBuffer(depth=2, min_depth=1)
    capped.bank.cap_target(capped.index, 1)
    first = {}
    for tick in range(10):
        for name, jb in (("capped", capped), ("free", free)):
            jb.push(tick, tick * 160, bytes([tick]) * 160, ssrc=7)
            if jb.pop() is not None and name not in first:
                first[name] = tick
    assert first == {"capped": 0, "free": 1}  # one frame (20 ms) less latency
    assert capped.target == 1


def test_workers_config_and_the_workers_command_line() -> None:
    from confroom.cluster.workers import _strip_workers

    assert load(None, env={"CONFROOM_WORKERS": "4"}).workers == 4
    assert load(None, env={}, overrides={"workers": 3}).workers == 3
    assert load(None, env={"CONFROOM_REUSE_PORT": "1"}).reuse_port
    with pytest.raises(ConfigError, match="1-256"):
        load(None, env={"CONFROOM_WORKERS": "0"})
    with pytest.raises(ConfigError, match="fixed SIP port"):
        load(None, env={"CONFROOM_WORKERS": "2", "CONFROOM_SIP_PORT": "0"})
    assert _strip_workers(["serve", "--workers", "2", "--sip-port", "5060", "--workers=3"]
                          ) == ["serve", "--sip-port", "5060"]
