"""Admission control (confroom.admission): token buckets, per-source limits, headroom-based
shedding with hysteresis, draining and the shed summary. Time is passed in; nothing sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from confroom import admission as adm
from confroom.admission import (
    Admission,
    AdmissionLimits,
    Admit,
    Headroom,
    Shed,
    ShedLog,
    TokenBucket,
)
from confroom.config import ConfigError, load

# generous limits: each test tightens the one it looks at
OPEN = AdmissionLimits(max_calls_in_setup=10_000, max_call_rate=1e6, call_burst=1e6,
                       source_rate=1e6, source_burst=1e6, source_max_in_setup=10_000)


def shed_reason(v: Admit | Shed) -> str | None:
    return v.reason if isinstance(v, Shed) else None


def test_token_bucket_burst_then_rate() -> None:
    b = TokenBucket(rate=10.0, burst=3.0, now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait_time(100.0) == pytest.approx(0.1)
    assert not b.take(100.05)
    assert b.take(100.11)
    # idle time refills, but never beyond the burst
    assert b.full(200.0)
    assert sum(b.take(200.0) for _ in range(10)) == 3


def test_token_bucket_time_going_backwards_is_harmless() -> None:
    b = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert b.take(10.0)
    assert not b.take(9.0)
    assert b.take(11.0)


def test_per_source_rate_sheds_only_that_source_with_retry_after() -> None:
    a = Admission(AdmissionLimits(source_rate=2.0, source_burst=4.0, max_call_rate=1e6,
                                  call_burst=1e6), now=0.0)
    verdicts = [a.decide("10.0.0.1", 0.0) for _ in range(6)]
    assert [shed_reason(v) for v in verdicts] == [None] * 4 + [adm.SOURCE_RATE] * 2
    last = verdicts[-1]
    assert isinstance(last, Shed) and last.retry_after == 1  # 0.5 s rounded up to 1 s
    # another address is not affected
    assert isinstance(a.decide("10.0.0.2", 0.0), Admit)
    # the flooder gets a token back after 1/rate
    assert isinstance(a.decide("10.0.0.1", 0.5), Admit)


def test_calls_in_setup_caps_total_and_per_source() -> None:
    lim = AdmissionLimits(max_calls_in_setup=3, source_max_in_setup=2, max_call_rate=1e6,
                          call_burst=1e6, source_rate=1e6, source_burst=1e6)
    a = Admission(lim, now=0.0)
    for _ in range(2):
        assert isinstance(a.decide("a", 0.0), Admit)
        a.setup_started("a")
    assert shed_reason(a.decide("a", 0.0)) == adm.SOURCE_SETUP
    assert isinstance(a.decide("b", 0.0), Admit)
    a.setup_started("b")
    assert shed_reason(a.decide("c", 0.0)) == adm.SETUP_FULL
    a.setup_done("a")
    assert a.in_setup == 2
    assert isinstance(a.decide("a", 0.0), Admit)


def test_global_call_rate() -> None:
    a = Admission(AdmissionLimits(max_call_rate=5.0, call_burst=2.0, source_rate=1e6,
                                  source_burst=1e6), now=0.0)
    assert [shed_reason(a.decide(f"s{i}", 0.0)) for i in range(3)] == [None, None, adm.RATE]
    assert isinstance(a.decide("s9", 0.2), Admit)


@pytest.mark.parametrize(("headroom", "reason"), [
    (Headroom(clock_lateness=0.08), adm.CLOCK_LATE),
    (Headroom(tick_duration=0.015), adm.CLOCK_LATE),  # 75 % of the 20 ms period
    (Headroom(cpu=0.95), adm.CPU),
    (Headroom(free_ports=1), adm.NO_PORTS),
    (Headroom(open_fds=1000, fd_limit=1024), adm.NO_FDS),
])
def test_headroom_sheds(headroom: Headroom, reason: str) -> None:
    a = Admission(OPEN, now=0.0)
    assert isinstance(a.decide("x", 0.0), Admit)
    a.update(headroom, 0.0)
    if reason in (adm.CLOCK_LATE, adm.CPU):  # overload counts only when it lasts 2 samples
        assert isinstance(a.decide("x", 0.0), Admit)
        a.update(headroom, 0.25)
    v = a.decide("x", 0.25)
    assert isinstance(v, Shed) and v.reason == reason and v.retry_after == OPEN.retry_after


def test_one_hot_sample_is_not_overload() -> None:
    a = Admission(OPEN, now=0.0)
    for t in range(10):  # a late tick every other sample: the machine, not a lasting overload
        a.update(Headroom(clock_lateness=0.2 if t % 2 else 0.0), t * 0.25)
        assert a.overloaded is None


def test_overload_has_hysteresis() -> None:
    a = Admission(OPEN, now=0.0)
    a.update(Headroom(clock_lateness=0.08), -0.25)
    a.update(Headroom(clock_lateness=0.08), 0.0)
    assert a.overloaded == adm.CLOCK_LATE
    # below the upper threshold but not clearly calm (> half of it): still shedding
    a.update(Headroom(clock_lateness=0.04), 1.0)
    a.update(Headroom(clock_lateness=0.04), 5.0)
    assert shed_reason(a.decide("x", 5.0)) == adm.CLOCK_LATE
    # calm, but not for recover_after (2 s) yet
    a.update(Headroom(clock_lateness=0.001), 6.0)
    a.update(Headroom(clock_lateness=0.001), 7.5)
    assert a.overloaded is not None
    # a new spike restarts the wait
    a.update(Headroom(cpu=0.99), 7.6)
    assert shed_reason(a.decide("x", 7.6)) == adm.CPU
    a.update(Headroom(), 7.7)
    a.update(Headroom(), 9.6)
    assert a.overloaded is not None
    a.update(Headroom(), 9.8)
    assert a.overloaded is None
    assert isinstance(a.decide("x", 9.8), Admit)


def test_draining_sheds_everything_with_the_drain_retry_after() -> None:
    a = Admission(OPEN, now=0.0)
    a.draining = True
    v = a.decide("x", 0.0)
    assert isinstance(v, Shed) and v.reason == adm.DRAINING
    assert v.retry_after == OPEN.drain_retry_after


def test_source_state_is_bounded() -> None:
    a = Admission(AdmissionLimits(max_sources=100, source_rate=1.0, source_burst=1.0,
                                  max_call_rate=1e6, call_burst=1e6), now=0.0)
    for i in range(1000):
        a.decide(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(a) == 100
    # a source seen again is the most recent: it keeps its (empty) bucket
    assert shed_reason(a.decide("10.0.3.231", 0.0)) == adm.SOURCE_RATE


def test_shed_log_one_line_per_interval() -> None:
    log = ShedLog(interval=10.0, now=0.0, top=2)
    assert log.summary(5.0) is None
    for _ in range(500):
        log.record(adm.SOURCE_RATE, "192.0.2.7")
    for i in range(30):
        log.record(adm.SETUP_FULL, f"198.51.100.{i}")
    assert log.summary(9.9) is None
    line = log.summary(10.0)
    assert line is not None
    assert line.startswith("shed 530 new call(s) in the last 10s with 503: ")
    assert f"{adm.SOURCE_RATE}=500" in line and f"{adm.SETUP_FULL}=30" in line
    assert "192.0.2.7=500" in line and "(+29 more)" in line
    # counts restart; a quiet interval writes nothing
    assert log.summary(20.0) is None
    log.record(adm.DRAINING, "a")
    assert log.summary(25.0) is None
    assert log.summary(30.0) == ("shed 1 new call(s) in the last 10s with 503: draining=1; "
                                 "top sources: a=1")


def test_limits_config_toml_env_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[sip]\nudp_rcvbuf = 1048576\n[limits]\nsource_rate = 5\n"
                    "max_calls_in_setup = 7\ndrain_time = 12.5\nlog_interval = 3\n")
    cfg = load(path, env={})
    assert cfg.sip_udp_rcvbuf == 1 << 20
    assert cfg.limits.source_rate == 5.0 and cfg.limits.max_calls_in_setup == 7
    assert cfg.drain_time == 12.5 and cfg.shed_log_interval == 3.0
    cfg = load(path, env={"CONFROOM_LIMITS_SOURCE_RATE": "9", "CONFROOM_DRAIN_TIME": "4"})
    assert cfg.limits.source_rate == 9.0 and cfg.drain_time == 4.0
    assert load(path, env={}, overrides={"drain_time": 0.0}).drain_time == 0.0
    assert load(None, env={}).drain_time == 30.0


@pytest.mark.parametrize(("toml", "env", "message"), [
    ("[limits]\nsource_rat = 5\n", {}, "limits.source_rat: unknown key"),
    ("[limits]\nmax_calls_in_setup = 2.5\n", {}, "whole number"),
    ("[limits]\nmax_cpu = -1\n", {}, "expected a number >= 0"),
    ("[limits]\nmax_cpu = \"high\"\n", {}, "expected a number >= 0"),
    ("", {"CONFROOM_LIMITS_MAX_CPU": "lots"}, "CONFROOM_LIMITS_MAX_CPU: expected a number"),
    ("", {"CONFROOM_LIMITS_NOPE": "1"}, "CONFROOM_LIMITS_NOPE: unknown key"),
    ("[limits]\nlog_interval = 0\n", {}, "limits.log_interval must be > 0"),
])
def test_limits_config_errors(tmp_path: Path, toml: str, env: dict[str, str],
                              message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load(path, env=env)


def test_trusted_sources_skip_the_per_source_limits_only() -> None:
    lim = AdmissionLimits(source_rate=1.0, source_burst=1.0, source_max_in_setup=1,
                          max_calls_in_setup=9, max_call_rate=1e6, call_burst=1e6,
                          trusted_sources=("192.0.2.10", "10.1.0.0/16", "2001:db8::/32"))
    a = Admission(lim, now=0.0)
    for source in ("192.0.2.10", "10.1.200.3", "2001:db8::7"):
        for _ in range(3):  # beyond the source rate and the source setup cap
            assert isinstance(a.decide(source, 0.0), Admit), source
            a.setup_started(source)
    # the node-wide cap still holds for them
    assert shed_reason(a.decide("192.0.2.10", 0.0)) == adm.SETUP_FULL
    # an address outside the networks keeps its per-source limits
    b = Admission(lim, now=0.0)
    assert isinstance(b.decide("192.0.2.11", 0.0), Admit)
    assert shed_reason(b.decide("192.0.2.11", 0.0)) == adm.SOURCE_RATE
    assert not b.trusted("not an address")


def test_trusted_sources_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[limits]\ntrusted_sources = ["192.0.2.10", "10.1.0.0/16"]\n')
    assert load(path, env={}).limits.trusted_sources == ("192.0.2.10", "10.1.0.0/16")
    env = {"CONFROOM_LIMITS_TRUSTED_SOURCES": "198.51.100.0/24, 192.0.2.1"}
    assert load(path, env=env).limits.trusted_sources == ("198.51.100.0/24", "192.0.2.1")
    path.write_text('[limits]\ntrusted_sources = ["10.0.0.0/33"]\n')
    with pytest.raises(ConfigError, match=r"trusted_sources.*10\.0\.0\.0/33"):
        load(path, env={})
    path.write_text('[limits]\ntrusted_sources = 5\n')
    with pytest.raises(ConfigError, match="trusted_sources"):
        load(path, env={})
