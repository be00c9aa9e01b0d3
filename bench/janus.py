"""Janus AudioBridge as the benchmark peer: configs, process, and the HTTP API.

Set up as in ../shared/notes/janus-audiobridge.md: only the AudioBridge plugin and the HTTP
transport are loaded (plugins/transports folders hold symlinks to just those two .so files),
HTTP API on 127.0.0.1, admin API off, ICE-lite, mDNS off, no session timeout; AudioBridge with
local_ip 127.0.0.1, a wide RTP port range and events off. Rooms are created through the API
(sampling_rate 8000, allow_rtp_participants); each plain-RTP participant joins with
codec "pcmu" and an `rtp` object naming its own UDP address, and learns the port Janus uses
from the asynchronous `joined` event (session long poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["JanusClient", "JanusProcess"]

_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")


class JanusProcess:
    """A Janus process with its configs in a temp dir, pinned with taskset."""

    def __init__(self, http_port: int = 8088, rtp_range: str = "40000-60000", cpu: str = "0"):
        self.http_port = http_port
        self.rtp_range = rtp_range
        self.cpu = cpu
        self.dir = Path(tempfile.mkdtemp(prefix="bench-janus-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def write_configs(self) -> None:
        d = self.dir
        for sub in ("plugins", "transports", "events", "loggers"):
            (d / sub).mkdir(exist_ok=True)
        os.symlink(_LIB / "plugins/libjanus_audiobridge.so", d / "plugins/libjanus_audiobridge.so")
        os.symlink(_LIB / "transports/libjanus_http.so", d / "transports/libjanus_http.so")
        (d / "janus.jcfg").write_text(
            "general: {\n"
            f'  configs_folder = "{d}"\n'
            f'  plugins_folder = "{d}/plugins"\n'
            f'  transports_folder = "{d}/transports"\n'
            f'  events_folder = "{d}/events"\n'
            f'  loggers_folder = "{d}/loggers"\n'
            "  debug_level = 2\n"
            "  session_timeout = 0\n"
            '  interface = "127.0.0.1"\n'
            "}\n"
            "media: {\n}\n"
            "nat: {\n  ice_lite = true\n  ignore_mdns = true\n  nice_debug = false\n}\n"
            "plugins: {\n}\ntransports: {\n}\nevents: {\n  broadcast = false\n}\n"
        )
        (d / "janus.transport.http.jcfg").write_text(
            "general: {\n"
            '  json = "compact"\n  base_path = "/janus"\n  http = true\n'
            f'  port = {self.http_port}\n  ip = "127.0.0.1"\n  https = false\n'
            "}\n"
            "admin: {\n  admin_http = false\n  admin_https = false\n}\n"
        )
        (d / "janus.plugin.audiobridge.jcfg").write_text(
            "general: {\n"
            '  local_ip = "127.0.0.1"\n'
            f'  rtp_port_range = "{self.rtp_range}"\n'
            "  events = false\n"
            "}\n"
        )

    def start(self) -> int:
        self.write_configs()
        log = open(self.dir / "janus.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.cpu, "janus", "-F", str(self.dir),
             "-C", str(self.dir / "janus.jcfg")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = (self.dir / "janus.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class JanusClient:
    """One Janus session, a long-poll task for its events, one handle per participant."""

    def __init__(self, http: aiohttp.ClientSession, port: int = 8088) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}/janus"
        self.session_id = 0
        self._tx = itertools.count(1)
        self._joined: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._poll: asyncio.Task[None] | None = None
        self.events = 0
        self.kinds: Counter[str] = Counter()
        self.last_event = 0.0

    async def wait_ready(self, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                async with self.http.get(self.base + "/info") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise TimeoutError("janus did not come up")
            await asyncio.sleep(0.2)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": f"t{next(self._tx)}"}
        async with self.http.post(self.base + path, json=body) as r:
            data: dict[str, Any] = await r.json(content_type=None)
        if data.get("janus") == "error":
            raise RuntimeError(f"janus error: {data}")
        return data

    async def create_session(self) -> None:
        data = await self._post("", {"janus": "create"})
        self.session_id = int(data["data"]["id"])
        self._poll = asyncio.get_running_loop().create_task(self._long_poll())

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poll
        if self.session_id:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._post(f"/{self.session_id}", {"janus": "destroy"}), 5)

    async def _long_poll(self) -> None:
        loop = asyncio.get_running_loop()
        url = f"{self.base}/{self.session_id}?maxev=2000"
        while True:
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=40)) as r:
                    data = await r.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.05)
                continue
            events = data if isinstance(data, list) else [data]
            for ev in events:
                kind = ev.get("janus", "")
                if kind == "keepalive":
                    continue
                self.events += 1
                self.last_event = loop.time()
                pd = ev.get("plugindata", {}).get("data", {})
                self.kinds[str(pd.get("audiobridge", kind))] += 1
                if pd.get("audiobridge") == "joined" and "rtp" in pd:
                    fut = self._joined.get(int(ev.get("sender", 0)))
                    if fut is not None and not fut.done():
                        fut.set_result(pd)
                elif pd.get("error_code") is not None:
                    fut = self._joined.get(int(ev.get("sender", 0)))
                    if fut is not None and not fut.done():
                        fut.set_exception(RuntimeError(str(pd)))

    async def attach(self) -> int:
        data = await self._post(
            f"/{self.session_id}", {"janus": "attach", "plugin": "janus.plugin.audiobridge"}
        )
        return int(data["data"]["id"])

    async def message(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post(
            f"/{self.session_id}/{handle}", {"janus": "message", "body": body}
        )

    async def create_room(self, handle: int, room: int) -> None:
        data = await self.message(
            handle,
            {
                "request": "create",
                "room": room,
                "sampling_rate": 8000,
                "allow_rtp_participants": True,
                "audiolevel_event": False,
                "record": False,
                "permanent": False,
            },
        )
        pd = data.get("plugindata", {}).get("data", {})
        if pd.get("audiobridge") != "created":
            raise RuntimeError(f"room create failed: {data}")

    async def join_rtp(
        self, room: int, display: str, ip: str, port: int, timeout: float = 30.0
    ) -> tuple[int, int]:
        """Attach a handle and join `room` as a plain-RTP PCMU participant sending from and
        receiving on ip:port. Returns (handle, the port Janus receives on for it)."""
        handle = await self.attach()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._joined[handle] = fut
        try:
            await self.message(
                handle,
                {
                    "request": "join",
                    "room": room,
                    "display": display,
                    "codec": "pcmu",
                    "rtp": {"ip": ip, "port": port, "payload_type": 0},
                },
            )
            pd = await asyncio.wait_for(fut, timeout)
        finally:
            self._joined.pop(handle, None)
        return handle, int(pd["rtp"]["port"])

    async def quiet(self, idle: float = 1.0, timeout: float = 120.0) -> None:
        """Wait until no event arrived for `idle` seconds (the join storm is drained)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if loop.time() - self.last_event >= idle:
                return
            await asyncio.sleep(0.2)
