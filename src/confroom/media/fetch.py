"""Download of remote audio files (http/https) into the local cache.

Owns `fetch_audio()`: streams a URL into the cache directory under sha256(url), checks that the
result is a WAV `load_wav` can read, and returns its path. Cached files are reused without
revalidation; files appear atomically (temp file + `os.replace`); identical concurrent requests
share one download. The body is read with the cap of `confroom.httpbody` (the read stops as soon
as it passes `max_bytes`). A failure's traceback is dropped before it leaves
(`confroom.memory.forget_traceback`): the shared download task holds the error, and the
traceback's frames would otherwise keep it, the task and the request's objects in a cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Final

import aiohttp

from confroom.httpbody import BodyTooLarge, iter_body
from confroom.media.filecache import cached_file
from confroom.media.sources import AudioFileError, load_wav
from confroom.memory import forget_traceback

__all__ = ["MAX_AUDIO_BYTES", "FetchError", "cache_path", "fetch_audio"]

MAX_AUDIO_BYTES: Final = 64 * 1024 * 1024


class FetchError(Exception):
    """The audio could not be downloaded (HTTP error status, network error, timeout)."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def cache_path(url: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"url-{hashlib.sha256(url.encode()).hexdigest()}.wav"


async def fetch_audio(
    url: str,
    cache_dir: Path,
    session: aiohttp.ClientSession,
    timeout: float = 10.0,
    max_bytes: int = MAX_AUDIO_BYTES,
) -> Path:
    """Path of the cached copy of the WAV at `url`, downloading it if needed.

    Raises `FetchError` for non-http(s) URLs, HTTP errors (with the status), network errors,
    timeouts and oversized bodies; `AudioFileError` if the body is not a readable WAV.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise FetchError(f"unsupported audio URL (http/https only): {url}", url)
    path = cache_path(url, cache_dir)
    if path.exists():
        return path
    try:
        return await cached_file(path, lambda: _download(url, path, session, timeout, max_bytes))
    except (FetchError, AudioFileError, OSError) as exc:
        forget_traceback(exc)
        raise


async def _download(
    url: str, path: Path, session: aiohttp.ClientSession, timeout: float, max_bytes: int
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".fetch-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            await _stream_to(url, f, session, timeout, max_bytes)
        try:
            await asyncio.to_thread(load_wav, tmp_name)  # may be large: keep it off the loop
        except AudioFileError as exc:
            reason = str(exc).removeprefix(f"{tmp_name}: ")
            raise AudioFileError(f"{url}: not a usable audio file: {reason}") from exc
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return path


async def _stream_to(
    url: str,
    f: BinaryIO,
    session: aiohttp.ClientSession,
    timeout: float,
    max_bytes: int,
) -> None:
    write = f.write
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status >= 400:
                raise FetchError(
                    f"GET {url} failed: HTTP {resp.status} {resp.reason or ''}".rstrip(),
                    url,
                    resp.status,
                )
            try:
                async for chunk in iter_body(resp, max_bytes):
                    write(chunk)
            except BodyTooLarge as exc:
                resp.close()  # drop the connection: the rest is never read
                raise FetchError(f"GET {url}: {exc}", url) from None
    except TimeoutError:
        raise FetchError(f"GET {url} timed out after {timeout:g} s", url) from None
    except aiohttp.ClientError as exc:
        raise FetchError(f"GET {url} failed: {exc}", url) from exc
