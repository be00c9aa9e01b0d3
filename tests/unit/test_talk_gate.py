"""Talk-gated mixing (MixBus + TalkGate) and honest talking detection on generated signals:
in-band DTMF, music-like sequences and coloured noise never start talking; espeak-ng speech
starts within 300 ms; room noise of many members does not add up; word onsets and tones are
mixed. Signals are generated once per module (tests/talk_signals.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from test_conference_core import member

from confroom.conference.audio import ConferenceAudio, MixBus, TalkGate
from confroom.conference.model import Member
from confroom.config import ConfigError, load
from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE
from confroom.media.talk import TalkDetector
from talk_signals import I16, dtmf, espeak, music, noise, sox_noise, to_i16
from toolcheck import require_tool

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
TEXT = "Hello, this is a test of the talking detector. Can you hear me now?"


def frames_of(x: I16) -> I16:
    n = len(x) // FRAME_SAMPLES * FRAME_SAMPLES
    return np.ascontiguousarray(x[:n].reshape(-1, FRAME_SAMPLES))


def dbfs(x: npt.NDArray[np.integer]) -> float:
    ms = float(np.mean(x.astype(np.float64) ** 2))
    return 10 * np.log10(ms / 32768.0**2 + 1e-20)


def starts_per_member(signals: list[I16]) -> list[list[float]]:
    """Run all signals through one detector, one member each, in one batched call per tick;
    the start times of each member."""
    det = TalkDetector()
    frames = np.stack([frames_of(x) for x in signals], axis=1)  # (T, K, 160)
    ids = np.arange(len(signals))
    starts: list[list[float]] = [[] for _ in signals]
    for t in range(frames.shape[0]):
        for mid, on in det.update(frames[t], ids, t * FRAME_S):
            if on:
                starts[mid].append(t * FRAME_S)
    return starts


# --- detection ---------------------------------------------------------------------------------

NOT_SPEECH: dict[str, Callable[[], I16]] = {
    "dtmf-12dBFS": lambda: dtmf(60.0, seed=20, dbfs=-12.0),
    "dtmf-25dBFS": lambda: dtmf(60.0, seed=21, dbfs=-25.0),
    "music-drums": lambda: music(60.0, seed=22, dbfs=-20.0),
    "music-no-drums": lambda: music(60.0, seed=23, dbfs=-15.0, drums=False),
    "white-20": lambda: noise("white", -20.0, 60.0, seed=24),
    "pink-20": lambda: noise("pink", -20.0, 60.0, seed=25),
    "brown-10": lambda: noise("brown", -10.0, 60.0, seed=26),
    "brown-30": lambda: noise("brown", -30.0, 60.0, seed=27),
    "sox-brown-15": lambda: sox_noise("brown", -15.0, 60.0),
    "sox-brown-25": lambda: sox_noise("brown", -25.0, 60.0),
}


@pytest.fixture(scope="module")
def false_starts() -> dict[str, list[float]]:
    require_tool("sox")
    names = list(NOT_SPEECH)
    starts = starts_per_member([NOT_SPEECH[n]() for n in names])
    return dict(zip(names, starts, strict=True))


@pytest.mark.parametrize("name", list(NOT_SPEECH))
def test_no_false_start_in_60s(false_starts: dict[str, list[float]], name: str) -> None:
    assert false_starts[name] == [], f"{name} started talking at {false_starts[name]}"


@pytest.fixture(scope="module")
def voices() -> dict[str, I16]:
    require_tool("espeak-ng")
    return {f"{v}@{s}": espeak(TEXT, v, s) for v in ("en-us", "en+f3") for s in (140, 220)}


@pytest.mark.parametrize("level_db", [0.0, -12.0], ids=["normal", "quiet"])
def test_speech_starts_within_300ms(voices: dict[str, I16], level_db: float) -> None:
    signals, onsets = [], []
    for x in voices.values():
        scaled = x.astype(np.float64) * 10 ** (level_db / 20)
        signals.append(to_i16(np.concatenate([np.zeros(SAMPLE_RATE), scaled,
                                              np.zeros(3 * SAMPLE_RATE)])))
        onsets.append(1.0 + np.flatnonzero(np.abs(x) > 300)[0] / SAMPLE_RATE)
    n = max(len(s) for s in signals)
    signals = [np.pad(s, (0, n - len(s))) for s in signals]
    starts = starts_per_member(signals)
    for name, onset, st in zip(voices, onsets, starts, strict=True):
        assert st, f"{name} at {level_db} dB never started"
        assert onset < st[0] <= onset + 0.3, (name, level_db, onset, st)


# --- the gate in the mix bus -------------------------------------------------------------------


def run_bus(gate: TalkGate, inputs: list[I16], listener: int) -> I16:
    """Feed each member its input frame per tick through one conference on a MixBus; what
    member `listener` hears, concatenated."""
    audio = ConferenceAudio(lambda m, t: None)
    bus = MixBus(gate=gate)
    bus.attach(audio)
    members: list[Member] = [member(f"M{i}") for i in range(len(inputs))]
    for m in members:
        audio.add(m)
    frames = [frames_of(x) for x in inputs]
    ticks = min(len(f) for f in frames)
    heard = np.zeros((ticks, FRAME_SAMPLES), dtype=np.int16)
    for t in range(ticks):
        for m, f in zip(members, frames, strict=True):
            m.media.inbound = f[t]
            m.media.mix_out = None
        bus.mix(t * FRAME_S)
        out = members[listener].media.mix_out
        assert out is not None
        heard[t] = out
    return heard.reshape(-1)


@pytest.fixture(scope="module")
def room_noise() -> list[I16]:
    """100 members' background noise at -55 dBFS (white and pink), 3 s each."""
    return [noise("white" if i % 2 else "pink", -55.0, 3.0, seed=100 + i) for i in range(100)]


