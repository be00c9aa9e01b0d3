"""Outbound configuration ([outbound], [[trunks]], env, flags) and policy: routing, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from confroom.config import ConfigError, load
from confroom.outbound import LimitExceeded, OutboundLimiter, Refused, route

TOML = """
[outbound]
allowed_domains = ["sip.partner.example", "10.0.0.5:5080"]
max_concurrent_calls = 3
calls_per_second = 2.5
[[trunks]]
name = "uk"
uri = "sip:uk.trunk.example:5062;transport=tcp"
username = "acct"
password = "pw"
prefix = ["+44"]
strip = 3
prepend = "0"
[[trunks]]
name = "default"
host = "any.trunk.example"
"""


def _cfg(tmp_path: Path, text: str = TOML, env: dict[str, str] | None = None,
         **over: object):  # type: ignore[no-untyped-def]
    f = tmp_path / "c.toml"
    f.write_text(text)
    return load(f, env=env or {}, overrides=over)


def test_config_trunks_and_policy(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.outbound_allowed_domains == ("sip.partner.example", "10.0.0.5:5080")
    assert cfg.outbound_max_concurrent_calls == 3 and cfg.outbound_calls_per_second == 2.5
    uk, default = cfg.trunks
    assert (uk.host, uk.port, uk.transport, uk.username, uk.prefixes) == (
        "uk.trunk.example", 5062, "tcp", "acct", ("+44",))
    assert "pw" not in repr(uk)
    assert default.prefixes == () and default.port is None


def test_env_and_flags_win(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, env={"CONFROOM_OUTBOUND_ALLOWED_DOMAINS": "a.example, b.example",
                              "CONFROOM_OUTBOUND_MAX_CONCURRENT_CALLS": "7"},
               outbound_calls_per_second=9.0)
    assert cfg.outbound_allowed_domains == ("a.example", "b.example")
    assert cfg.outbound_max_concurrent_calls == 7 and cfg.outbound_calls_per_second == 9.0
    cfg = _cfg(tmp_path, outbound_allowed_domains="c.example")
    assert cfg.outbound_allowed_domains == ("c.example",)


@pytest.mark.parametrize(("text", "msg"), [
    ('[[trunks]]\nname = "x"\n', "exactly one of 'uri'"),
    ('[[trunks]]\nname = "x"\nhost = "h"\nusername = "u"\n', "go together"),
    ('[[trunks]]\nname = "x"\nuri = "http://h"\n', "not a sip: URI"),
    ('[[trunks]]\nname = "x"\nuri = "sip:h;transport=tls"\n', "not dial out over TLS"),
    ('[outbound]\nallowed_domains = ["sip:x@y"]\n', "not a domain"),
    ('[outbound]\nmax_concurrent_calls = -1\n', "max_concurrent_calls"),
    ('[outbound]\ncalls_per_second = 0\n', "calls_per_second"),
    ('[outbound]\nallowed = []\n', "unknown key"),
])
def test_config_errors(tmp_path: Path, text: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        _cfg(tmp_path, text)


def test_route_phone_via_trunks(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    r = route(cfg, {"type": "phone", "number": "+442071234567"})
    assert r.trunk == "uk" and r.uri == "sip:02071234567@uk.trunk.example:5062;transport=tcp"
    assert (r.host, r.port, r.transport) == ("uk.trunk.example", 5062, "tcp")
    assert r.credentials is not None and r.credentials.username == "acct"
    r = route(cfg, {"type": "phone", "number": "15551234"})
    assert r.trunk == "default" and r.uri == "sip:15551234@any.trunk.example"
    assert r.port == 5060 and r.credentials is None
    r = route(cfg, {"type": "phone", "number": "15551234", "trunk": "uk",
                    "auth": {"username": "me", "password": "pw2"}})
    assert r.trunk == "uk" and r.credentials is not None and r.credentials.username == "me"
    with pytest.raises(Refused, match="no outbound trunk named"):
        route(cfg, {"type": "phone", "number": "15551234", "trunk": "nope"})
    with pytest.raises(Refused, match="not a phone number"):
        route(cfg, {"type": "phone", "number": "1234@evil.example"})


def test_route_sip_only_allowed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    r = route(cfg, {"type": "sip", "sipUri": "sip:bob@SIP.partner.example"})
    assert r.trunk is None and (r.host, r.port) == ("sip.partner.example", 5060)
    r = route(cfg, {"type": "sip", "sipUri": "sip:bob@10.0.0.5:5080?X-Evil=1"})
    assert r.uri == "sip:bob@10.0.0.5:5080"
    with pytest.raises(Refused, match="not an allowed outbound domain"):
        route(cfg, {"type": "sip", "sipUri": "sip:bob@10.0.0.5:5090"})
    with pytest.raises(Refused, match="not an allowed outbound domain"):
        route(cfg, {"type": "sip", "sipUri": "sip:premium@pay.example"})
    r = route(cfg, {"type": "sip", "sipUri": "sip:900@any.trunk.example"})
    assert r.trunk == "default"
    with pytest.raises(Refused, match="not supported for outbound"):
        route(cfg, {"type": "sip", "sipUri": "sips:bob@sip.partner.example"})
    with pytest.raises(Refused, match="target type"):
        route(cfg, {"type": "user", "name": "x"})
    empty = _cfg(tmp_path, "")
    with pytest.raises(Refused):
        route(empty, {"type": "sip", "sipUri": "sip:bob@127.0.0.1"})
    with pytest.raises(Refused, match="no outbound trunk"):
        route(empty, {"type": "phone", "number": "123"})


def test_limiter_concurrency_and_rate() -> None:
    lim = OutboundLimiter(max_concurrent=2, calls_per_second=2.0)
    lim.acquire("a", 0.0)
    lim.acquire("a", 0.0)
    with pytest.raises(LimitExceeded, match="max_concurrent_calls = 2"):
        lim.acquire("a", 10.0)
    lim.release("a")
    lim.acquire("a", 10.0)
    # rate: burst of 2 at t=20, the third at once is refused, after 0.5 s allowed
    lim2 = OutboundLimiter(max_concurrent=100, calls_per_second=2.0)
    lim2.acquire("b", 20.0)
    lim2.acquire("b", 20.0)
    with pytest.raises(LimitExceeded, match="calls_per_second") as e:
        lim2.acquire("b", 20.0)
    assert e.value.retry_after == 1
    lim2.acquire("b", 20.5)
    assert lim2.refused == {"rate": 1}
    zero = OutboundLimiter(max_concurrent=0, calls_per_second=1.0)
    with pytest.raises(LimitExceeded):
        zero.acquire("a", 0.0)
