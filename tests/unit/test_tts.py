"""TTS with the real espeak-ng: 8 kHz mono output, caching, concurrency, errors."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from confroom.media import filecache, tts
from confroom.media.sources import load_wav
from toolcheck import require_tool


@pytest.fixture(autouse=True)
def _espeak() -> None:
    require_tool("espeak-ng")


class SpawnCounter:
    """Counts subprocess launches while delegating to the real implementation."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, ...]] = []
        real = asyncio.create_subprocess_exec

        async def spy(*args: str, **kwargs: object) -> asyncio.subprocess.Process:
            self.calls.append(args)
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)


async def test_hello_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spawns = SpawnCounter(monkeypatch)
    path = await tts.synthesize("hello world", "en", tmp_path)
    assert path.parent == tmp_path and path.exists()
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        seconds = w.getnframes() / 8000
    assert 0.4 < seconds < 5.0
    pcm = load_wav(path)
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300  # clearly not silence
    assert len(spawns.calls) == 1
    assert spawns.calls[0][-2:] == ("--", "hello world")
    mtime = path.stat().st_mtime_ns

    again = await tts.synthesize("hello world", "en", tmp_path)
    assert again == path and len(spawns.calls) == 1 and path.stat().st_mtime_ns == mtime
    # Only the final file is left behind (no temp files).
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


async def test_concurrent_identical_requests_share_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawns = SpawnCounter(monkeypatch)
    results = await asyncio.gather(
        *(tts.synthesize("one two three", "en", tmp_path) for _ in range(5))
    )
    assert len(set(results)) == 1 and len(spawns.calls) == 1
    other = await tts.synthesize("one two three", "en-us", tmp_path)  # another voice, another key
    assert other != results[0] and len(spawns.calls) == 2


async def test_text_starting_with_a_dash_is_spoken_not_parsed(tmp_path: Path) -> None:
    path = await tts.synthesize("-v minus", "en", tmp_path)
    assert load_wav(path).size > 0


async def test_unknown_voice_raises_with_stderr(tmp_path: Path) -> None:
    with pytest.raises(tts.TtsError, match="voice"):
        await tts.synthesize("hello", "nosuchvoice", tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert not filecache._inflight  # nothing left in flight after a failure


async def test_missing_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tts, "ESPEAK", "espeak-ng-does-not-exist")
    with pytest.raises(tts.TtsError, match="cannot run"):
        await tts.synthesize("hello", "en", tmp_path)
