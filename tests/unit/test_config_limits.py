"""The connection-limit and User-Agent settings: TOML, environment, flags, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from confroom.config import ConfigError, load


def test_defaults() -> None:
    cfg = load(env={})
    assert cfg.user_agent == "confroom/0.1"
    assert (cfg.sip_tcp_max_connections, cfg.sip_tcp_max_per_source) == (0, 0)  # auto
    assert (cfg.sip_tcp_message_timeout, cfg.sip_tcp_idle_timeout) == (10.0, 300.0)
    assert cfg.sip_max_message_bytes == 65536
    assert (cfg.http_max_connections, cfg.http_max_per_source) == (0, 0)
    assert (cfg.http_header_timeout, cfg.http_body_timeout, cfg.http_keepalive_timeout) == (
        10.0, 10.0, 15.0)


def test_toml_then_environment_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        '[sip]\nuser_agent = "acme"\ntcp_max_connections = 50\ntcp_max_per_source = 5\n'
        'tcp_message_timeout = 2.5\ntcp_idle_timeout = 60\nmax_message_bytes = 8192\n'
        '[http]\nmax_connections = 20\nmax_per_source = 4\nheader_timeout = 3\n'
        'body_timeout = 4\nkeepalive_timeout = 5\n'
    )
    cfg = load(f, env={})
    assert cfg.user_agent == "acme"
    assert (cfg.sip_tcp_max_connections, cfg.sip_tcp_max_per_source) == (50, 5)
    assert (cfg.sip_tcp_message_timeout, cfg.sip_tcp_idle_timeout) == (2.5, 60.0)
    assert cfg.sip_max_message_bytes == 8192
    assert (cfg.http_max_connections, cfg.http_max_per_source) == (20, 4)
    assert (cfg.http_header_timeout, cfg.http_body_timeout, cfg.http_keepalive_timeout) == (
        3.0, 4.0, 5.0)
    env = {"CONFROOM_SIP_USER_AGENT": "", "CONFROOM_SIP_TCP_MAX_CONNECTIONS": "70",
           "CONFROOM_HTTP_KEEPALIVE_TIMEOUT": "7.5"}
    cfg = load(f, env=env)
    assert cfg.user_agent == ""  # empty = no User-Agent / Server header
    assert cfg.sip_tcp_max_connections == 70 and cfg.http_keepalive_timeout == 7.5
    cfg = load(f, env=env, overrides={"user_agent": "flag", "sip_tcp_max_per_source": 9,
                                      "sip_tcp_idle_timeout": 1.5})
    assert (cfg.user_agent, cfg.sip_tcp_max_per_source, cfg.sip_tcp_idle_timeout) == (
        "flag", 9, 1.5)


@pytest.mark.parametrize(("toml", "env", "message"), [
    ('[sip]\ntcp_max_connections = "many"\n', {}, "sip.tcp_max_connections: expected a number"),
    ("[sip]\ntcp_idle_timeout = -1\n", {}, "sip.tcp_idle_timeout must be >= 0"),
    ("[sip]\ntcp_message_timeout = 0\n", {}, "sip.tcp_message_timeout must be > 0"),
    ("[sip]\nmax_message_bytes = 100\n", {}, "sip.max_message_bytes must be at least 4096"),
    ("[sip]\nuser_agent = 5\n", {}, "sip.user_agent: expected a string"),
    ("", {"CONFROOM_SIP_USER_AGENT": "a\r\nX-Injected: 1"}, "sip.user_agent: printable"),
    ("", {"CONFROOM_HTTP_MAX_PER_SOURCE": "x"}, "CONFROOM_HTTP_MAX_PER_SOURCE: expected an "
                                                "integer"),
    ("", {"CONFROOM_HTTP_BODY_TIMEOUT": "soon"}, "CONFROOM_HTTP_BODY_TIMEOUT: expected a number"),
    ("[http]\nkeepalive_timeout = 0\n", {}, "http.keepalive_timeout must be > 0"),
])
def test_bad_values_are_named(tmp_path: Path, toml: str, env: dict[str, str],
                              message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load(f, env=env)
