"""Talking detection: real speech (espeak-ng) starts/stops, noise, tones, clicks never do."""

from __future__ import annotations

import subprocess
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE
from confroom.media.talk import TalkDetector, spectral_features
from toolcheck import require_tool

I16 = npt.NDArray[np.int16]
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
Events = list[tuple[float, int, bool]]

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Please hold while we connect your call.",
    "I think we should review the numbers before Friday. Can you hear me clearly now?",
]


# --- signal helpers ----------------------------------------------------------------------------


def resample(x: npt.NDArray[np.float64], rate_in: int, rate_out: int) -> npt.NDArray[np.float64]:
    """Band-limited resampling by truncating/zero-padding the spectrum."""
    n_out = round(len(x) * rate_out / rate_in)
    spec = np.fft.rfft(x)
    keep = n_out // 2 + 1
    spec = spec[:keep] if len(spec) >= keep else np.pad(spec, (0, keep - len(spec)))
    out: npt.NDArray[np.float64] = np.fft.irfft(spec, n_out) * (n_out / len(x))
    return out


def to_i16(x: npt.NDArray[np.float64]) -> I16:
    out: I16 = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return out


def as_frames(x: I16) -> I16:
    n = len(x) // FRAME_SAMPLES * FRAME_SAMPLES
    return np.ascontiguousarray(x[:n].reshape(-1, FRAME_SAMPLES))


def white(dbfs: float, seconds: float, seed: int) -> I16:
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    return to_i16(rng.standard_normal(n) * 32768.0 * 10 ** (dbfs / 20))


def pink(dbfs: float, seconds: float, seed: int) -> I16:
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return to_i16(x * 32768.0 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x * x)))


def tone(freq: float, dbfs: float, seconds: float) -> I16:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return to_i16(np.sqrt(2) * 32768.0 * 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t))


def silence(seconds: float) -> I16:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.int16)


def add(a: I16, b: I16) -> I16:
    n = min(len(a), len(b))
    return to_i16(a[:n].astype(np.float64) + b[:n])


def run_single(x: I16, detector: TalkDetector | None = None, member: int = 0) -> Events:
    det = detector or TalkDetector()
    events: Events = []
    ids = np.array([member])
    for i, frame in enumerate(as_frames(x)):
        now = i * FRAME_S
        events.extend((now, mid, on) for mid, on in det.update(frame[None, :], ids, now))
    return events


def onset_and_end(x: I16, start: float = 0.0) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(x) > 300)
    return start + loud[0] / SAMPLE_RATE, start + loud[-1] / SAMPLE_RATE


# --- espeak-ng speech --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, I16]:
    """8 kHz int16 speech from espeak-ng for two voices (en-us male, en+f3 female)."""
    require_tool("espeak-ng")
    tmp = tmp_path_factory.mktemp("speech")
    voices: dict[str, I16] = {}
    for voice in ("en-us", "en+f3"):
        path = Path(tmp) / f"{voice}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), " ".join(TEXTS)], check=True)
        with wave.open(str(path)) as w:
            assert w.getsampwidth() == 2 and w.getnchannels() == 1
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        voices[voice] = to_i16(resample(raw.astype(np.float64), rate, SAMPLE_RATE))
    return voices


