"""Conference mixing: N-1 mixes (one and many conferences), clipping, coach/whisper, beeps."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from confroom.media.mixer import beep_frames, mix, mix_conferences, mix_with_audience
from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE

I16 = npt.NDArray[np.int16]


def tone_frame(freq: float, amplitude: float = 6000.0, n: int = FRAME_SAMPLES * 4) -> I16:
    t = np.arange(n) / SAMPLE_RATE
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def peak_freqs(x: I16, threshold: float = 0.2) -> set[int]:
    """Frequencies (Hz, rounded to the bin) whose magnitude exceeds threshold x max."""
    mag = np.abs(np.fft.rfft(x.astype(np.float64)))
    if mag.max() == 0:
        return set()
    bins = np.flatnonzero(mag > threshold * mag.max())
    return {round(b * SAMPLE_RATE / len(x)) for b in bins.tolist()}


def naive_mix(frames: I16, speaking: npt.NDArray[np.bool_], overlay: I16 | None = None) -> I16:
    out = np.zeros_like(frames)
    for i in range(frames.shape[0]):
        acc = np.zeros(FRAME_SAMPLES, dtype=np.int64)
        if overlay is not None:
            acc += overlay
        for j in range(frames.shape[0]):
            if j != i and speaking[j]:
                acc += frames[j]
        out[i] = np.clip(acc, -32768, 32767)
    return out


def naive_audience(
    frames: I16,
    speaking: npt.NDArray[np.bool_],
    restricted: npt.NDArray[np.intp],
    group: npt.NDArray[np.intp],
) -> I16:
    out = np.zeros_like(frames)
    for i in range(frames.shape[0]):
        acc = np.zeros(FRAME_SAMPLES, dtype=np.int64)
        for j in range(frames.shape[0]):
            if j == i or not speaking[j]:
                continue
            if restricted[j] < 0 or (group[i] >= 0 and restricted[j] == group[i]):
                acc += frames[j]
        out[i] = np.clip(acc, -32768, 32767)
    return out


def test_three_tones_each_hears_the_other_two() -> None:
    # 4 frames' worth of samples per member so the FFT resolves 10 Hz bins; mix per 160 chunk.
    freqs = [400.0, 1000.0, 2200.0]
    signals = np.stack([tone_frame(f) for f in freqs])
    chunks = signals.reshape(3, 4, FRAME_SAMPLES)
    speaking = np.ones(3, dtype=np.bool_)
    out = np.concatenate([mix(chunks[:, k], speaking) for k in range(4)], axis=1)
    for i, own in enumerate(freqs):
        heard = peak_freqs(out[i])
        others = {round(f) for j, f in enumerate(freqs) if j != i}
        assert others <= heard
        assert round(own) not in heard


def test_non_speaking_member_is_not_heard_but_hears() -> None:
    freqs = [400.0, 1000.0, 2200.0]
    frames = np.stack([tone_frame(f, n=FRAME_SAMPLES * 4)[:FRAME_SAMPLES] for f in freqs])
    speaking = np.array([True, True, False])  # member 2 muted
    out = mix(frames, speaking)
    expected_all = frames[0].astype(np.int32) + frames[1]
    np.testing.assert_array_equal(out[2], expected_all)  # muted member hears both
    np.testing.assert_array_equal(out[0], frames[1])  # others do not hear member 2
    np.testing.assert_array_equal(out[1], frames[0])


def test_single_member_hears_silence() -> None:
    frames = tone_frame(1000.0)[:FRAME_SAMPLES].reshape(1, FRAME_SAMPLES)
    out = mix(frames, np.array([True]))
    assert out.shape == (1, FRAME_SAMPLES)
    assert not out.any()


def test_no_members() -> None:
    out = mix(np.zeros((0, FRAME_SAMPLES), dtype=np.int16), np.zeros(0, dtype=np.bool_))
    assert out.shape == (0, FRAME_SAMPLES)


@pytest.mark.parametrize("value", [32767, -32768])
def test_clips_instead_of_wrapping(value: int) -> None:
    frames = np.full((4, FRAME_SAMPLES), value, dtype=np.int16)
    out = mix(frames, np.ones(4, dtype=np.bool_))
    assert (out == (32767 if value > 0 else -32768)).all()


def test_clipping_with_mixed_signs_is_exact() -> None:
    frames = np.zeros((3, FRAME_SAMPLES), dtype=np.int16)
    frames[0] = 30000
    frames[1] = 30000
    frames[2] = -20000
    out = mix(frames, np.ones(3, dtype=np.bool_))
    assert (out[0] == 10000).all()  # 30000 - 20000
    assert (out[1] == 10000).all()
    assert (out[2] == 32767).all()  # 60000 clipped


def test_reuses_out_buffer() -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(-1000, 1000, (5, FRAME_SAMPLES), dtype=np.int16)
    buf = np.full((5, FRAME_SAMPLES), 123, dtype=np.int16)
    out = mix(frames, np.ones(5, dtype=np.bool_), buf)
    assert out is buf
    np.testing.assert_array_equal(out, naive_mix(frames, np.ones(5, dtype=np.bool_)))


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        mix(np.zeros((2, 80), dtype=np.int16), np.ones(2, dtype=np.bool_))
    with pytest.raises(ValueError):
        mix(np.zeros((2, FRAME_SAMPLES), dtype=np.int16), np.ones(3, dtype=np.bool_))
    with pytest.raises(TypeError):
        mix(np.zeros((2, FRAME_SAMPLES), dtype=np.float32), np.ones(2, dtype=np.bool_))


@pytest.mark.parametrize("m", [1, 2, 3, 7, 50, 300])
@pytest.mark.parametrize("loud", [False, True])
def test_vectorised_mix_matches_naive_loop(m: int, loud: bool) -> None:
    rng = np.random.default_rng(m * 2 + loud)
    hi = 32767 if loud else 3000
    for _ in range(5):
        frames = rng.integers(-hi - 1, hi, (m, FRAME_SAMPLES), dtype=np.int16, endpoint=True)
        speaking = rng.random(m) < 0.6
        np.testing.assert_array_equal(mix(frames, speaking), naive_mix(frames, speaking))


def test_coach_is_heard_only_by_its_group() -> None:
    # 0: customer, 1: agent (tag "agents" = group 0), 2: coach speakOnlyTo "agents",
    # 3: another listener without tag.
    freqs = [400.0, 1000.0, 2200.0, 3000.0]
    frames = np.stack([tone_frame(f)[:FRAME_SAMPLES] for f in freqs])
    speaking = np.ones(4, dtype=np.bool_)
    restricted = np.array([-1, -1, 0, -1])
    group = np.array([-1, 0, -1, -1])
    out = mix_with_audience(frames, speaking, restricted, group)
    i32 = frames.astype(np.int32)
    np.testing.assert_array_equal(out[0], i32[1] + i32[3])  # customer: no coach
    np.testing.assert_array_equal(out[1], i32[0] + i32[2] + i32[3])  # agent hears the coach
    np.testing.assert_array_equal(out[2], i32[0] + i32[1] + i32[3])  # coach hears public
    np.testing.assert_array_equal(out[3], i32[0] + i32[1])  # no coach
    np.testing.assert_array_equal(out, naive_audience(frames, speaking, restricted, group))


def test_restricted_speaker_inside_its_own_group_does_not_hear_itself() -> None:
    frames = np.stack([np.full(FRAME_SAMPLES, v, dtype=np.int16) for v in (100, 20, 3)])
    speaking = np.ones(3, dtype=np.bool_)
    restricted = np.array([-1, 0, 0])
    group = np.array([-1, 0, 0])
    out = mix_with_audience(frames, speaking, restricted, group)
    assert (out[0] == 0).all()  # hears neither whisperer
    assert (out[1] == 103).all()
    assert (out[2] == 120).all()


def test_audience_without_restricted_speakers_equals_plain_mix() -> None:
    rng = np.random.default_rng(11)
    frames = rng.integers(-5000, 5000, (20, FRAME_SAMPLES), dtype=np.int16)
    speaking = rng.random(20) < 0.5
    restricted = np.full(20, -1)
    restricted[~speaking] = 1  # restricted but not speaking: no effect
    group = rng.integers(-1, 3, 20)
    np.testing.assert_array_equal(
        mix_with_audience(frames, speaking, restricted, group), mix(frames, speaking)
    )


@pytest.mark.parametrize("m", [2, 9, 64, 500])
def test_vectorised_audience_matches_naive_loop(m: int) -> None:
    rng = np.random.default_rng(100 + m)
    for _ in range(5):
        frames = rng.integers(-32768, 32767, (m, FRAME_SAMPLES), dtype=np.int16, endpoint=True)
        frames[: m // 2] //= 8  # some quiet, some loud rows
        speaking = rng.random(m) < 0.5
        restricted = np.where(rng.random(m) < 0.3, rng.integers(0, 4, m), -1)
        group = rng.integers(-1, 4, m)
        np.testing.assert_array_equal(
            mix_with_audience(frames, speaking, restricted, group),
            naive_audience(frames, speaking, restricted, group),
        )


def test_overlay_is_added_to_everyone_with_clipping() -> None:
    frames = np.zeros((3, FRAME_SAMPLES), dtype=np.int16)
    frames[0] = 32000
    overlay = np.full(FRAME_SAMPLES, 1000, dtype=np.int16)
    out = mix(frames, np.ones(3, dtype=np.bool_), overlay=overlay)
    assert (out[0] == 1000).all()
    assert (out[1] == 32767).all()
    assert (out[2] == 32767).all()


def test_beep_frames_shape_level_and_fades() -> None:
    frames = beep_frames()
    assert len(frames) == 10  # 200 ms
    assert all(f.dtype == np.int16 and f.shape == (FRAME_SAMPLES,) for f in frames)
    x = np.concatenate(frames).astype(np.float64)
    assert np.abs(x).max() <= 0.25 * 32767 + 1
    assert np.abs(x).max() > 0.24 * 32767
    assert abs(x[0]) < 50 and abs(x[-1]) < 50  # starts and ends at ~0: no click
    assert np.abs(x[:5]).max() < 0.05 * 32767  # fading in over 5 ms (40 samples)
    # No sample-to-sample jump larger than the steepest point of the full-amplitude sine.
    max_step = 0.25 * 32767 * 2 * np.pi * 1000 / SAMPLE_RATE
    assert np.abs(np.diff(x)).max() <= max_step + 2
    assert peak_freqs(np.concatenate(frames), 0.5) == {1000}


def test_beep_partial_last_frame_is_zero_padded() -> None:
    frames = beep_frames(duration_s=0.03)
    assert len(frames) == 2
    assert not frames[1][80:].any()


def test_mix_conferences_matches_per_conference_mixes() -> None:
    rng = np.random.default_rng(11)
    sizes = [1, 5, 3, 40, 2]
    data = rng.integers(-20000, 20000, (sum(sizes), FRAME_SAMPLES), dtype=np.int16)
    speaking = rng.random(sum(sizes)) < 0.7
    starts = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
    conf_of_row = np.repeat(np.arange(len(sizes)), sizes).astype(np.intp)
    beep = beep_frames()[2]
    out, totals = mix_conferences(data, speaking, starts, conf_of_row, overlays={3: beep})
    for c, (a, n) in enumerate(zip(starts, sizes, strict=True)):
        rows = slice(int(a), int(a) + n)
        expected = naive_mix(data[rows], speaking[rows])
        total = data[rows][speaking[rows]].sum(axis=0, dtype=np.int32)
        if c == 3:  # the overlay is added to everything that conference's members hear
            total = total + beep
            expected = naive_mix(data[rows], speaking[rows], overlay=beep)
        np.testing.assert_array_equal(out[rows], expected)
        np.testing.assert_array_equal(totals[c], total)
    # nobody hears another conference: a lone member hears silence
    assert not out[0].any()


