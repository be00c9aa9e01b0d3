"""The codec settings ([media] codecs, codec_priority, opus_*): TOML, environment, flags,
validation, and the policy the server builds from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from confroom.config import ConfigError, load
from confroom.server import codec_policy


def test_defaults_and_policy() -> None:
    cfg = load(env={})
    assert cfg.codecs == ("OPUS", "G722", "PCMU", "PCMA") and cfg.codec_priority == "caller"
    policy = codec_policy(cfg)
    assert policy.codecs == cfg.codecs and not policy.prefer_ours
    assert (policy.opus.bitrate, policy.opus.complexity) == (32000, 5)


def test_toml_then_environment_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[media]\ncodecs = ["g722", "PCMU"]\ncodec_priority = "server"\n'
                 "opus_bitrate = 24000\nopus_complexity = 3\n")
    cfg = load(f, env={})
    assert cfg.codecs == ("G722", "PCMU") and cfg.codec_priority == "server"
    assert codec_policy(cfg).prefer_ours
    assert (cfg.opus_bitrate, cfg.opus_complexity) == (24000, 3)
    cfg = load(f, env={"CONFROOM_CODECS": "opus, pcma", "CONFROOM_CODEC_PRIORITY": "caller",
                       "CONFROOM_OPUS_BITRATE": "48000", "CONFROOM_OPUS_COMPLEXITY": "10"})
    assert cfg.codecs == ("OPUS", "PCMA") and cfg.codec_priority == "caller"
    assert (cfg.opus_bitrate, cfg.opus_complexity) == (48000, 10)
    cfg = load(f, env={}, overrides={"codecs": "pcmu", "codec_priority": "caller"})
    assert cfg.codecs == ("PCMU",) and cfg.codec_priority == "caller"


@pytest.mark.parametrize(("toml", "env", "message"), [
    ('[media]\ncodecs = ["G729"]\n', {}, "unknown codec(s) G729"),
    ("[media]\ncodecs = []\n", {}, "empty list"),
    ('[media]\ncodecs = ["PCMU", "pcmu"]\n', {}, "listed twice"),
    ("", {"CONFROOM_CODECS": "speex"}, "CONFROOM_CODECS: unknown codec(s) SPEEX"),
    ('[media]\ncodec_priority = "ours"\n', {}, "codec_priority"),
    ("[media]\nopus_complexity = 11\n", {}, "complexity 11 out of 0..10"),
    ("", {"CONFROOM_OPUS_BITRATE": "1000"}, "bitrate 1000 out of"),
])
def test_bad_values_are_refused_clearly(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(f, env=env)