def test_room_noise_of_100_members_does_not_add_up(room_noise: list[I16]) -> None:
    ungated = run_bus(TalkGate(enabled=False), room_noise, listener=0)
    gated = run_bus(TalkGate(), room_noise, listener=0)
    tail = slice(SAMPLE_RATE, None)  # after the first second
    assert -36.5 < dbfs(ungated[tail]) < -33.5  # today's behaviour: 99 x -55 dBFS = -35 dBFS
    assert dbfs(gated[tail]) <= -55.0, dbfs(gated[tail])


@pytest.fixture(scope="module")
def talker() -> I16:
    require_tool("espeak-ng")
    return espeak(TEXT, "en-us", 175)


def test_word_onset_is_not_clipped_and_noise_is_gated_after(
    room_noise: list[I16], talker: I16
) -> None:
    speech = np.concatenate([np.zeros(SAMPLE_RATE), talker.astype(np.float64),
                             np.zeros(3 * SAMPLE_RATE)])
    n = len(speech)
    bed = [noise("pink", -55.0, n / SAMPLE_RATE, seed=200 + i) for i in range(20)]
    talk_in = to_i16(speech + bed[0])
    heard = run_bus(TalkGate(), [talk_in, *bed[1:]], listener=1)
    onset = SAMPLE_RATE + int(np.flatnonzero(np.abs(talker) > 300)[0])
    # the first 300 ms of the talk spurt (before the start event and after it) reach the
    # listener: at least 97% of its energy, sample for sample
    win = slice(onset - FRAME_SAMPLES, onset + round(0.3 * SAMPLE_RATE))
    src = talk_in[win].astype(np.float64)
    got = heard[win].astype(np.float64)
    captured = 1 - np.sum((got - src) ** 2) / np.sum(src**2)
    assert captured >= 0.97, captured
    # the whole utterance is heard
    end = SAMPLE_RATE + int(np.flatnonzero(np.abs(talker) > 300)[-1])
    whole = slice(onset, end)
    assert np.sum((heard[whole] - talk_in[whole].astype(np.float64)) ** 2) <= 0.01 * np.sum(
        talk_in[whole].astype(np.float64) ** 2
    )
    # 1.5 s after the last word nobody is mixed: the listener hears digital silence
    assert not np.any(heard[end + round(1.5 * SAMPLE_RATE):])


def test_a_steady_loud_tone_is_mixed_and_quiet_noise_is_not(room_noise: list[I16]) -> None:
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    tone = to_i16(0.2 * 32767 * np.sin(2 * np.pi * 1000.0 * t))  # the e2e tests' level
    heard = run_bus(TalkGate(), [tone, *room_noise[1:10]], listener=1)
    # every frame from the first one on carries the tone, and only the tone
    assert np.array_equal(heard, tone[: len(heard)])


# --- configuration -----------------------------------------------------------------------------


def test_config_keys_env_and_validation(tmp_path: Path) -> None:
    assert load(env={}).talk_gate is True
    path = tmp_path / "c.toml"
    path.write_text("[conference]\ntalk_gate = false\ntalk_gate_hang_ms = 300\n"
                    "talk_gate_level_dbfs = -30\n")
    cfg = load(path, env={})
    assert (cfg.talk_gate, cfg.talk_gate_hang_ms, cfg.talk_gate_level_dbfs) == (False, 300, -30.0)
    cfg = load(path, env={"CONFROOM_TALK_GATE": "on", "CONFROOM_TALK_GATE_HANG_MS": "500"})
    assert (cfg.talk_gate, cfg.talk_gate_hang_ms) == (True, 500)
    assert load(env={}, overrides={"talk_gate": False}).talk_gate is False
    with pytest.raises(ConfigError, match="CONFROOM_TALK_GATE"):
        load(env={"CONFROOM_TALK_GATE": "maybe"})
    with pytest.raises(ConfigError, match="talk_gate_hang_ms"):
        load(env={"CONFROOM_TALK_GATE_HANG_MS": "-1"})
    path.write_text("[conference]\ntalk_gate = 1\n")
    with pytest.raises(ConfigError, match=r"conference\.talk_gate"):
        load(path, env={})
    path.write_text("[conference]\ntalk_gate_level_dbfs = 3\n")
    with pytest.raises(ConfigError, match="talk_gate_level_dbfs"):
        load(path, env={})
