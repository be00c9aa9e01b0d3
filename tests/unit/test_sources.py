"""Audio sources and WAV loading."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from confroom.media import g711
from confroom.media.sources import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AudioFileError,
    PcmSource,
    SequenceSource,
    SilenceSource,
    Source,
    ToneSource,
    load_wav,
)
from toolcheck import require_tool


def drain(source: Source, limit: int = 10_000) -> list[npt.NDArray[np.int16]]:
    frames: list[npt.NDArray[np.int16]] = []
    for _ in range(limit):
        f = source.read()
        if f is None:
            return frames
        assert f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16
        frames.append(f)
    raise AssertionError("source did not finish")


def peak_hz(x: npt.NDArray[np.int16] | npt.NDArray[np.float64], rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> npt.NDArray[np.float64]:
    t = np.arange(round(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def write_wav(path: Path, samples: npt.NDArray[np.float64], rate: int, width: int) -> Path:
    """`samples` in -1..1, shape (n,) or (n, channels), written as integer PCM."""
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    scale = float(2 ** (8 * width - 1) - 1)
    ints = np.rint(samples * scale).astype(np.int64).reshape(-1)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        b = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
        raw = np.ascontiguousarray(b).tobytes()
    else:
        raw = ints.astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


# --- sources -----------------------------------------------------------------------------------


def test_silence_source() -> None:
    frames = drain(SilenceSource(0.1))
    assert len(frames) == 5 and all(not f.any() for f in frames)
    assert len(drain(SilenceSource(0.01))) == 1  # rounded up to a whole frame
    assert drain(SilenceSource(0)) == []
    forever = SilenceSource(None)
    assert all(forever.read() is not None for _ in range(1000))


def test_tone_frequency_and_duration() -> None:
    frames = drain(ToneSource([1000.0], 0.5))
    assert len(frames) == 25
    pcm = np.concatenate(frames)
    assert peak_hz(pcm) == pytest.approx(1000, abs=5)
    assert np.abs(pcm).max() == pytest.approx(0.3 * 32767, rel=0.01)


def test_tone_phase_is_continuous_across_frames() -> None:
    pcm = np.concatenate(drain(ToneSource([440.0], 0.2, amplitude=0.5))).astype(np.float64)
    expected = 0.5 * 32767 * np.sin(2 * np.pi * 440 * np.arange(pcm.size) / SAMPLE_RATE)
    assert np.max(np.abs(pcm - expected)) <= 1.0


def test_dual_tone() -> None:
    pcm = np.concatenate(drain(ToneSource([350.0, 440.0], 1.0, amplitude=0.2)))
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    freqs = np.fft.rfftfreq(pcm.size, 1 / SAMPLE_RATE)
    top2 = sorted(float(f) for f in freqs[np.argsort(spectrum)[-2:]])
    assert top2 == [350.0, 440.0]


def test_tone_partial_last_frame_is_padded() -> None:
    frames = drain(ToneSource([1000.0], 0.025))  # 200 samples -> 2 frames
    assert len(frames) == 2
    assert not frames[1][40:].any()
    assert frames[1][:40].any()


def test_pcm_source_pads_last_frame() -> None:
    pcm = np.arange(1, 401, dtype=np.int16)  # 2.5 frames
    frames = drain(PcmSource(pcm))
    assert len(frames) == 3
    np.testing.assert_array_equal(np.concatenate(frames)[:400], pcm)
    assert not frames[2][80:].any()


def test_pcm_source_loops_seamlessly() -> None:
    pcm = np.arange(1, 101, dtype=np.int16)  # 100 samples
    frames = drain(PcmSource(pcm, loops=3))  # 300 samples -> 2 frames
    assert len(frames) == 2
    out = np.concatenate(frames)
    np.testing.assert_array_equal(out[:300], np.tile(pcm, 3))
    assert not out[300:].any()


def test_pcm_source_forever() -> None:
    pcm = np.arange(1, 161, dtype=np.int16)
    src = PcmSource(pcm, loops=0)
    for _ in range(500):
        f = src.read()
        assert f is not None
        np.testing.assert_array_equal(f, pcm)
    assert drain(PcmSource(np.zeros(0, np.int16), loops=0)) == []


def test_sequence_source() -> None:
    seq = SequenceSource(
        [
            SilenceSource(0.04),
            PcmSource(np.zeros(0, np.int16)),  # empty in the middle is skipped
            ToneSource([1000.0], 0.06),
            PcmSource(np.full(160, 7, np.int16)),
        ]
    )
    frames = drain(seq)
    assert len(frames) == 6
    assert not frames[0].any() and not frames[1].any()
    assert frames[2].any()
    assert (frames[5] == 7).all()


# --- WAV loading -------------------------------------------------------------------------------


def test_load_wav_16bit_8k_mono(tmp_path: Path) -> None:
    pcm = (sine(1000, 0.5, 8000) * 32767).round().astype(np.int16)
    path = write_wav(tmp_path / "a.wav", pcm / 32767.0, 8000, 2)
    np.testing.assert_array_equal(load_wav(path), pcm)


def test_load_wav_16k_stereo_is_downmixed_and_resampled(tmp_path: Path) -> None:
    left = sine(600, 1.0, 16000, 0.4)
    right = sine(600, 1.0, 16000, 0.4) + sine(6000, 1.0, 16000, 0.4)  # 6 kHz must vanish
    path = write_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, 2)
    pcm = load_wav(path)
    assert pcm.dtype == np.int16 and abs(pcm.size - 8000) <= 1
    assert peak_hz(pcm) == pytest.approx(600, abs=5)
    # Downmix: 600 Hz at 0.4 in both channels -> 0.4; the 6 kHz image (2 kHz alias) is filtered.
    core = pcm[200:-200].astype(np.float64)
    assert np.abs(core).max() / 32767 == pytest.approx(0.4, abs=0.03)
    spectrum = np.abs(np.fft.rfft(core * np.hanning(core.size)))
    freqs = np.fft.rfftfreq(core.size, 1 / 8000)
    alias = spectrum[(freqs > 1900) & (freqs < 2100)].max()
    assert alias < spectrum.max() / 100


@pytest.mark.parametrize(("rate", "width"), [(8000, 1), (44100, 3), (11025, 4), (6000, 2)])
def test_load_wav_widths_and_rates(tmp_path: Path, rate: int, width: int) -> None:
    path = write_wav(tmp_path / "w.wav", sine(440, 0.5, rate), rate, width)
    pcm = load_wav(path)
    assert abs(pcm.size - 4000) <= 1
    assert peak_hz(pcm) == pytest.approx(440, abs=5)
    assert np.abs(pcm[100:-100]).max() / 32767 == pytest.approx(0.5, abs=0.03)


def _sox(tmp_path: Path, name: str, *args: str) -> Path:
    require_tool("sox")
    out = tmp_path / name
    subprocess.run(
        ["sox", "-n", *args, str(out), "synth", "0.5", "sine", "1000", "vol", "0.5"],
        check=True,
    )
    return out


@pytest.mark.parametrize(
    "args",
    [
        ("-r", "8000", "-c", "1", "-e", "u-law"),
        ("-r", "8000", "-c", "1", "-e", "a-law"),
        ("-r", "16000", "-c", "2", "-e", "u-law"),
        ("-r", "22050", "-c", "2", "-b", "24"),  # sox writes WAVE_FORMAT_EXTENSIBLE here
        ("-r", "16000", "-c", "1", "-e", "floating-point", "-b", "32"),
    ],
)
def test_load_wav_made_by_sox(tmp_path: Path, args: tuple[str, ...]) -> None:
    pcm = load_wav(_sox(tmp_path, "x.wav", *args))
    assert abs(pcm.size - 4000) <= 1
    assert peak_hz(pcm) == pytest.approx(1000, abs=5)
    assert np.abs(pcm[100:-100]).max() / 32767 == pytest.approx(0.5, abs=0.03)


def test_ulaw_wav_matches_g711_decode(tmp_path: Path) -> None:
    path = _sox(tmp_path, "u.wav", "-r", "8000", "-c", "1", "-e", "u-law")
    raw = path.read_bytes()
    codes = np.frombuffer(raw[raw.index(b"data") + 8 :], np.uint8)
    np.testing.assert_array_equal(load_wav(path), g711.decode("PCMU", codes))


def test_load_wav_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioFileError, match=r"missing\.wav"):
        load_wav(missing)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(AudioFileError, match=r"notes\.wav"):
        load_wav(text)
    truncated = tmp_path / "short.wav"
    truncated.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(AudioFileError, match=r"short\.wav"):
        load_wav(truncated)
    assert issubclass(AudioFileError, ValueError)


def test_load_wav_unsupported_encoding(tmp_path: Path) -> None:
    path = _sox(tmp_path, "adpcm.wav", "-r", "8000", "-e", "ima-adpcm")
    with pytest.raises(AudioFileError, match=r"adpcm\.wav.*unsupported"):
        load_wav(path)


def test_load_wav_empty_data(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "e.wav", np.zeros(0), 16000, 2)
    assert load_wav(path).size == 0
