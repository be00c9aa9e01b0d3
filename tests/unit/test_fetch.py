"""fetch_audio against a local aiohttp server: caching, validation, HTTP errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from confroom.media.fetch import FetchError, fetch_audio
from confroom.media.sources import AudioFileError, load_wav
from gccheck import confroom_garbage, no_automatic_gc


def wav_bytes() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(1600) / 3) * 8000).astype("<i2").tobytes())
    return buf.getvalue()


class Server:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        if name == "ok.wav":
            await asyncio.sleep(0.05)
            return web.Response(body=wav_bytes(), content_type="audio/wav")
        if name == "text.wav":
            return web.Response(text="<html>not audio</html>")
        if name == "slow.wav":
            await asyncio.sleep(1)
        if name == "big.wav":  # 1 MB, chunked (no Content-Length to refuse it early)
            resp = web.StreamResponse()
            await resp.prepare(request)
            with contextlib.suppress(ConnectionError, RuntimeError):
                for _ in range(16):
                    await resp.write(b"\0" * 65536)
            return resp
        raise web.HTTPNotFound()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_get("/{name}", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    srv.base = f"http://127.0.0.1:{port}"
    yield srv
    await runner.cleanup()


async def test_download_validate_and_cache(server: Server, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{server.base}/ok.wav"
        paths = await asyncio.gather(*(fetch_audio(url, tmp_path, session) for _ in range(3)))
        assert len(set(paths)) == 1 and server.hits["ok.wav"] == 1
        assert load_wav(paths[0]).size == 800
        again = await fetch_audio(url, tmp_path, session)
        assert again == paths[0] and server.hits["ok.wav"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]


async def test_http_error(server: Server, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{server.base}/missing.wav"
        with pytest.raises(FetchError) as info:
            await fetch_audio(url, tmp_path, session)
    assert info.value.status == 404 and info.value.url == url
    assert "404" in str(info.value) and url in str(info.value)
    assert list(tmp_path.iterdir()) == []


async def test_not_audio(server: Server, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{server.base}/text.wav"
        with pytest.raises(AudioFileError, match=r"text\.wav"):
            await fetch_audio(url, tmp_path, session)
    assert list(tmp_path.iterdir()) == []


async def test_timeout_and_bad_scheme(server: Server, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FetchError, match="timed out"):
            await fetch_audio(f"{server.base}/slow.wav", tmp_path, session, timeout=0.2)
        with pytest.raises(FetchError, match="http"):
            await fetch_audio("file:///etc/passwd", tmp_path, session)


async def test_oversized_body_is_refused(server: Server, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FetchError, match="response larger than 100000 bytes"):
            await fetch_audio(f"{server.base}/big.wav", tmp_path, session, max_bytes=100_000)
    assert list(tmp_path.iterdir()) == []


async def test_failed_downloads_leave_no_reference_cycles(server: Server, tmp_path: Path) -> None:
    """The shared download task keeps its error; the error's traceback frames must not keep
    the task (and the request's objects) in a cycle."""
    async with aiohttp.ClientSession() as session:
        await fetch_audio(f"{server.base}/ok.wav", tmp_path, session)  # warm up
        with no_automatic_gc():
            for name in ("missing.wav", "text.wav", "slow.wav", "big.wav"):
                with contextlib.suppress(FetchError, AudioFileError):
                    await fetch_audio(f"{server.base}/{name}", tmp_path, session, timeout=0.2,
                                      max_bytes=100_000)
            with contextlib.suppress(FetchError):
                await fetch_audio("http://127.0.0.1:9/refused.wav", tmp_path, session)
            assert confroom_garbage() == []
