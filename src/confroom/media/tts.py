"""Text-to-speech with espeak-ng, cached as 8 kHz mono 16-bit WAV files.

Owns `synthesize()`: runs `espeak-ng` in a subprocess (never blocks the loop on it), converts
the result with `load_wav`, and stores it in the cache directory under sha256(voice, text).
Files appear atomically (temp file + `os.replace`), and identical concurrent requests share one
espeak run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import wave
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from confroom.media.filecache import cached_file
from confroom.media.sources import SAMPLE_RATE, AudioFileError, load_wav

__all__ = ["ESPEAK", "TtsError", "cache_key", "synthesize"]

ESPEAK: Final = "espeak-ng"
_DEFAULT_TIMEOUT: Final = 30.0

# Requests being synthesized right now, by output path (one espeak run per distinct request).


class TtsError(Exception):
    """espeak-ng could not synthesize the text (its stderr is in the message)."""


def cache_key(text: str, voice: str) -> str:
    return hashlib.sha256(f"{voice}\0{text}".encode()).hexdigest()


async def synthesize(
    text: str, voice: str, cache_dir: Path, timeout: float = _DEFAULT_TIMEOUT
) -> Path:
    """Path of an 8 kHz mono 16-bit WAV of `text` spoken by espeak-ng voice `voice`."""
    path = Path(cache_dir) / f"tts-{cache_key(text, voice)}.wav"
    if path.exists():
        return path
    return await cached_file(path, lambda: _synthesize_to(text, voice, path, timeout))


async def _synthesize_to(text: str, voice: str, path: Path, timeout: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw_name = tempfile.mkstemp(prefix=".espeak-", suffix=".wav", dir=path.parent)
    os.close(fd)
    raw = Path(raw_name)
    try:
        await _run_espeak(text, voice, raw, timeout)
        try:
            pcm = await asyncio.to_thread(load_wav, raw)
        except AudioFileError as exc:
            raise TtsError(f"espeak-ng produced unreadable audio: {exc}") from exc
        _write_wav_atomic(path, pcm)
    finally:
        with contextlib.suppress(OSError):
            raw.unlink()
    return path


async def _run_espeak(text: str, voice: str, out: Path, timeout: float) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            ESPEAK,
            "-v",
            voice,
            "-w",
            str(out),
            "--",
            text,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise TtsError(f"cannot run {ESPEAK}: {exc}") from exc
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise TtsError(f"{ESPEAK} timed out after {timeout:g} s (voice {voice!r})") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    message = stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise TtsError(
            f"{ESPEAK} failed (exit {proc.returncode}, voice {voice!r}): {message or 'no output'}"
        )
    if not out.exists() or out.stat().st_size == 0:
        raise TtsError(f"{ESPEAK} wrote no audio (voice {voice!r}): {message or 'no output'}")


def _write_wav_atomic(path: Path, pcm: npt.NDArray[np.int16]) -> None:
    """Write 8 kHz mono 16-bit PCM to `path` via a temp file in the same directory."""
    fd, tmp_name = tempfile.mkstemp(prefix=".tts-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm.astype("<i2").tobytes())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