@pytest.mark.parametrize("voice", ["en-us", "en+f3"])
@pytest.mark.parametrize("background", ["clean", "white-40", "pink-40"])
def test_speech_starts_and_stops(speech: dict[str, I16], voice: str, background: str) -> None:
    talk = speech[voice]
    x = np.concatenate([silence(1.0), talk, silence(2.0)])
    if background == "white-40":
        x = add(x, white(-40.0, len(x) / SAMPLE_RATE + 1, seed=1))
    elif background == "pink-40":
        x = add(x, pink(-40.0, len(x) / SAMPLE_RATE + 1, seed=2))
    onset, end = onset_and_end(talk, start=1.0)

    events = run_single(x)

    assert events, "speech was never detected"
    first_t, _, first_on = events[0]
    assert first_on is True
    assert onset < first_t <= onset + 0.5, (onset, events)
    last_t, _, last_on = events[-1]
    assert last_on is False
    # Stopped after the end of speech plus the 800 ms hang-over (last loud frame may be a
    # little before the last sample above our crude onset/end threshold).
    assert end + 0.5 <= last_t <= end + 0.8 + 0.3, (end, events)
    # Events alternate start/stop; sentence pauses shorter than the hang-over keep talking on.
    assert [on for _, _, on in events] == [True, False] * (len(events) // 2)
    assert len(events) <= 4


def test_talking_accessor_and_remove(speech: dict[str, I16]) -> None:
    det = TalkDetector()
    frames = as_frames(speech["en-us"])
    ids = np.array([7])
    started_at = None
    for i, frame in enumerate(frames[:100]):
        if det.update(frame[None, :], ids, i * FRAME_S):
            started_at = i
            break
    assert started_at is not None
    assert det.talking(7)
    assert not det.talking(6)
    assert not det.talking(10_000)
    det.remove(7)
    assert not det.talking(7)
    # No stop event for a removed member, even after the hang-over.
    for i in range(started_at + 1, started_at + 60):
        assert det.update(np.zeros((1, FRAME_SAMPLES), dtype=np.int16), ids, i * FRAME_S) == []


def test_fifty_members_independent_in_one_call(speech: dict[str, I16]) -> None:
    """20 members talk (at staggered times, some over noise), 15 send white noise at -30 dBFS,
    15 send silence; every tick is a single update() for all 50."""
    seconds = 14.0
    n = round(seconds * SAMPLE_RATE)
    ids = np.arange(0, 100, 2)  # non-contiguous ids
    signals: list[I16] = []
    onsets: dict[int, float] = {}
    ends: dict[int, float] = {}
    voices = [speech["en-us"], speech["en+f3"]]
    for k, mid in enumerate(ids.tolist()):
        if k < 20:
            talk = voices[k % 2][: round(6.0 * SAMPLE_RATE)]  # first ~6 s of speech
            lead = 0.5 + 0.3 * k
            x = np.concatenate([silence(lead), talk, silence(seconds)])[:n]
            if k % 4 == 3:
                x = add(x, white(-40.0, seconds, seed=50 + k))
            onsets[mid], ends[mid] = onset_and_end(talk, start=lead)
        elif k < 35:
            x = white(-30.0, seconds, seed=k)
        else:
            x = silence(seconds)
        signals.append(x)
    frames = np.stack([as_frames(x) for x in signals], axis=1)  # (ticks, 50, 160)

    det = TalkDetector(capacity=4)  # forces growth
    events: Events = []
    for i in range(frames.shape[0]):
        now = i * FRAME_S
        events.extend((now, mid, on) for mid, on in det.update(frames[i], ids, now))

    by_member: dict[int, list[tuple[float, bool]]] = {}
    for t, mid, on in events:
        by_member.setdefault(mid, []).append((t, on))
    assert set(by_member) == set(onsets), "only the talking members produce events"
    for mid, evs in by_member.items():
        assert evs[0][1] is True and evs[-1][1] is False
        assert onsets[mid] < evs[0][0] <= onsets[mid] + 0.5, (mid, onsets[mid], evs)
        assert evs[-1][0] >= ends[mid] + 0.5


# --- hysteresis (feature stage stubbed out) ----------------------------------------------------


def scripted(pattern: str, **kwargs: int) -> list[tuple[int, bool]]:
    """Run a detector whose per-frame speech decision is given by `pattern` ('1' = speech).

    Returns (frame index, on) events."""
    det = TalkDetector(**kwargs)
    flags = [c == "1" for c in pattern]
    state = {"i": 0}

    def fake_classify(
        frames: I16, members: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        zero = np.zeros(1, dtype=np.float32)
        return np.array([flags[state["i"]]]), zero, zero

    det.classify = fake_classify  # type: ignore[method-assign]
    out: list[tuple[int, bool]] = []
    for i in range(len(flags)):
        state["i"] = i
        for _, on in det.update(
            np.zeros((1, FRAME_SAMPLES), dtype=np.int16), np.array([0]), i * 0.02
        ):
            out.append((i, on))
    return out


def test_start_needs_200ms_of_speech_frames() -> None:
    assert scripted("1" * 9 + "0" * 50) == []
    assert scripted("1" * 10 + "0" * 50) == [(9, True), (49, False)]


def test_short_gaps_do_not_reset_the_run_but_long_ones_do() -> None:
    # 6-frame (120 ms) gaps are tolerated by default; the run counts speech frames only.
    assert scripted("11111" + "0" * 6 + "11111" + "0" * 45)[0] == (15, True)
    # A 7-frame gap restarts the run.
    assert scripted("11111" + "0" * 7 + "11111" + "0" * 45) == []
    # With max_gap_ms=20 only single-frame gaps are tolerated.
    assert scripted("11111" + "0" + "11111" + "0" * 45, max_gap_ms=20)[0] == (10, True)
    assert scripted("11111" + "00" + "11111" + "0" * 45, max_gap_ms=20) == []


def test_stop_after_800ms_hangover_and_restart() -> None:
    pattern = "1" * 20 + "0" * 39 + "1" + "0" * 40 + "1" * 10 + "0" * 45
    events = scripted(pattern)
    # Started at 9, the single speech frame at 59 keeps it alive, stop 40 frames after 59,
    # restart after 10 fresh speech frames, stop again.
    assert events == [(9, True), (99, False), (109, True), (149, False)]


def test_absent_member_is_stopped_after_hangover() -> None:
    det = TalkDetector()
    det.classify = lambda frames, members: (  # type: ignore[method-assign]
        np.ones(len(members), dtype=np.bool_),
        np.zeros(len(members), dtype=np.float32),
        np.zeros(len(members), dtype=np.float32),
    )
    ids = np.array([3])
    frame = np.zeros((1, FRAME_SAMPLES), dtype=np.int16)
    events = []
    for i in range(12):
        events += det.update(frame, ids, i * 0.02)
    assert events == [(3, True)]
    empty = np.zeros((0, FRAME_SAMPLES), dtype=np.int16)
    assert det.update(empty, np.zeros(0, dtype=np.intp), 11 * 0.02 + 0.78) == []
    assert det.update(empty, np.zeros(0, dtype=np.intp), 11 * 0.02 + 0.80) == [(3, False)]


# --- things that are not speech ---------------------------------------------------------------


@pytest.mark.parametrize("dbfs", [-30.0, -20.0, -10.0])
def test_white_noise_never_starts(dbfs: float) -> None:
    det = TalkDetector()
    ids = np.arange(5)
    frames = np.stack([as_frames(white(dbfs, 10.0, seed=s)) for s in range(5)], axis=1)
    for i in range(frames.shape[0]):
        assert det.update(frames[i], ids, i * FRAME_S) == []


def test_webrtcvad_alone_calls_loud_white_noise_speech() -> None:
    """Why the spectral features exist: with them disabled, -20 dBFS white noise starts."""
    det = TalkDetector(max_flatness=9.0, max_tonality=9.0, max_run_flatness=9.0)
    assert run_single(white(-20.0, 3.0, seed=9), det) != []


@pytest.mark.parametrize("dbfs", [-30.0, -20.0, -10.0])
def test_pink_noise_never_starts(dbfs: float) -> None:
    assert run_single(pink(dbfs, 10.0, seed=int(-dbfs))) == []


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
@pytest.mark.parametrize("dbfs", [-30.0, -20.0, -10.0])
def test_steady_tone_is_not_speech(freq: float, dbfs: float) -> None:
    assert run_single(tone(freq, dbfs, 5.0)) == []


def test_silence_and_quiet_noise_are_free_and_silent() -> None:
    det = TalkDetector()
    ids = np.arange(3)
    x = [silence(5.0), white(-60.0, 5.0, seed=1), white(-50.0, 5.0, seed=2)]
    frames = np.stack([as_frames(s) for s in x], axis=1)
    for i in range(frames.shape[0]):
        assert det.update(frames[i], ids, i * FRAME_S) == []
        assert det.last_gated == 0 and det.last_vad_calls == 0


BurstMaker = Callable[[dict[str, I16]], I16]


def _speech_burst(speech: dict[str, I16]) -> I16:
    x = speech["en-us"]
    energy = np.convolve(x.astype(np.float64) ** 2, np.ones(400), "valid")
    at = int(np.argmax(energy))
    return x[at : at + 400]  # the loudest 50 ms of speech: a cough-like voiced burst


def _noise_burst(_: dict[str, I16]) -> I16:
    return white(-6.0, 0.05, seed=3)


def _click(_: dict[str, I16]) -> I16:
    x = np.zeros(400, dtype=np.int16)
    x[10:14] = [30000, -30000, 20000, -20000]
    return x


@pytest.mark.parametrize("make_burst", [_speech_burst, _noise_burst, _click])
def test_short_bursts_never_start(speech: dict[str, I16], make_burst: BurstMaker) -> None:
    burst = make_burst(speech)
    assert len(burst) == 400  # 50 ms
    x = np.concatenate([np.concatenate([silence(0.73), burst]) for _ in range(10)])
    assert run_single(x) == []


def test_spectral_features_separate_noise_tone_and_speech(speech: dict[str, I16]) -> None:
    noise_flat, _ = spectral_features(as_frames(white(-30.0, 2.0, seed=4)))
    _, tone_tonality = spectral_features(as_frames(tone(1000.0, -20.0, 1.0)))
    sp = as_frames(speech["en-us"])
    level = np.sqrt(np.mean(sp.astype(np.float64) ** 2, axis=1))
    sp_flat, sp_tonality = spectral_features(sp[level > 32768 * 10 ** (-30 / 20)])
    assert np.median(noise_flat) > 0.5
    assert np.median(sp_flat) < 0.1
    assert tone_tonality.min() > 0.99
    assert np.percentile(sp_tonality, 99) < 0.985
