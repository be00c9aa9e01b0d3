"""Conference load generator: N participants in M conferences against confroom or Janus.

    python3 bench/loadgen.py --target confroom --n 10 --m 2
    python3 bench/loadgen.py --target janus --n 200 --m 40 --json out.json

One process, one uvloop loop, one UDP socket for all participants' RTP (their streams are told
apart by the server-side port they come from), `sendmmsg`/`recvmmsg` through ctypes (see
rtpio.py). Every 20 ms one timer fills all participants' packets at once (numpy: pre-encoded
tone payloads, header fields) and sends them in a few syscalls. The server is pinned to CPU 0,
the generator to CPU 1.

confroom: real SIP calls (sipua.py) routed by a webhook app served by this process
(`[{"verb":"conference","name":<the To user>}]`). Janus: the AudioBridge HTTP API (janus.py).

Measured over a steady window after a warm-up: delivered frames per participant (% of 50/s),
inter-arrival p50/p99 (kernel receive timestamps), the spread of (arrival - RTP timestamp) per
stream (latency drift), added latency of marker bursts (one member of a few conferences sends
a 3.6 kHz burst once a second; two other members look for it in what they receive), a spectral
spot check of the N-1 mix (hear the others' tones, not your own), server CPU % and RSS from
/proc, and the generator's own CPU and tick lateness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import uvloop
from aiohttp import WSMsgType, web

sys.path.insert(0, str(Path(__file__).resolve().parent))

import audio
from janus import JanusClient, JanusProcess
from rtpio import PACKET, RtpSocket, sockaddr_in
from sipua import Call, SipError, SipUac

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK = 0.020
SPOT_CONFS = 4  # conferences whose first three members are spot-checked


@dataclass
class Options:
    target: str = "confroom"
    n: int = 10
    m: int = 2
    warmup: float = 8.0
    window: float = 25.0
    server_cpu: str = "0"
    gen_cpu: int = 1
    concurrency: int = 64
    sip_port: int = 15060
    janus_port: int = 8088
    log_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    confroom_log_level: str = "INFO"
    profile: Path | None = None  # py-spy record of the server over the window (collapsed)


# --- /proc -----------------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def cpu_busy_seconds() -> tuple[float, float]:
    """All CPUs' busy time outside interrupts (user+nice+system+steal...), and the time in
    irq+softirq (loopback packet delivery is partly accounted there, to no process)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    irq = v[5] + v[6]
    return (sum(v) - v[3] - v[4] - irq) / CLK_TCK, irq / CLK_TCK


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --- the load ----------------------------------------------------------------------------------


class Load:
    """Participants' send state, what was received, and the per-tick timer."""

    def __init__(self, n: int, m: int, rtp: RtpSocket) -> None:
        self.n = n
        self.m = m
        self.rtp = rtp
        rng = np.random.default_rng(12345)
        self.conf = np.arange(n) % m  # participant i is in conference i % m
        sizes = np.bincount(self.conf, minlength=m)
        # whole-Hz tones; 3 Hz apart when they fit in 300-3300 Hz (short windows resolve them)
        spacing = 3 if n <= 1000 else 1
        self.freq = 300.0 + spacing * (np.arange(n) % (3000 // spacing))
        self.bank = np.empty((n, audio.CYCLE, audio.FRAME), dtype=np.uint8)
        self.amp = np.array([min(2000.0, 6000.0 / math.sqrt(float(sizes[c]))) for c in self.conf])
        self.phase = rng.uniform(0, 2 * np.pi, n)
        for i in range(n):
            self.bank[i] = audio.tone_cycle(float(self.freq[i]), self.amp[i], self.phase[i])
        self.cycle_off = rng.integers(0, audio.CYCLE, n)
        self.seq0 = rng.integers(0, 65536, n, dtype=np.int64)
        self.ts0 = rng.integers(0, 1 << 32, n, dtype=np.int64)
        self.ssrc = rng.integers(1, 1 << 32, n, dtype=np.int64)
        self.packets = np.zeros((n, PACKET), dtype=np.uint8)
        self.packets[:, 0] = 0x80
        self.packets[:, 1] = 0  # PCMU
        for b in range(4):
            self.packets[:, 8 + b] = (self.ssrc >> (24 - 8 * b)) & 0xFF
        self.dest: list[bytes] = [sockaddr_in("127.0.0.1", 9)] * n
        self.active = np.zeros(n, dtype=bool)
        self._dirty = True
        self.k = 0
        self.port2idx = np.full(65536, -1, dtype=np.int64)
        # spot checks: members 0, 1, 2 of the first few conferences; member 0 sends markers
        self.spots: list[list[int]] = []
        for c in range(min(m, SPOT_CONFS)):
            members = [i for i in range(c, n, m)][:3]
            if len(members) >= 2:
                self.spots.append(members)
        self.is_spot = np.zeros(n, dtype=bool)
        for grp in self.spots:
            self.is_spot[grp] = True
        self.markers = [grp[0] for grp in self.spots if len(grp) >= 2]
        # marker j fires when k % CYCLE == 7 j: its frames there are tone + burst
        self.marked: dict[int, npt.NDArray[np.uint8]] = {}
        burst = audio.marker_pcm()
        for j, i in enumerate(self.markers):
            pcm = audio.tone_pcm(float(self.freq[i]), self.amp[i], self.phase[i])
            at = (7 * j + self.cycle_off[i] + np.arange(len(burst))) % audio.CYCLE
            self.marked[i] = audio.ulaw_encode(pcm[at] + burst)
        self.marker_sends: dict[int, list[int]] = {i: [] for i in self.markers}
        # receive state
        self.rx_total = np.zeros(n, dtype=np.int64)
        self.recording = False
        self.chunks: list[tuple[npt.NDArray[np.int64], ...]] = []
        self.spot_chunks: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                     npt.NDArray[np.uint8]]] = []
        self.unknown_rx = 0
        self.lateness: list[float] = []
        self.tick_cost: list[float] = []
        self.sent = 0
        self._timer: asyncio.Task[None] | None = None

    def activate(self, i: int, remote: tuple[str, int]) -> None:
        self.dest[i] = sockaddr_in(remote[0], remote[1])
        self.port2idx[remote[1]] = i
        self.active[i] = True
        self._dirty = True

    def deactivate_all(self) -> None:
        self.active[:] = False
        self._dirty = True

    # sending ----------------------------------------------------------------------------------

    def _fill(self, k: int) -> None:
        p = self.packets
        seq = (self.seq0 + k) & 0xFFFF
        ts = (self.ts0 + k * audio.FRAME) & 0xFFFFFFFF
        p[:, 2] = seq >> 8
        p[:, 3] = seq & 0xFF
        p[:, 4] = ts >> 24
        p[:, 5] = (ts >> 16) & 0xFF
        p[:, 6] = (ts >> 8) & 0xFF
        p[:, 7] = ts & 0xFF
        phase = (k + self.cycle_off) % audio.CYCLE
        p[:, 12:] = self.bank[np.arange(self.n), phase]
        # marker bursts: once a second per marker participant, staggered
        for j, i in enumerate(self.markers):
            pos = (k - 7 * j) % audio.CYCLE
            if pos < audio.MARKER_FRAMES:
                p[i, 12:] = self.marked[i][pos]
                if pos == 0 and self.recording and self.active[i]:
                    self.marker_sends[i].append(time.time_ns())

    def send_tick(self) -> None:
        if self._dirty:
            rows = np.flatnonzero(self.active)
            self._rows = rows
            self._send_packets = np.ascontiguousarray(self.packets[rows])
            self.rtp.prepare_send(self._send_packets, [self.dest[i] for i in rows])
            self._dirty = False
        rows = self._rows
        if len(rows) == 0:
            return
        self._fill(self.k)
        self._send_packets[:] = self.packets[rows]
        self.sent += self.rtp.send_rows(0, len(rows))

    async def run_timer(self, stop_at: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        k0 = 0
        while True:
            target = start + k0 * TICK
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if now >= stop_at:
                return
            late = now - target
            if late > 0.2:  # far behind: skip ahead rather than bursting
                k0 += int(late / TICK)
            t0 = time.perf_counter()
            self.send_tick()
            if self.recording:
                self.lateness.append(late)
                self.tick_cost.append(time.perf_counter() - t0)
            self.k += 1
            k0 += 1

    def start_timer(self, max_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.create_task(self.run_timer(loop.time() + max_seconds))

    async def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer

    # receiving --------------------------------------------------------------------------------

    def on_readable(self) -> None:
        for _ in range(64):  # bounded: let the timer run even under a flood
            b = self.rtp.recv_batch()
            if b is None:
                return
            idx = self.port2idx[b.src_port]
            ok = idx >= 0
            if not ok.all():
                self.unknown_rx += int((~ok).sum())
                idx = idx[ok]
                seq, ts, arr, pay = b.seq[ok], b.ts[ok], b.arrival_ns[ok], b.payload[ok]
            else:
                seq, ts, arr, pay = b.seq, b.ts, b.arrival_ns, b.payload
            self.rx_total += np.bincount(idx, minlength=self.n)
            if self.recording:
                self.chunks.append((idx, seq, ts, arr))
                sp = self.is_spot[idx]
                if sp.any():
                    self.spot_chunks.append(
                        (idx[sp], np.stack([seq[sp], arr[sp]], axis=1), pay[sp].copy())
                    )
            if len(b.seq) < self.rtp.batch:
                return


# --- analysis ------------------------------------------------------------------------------------


def _unwrap(x: npt.NDArray[np.int64], modulus: int) -> npt.NDArray[np.int64]:
    d = np.diff(x)
    d = (d + modulus // 2) % modulus - modulus // 2
    return np.concatenate([[0], np.cumsum(d)]) + x[0]


def analyse(load: Load, t0_ns: int, t1_ns: int) -> dict[str, Any]:
    n = load.n
    res: dict[str, Any] = {}
    window = (t1_ns - t0_ns) / 1e9
    if load.chunks:
        idx = np.concatenate([c[0] for c in load.chunks])
        ts = np.concatenate([c[2] for c in load.chunks])
        arr = np.concatenate([c[3] for c in load.chunks])
    else:
        idx = ts = arr = np.zeros(0, dtype=np.int64)
    inside = (arr >= t0_ns) & (arr < t1_ns)
    idx, ts, arr = idx[inside], ts[inside], arr[inside]
    counts = np.bincount(idx, minlength=n)
    expected = window / TICK
    per = counts / expected * 100.0
    res["window_s"] = round(window, 2)
    res["delivered_pct"] = round(float(counts.sum() / (expected * n) * 100.0), 3)
    res["delivered_pct_min"] = round(float(per.min()), 2) if n else 0.0
    res["participants_below_99_9"] = int((per < 99.9 - 100.0 / expected).sum())
    # inter-arrival and (arrival - RTP time) per stream
    order = np.lexsort((arr, idx))
    idx, ts, arr = idx[order], ts[order], arr[order]
    bounds = np.flatnonzero(np.diff(idx)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(idx)]])
    gaps = []
    spreads = []
    drifts = []
    for s, e in zip(starts, ends, strict=True):
        if e - s < 10:
            continue
        a = arr[s:e]
        gaps.append(np.diff(a))
        t = _unwrap(ts[s:e], 1 << 32)
        rel = (a - a[0]) / 1e6 - (t - t[0]) / 8.0  # ms
        rel -= np.median(rel)
        spreads.append(float(np.percentile(rel, 99) - np.percentile(rel, 1)))
        q = max(1, len(rel) // 10)
        drifts.append(float(np.median(rel[-q:]) - np.median(rel[:q])))
    if gaps:
        g = np.concatenate(gaps) / 1e6
        res["ia_p50_ms"] = round(float(np.percentile(g, 50)), 2)
        res["ia_p99_ms"] = round(float(np.percentile(g, 99)), 2)
        res["ia_max_ms"] = round(float(g.max()), 2)
        res["arrival_vs_rtp_spread_ms_p50"] = round(float(np.median(spreads)), 2)
        res["arrival_vs_rtp_spread_ms_max"] = round(float(np.max(spreads)), 2)
        res["drift_ms_max"] = round(float(np.max(np.abs(drifts))), 2)
    res.update(spot_check(load, t0_ns, t1_ns))
    return res


def _spot_streams(load: Load) -> dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]]:
    """Per spot participant: arrival ns per frame and decoded-order µ-law frames (by seq)."""
    out: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]] = {}
    if not load.spot_chunks:
        return out
    idx = np.concatenate([c[0] for c in load.spot_chunks])
    sa = np.concatenate([c[1] for c in load.spot_chunks])
    pay = np.concatenate([c[2] for c in load.spot_chunks])
    for i in np.unique(idx):
        sel = np.flatnonzero(idx == i)
        seq = _unwrap(sa[sel, 0], 1 << 16)
        o = np.argsort(seq, kind="stable")
        out[int(i)] = (sa[sel, 1][o], pay[sel][o])
    return out


def spot_check(load: Load, t0_ns: int, t1_ns: int) -> dict[str, Any]:
    streams = _spot_streams(load)
    checks = []
    lat: list[float] = []
    marker_hits = 0
    marker_sent = 0
    for grp in load.spots:
        conf_members = [i for i in range(grp[0], load.n, load.m)]
        for i in grp:
            if i not in streams:
                checks.append({"p": i, "ok": False, "why": "no audio"})
                continue
            arr, frames = streams[i]
            pcm = audio.ulaw_decode(frames)
            # spectral check: others' tones present, own absent
            others = [j for j in conf_members if j != i][:6]
            lv, noise = audio.tone_levels(pcm.reshape(-1), [float(load.freq[i])] + [
                float(load.freq[j]) for j in others])
            own, oth = lv[0], lv[1:]
            others_ok = bool((oth > 10 * noise).all()) if len(oth) else True
            own_noise_db = 20 * math.log10(max(own, 1e-9) / max(noise, 1e-9))
            own_db = 20 * math.log10(max(own, 1e-9) / max(float(np.median(oth)), 1e-9)) \
                if len(oth) else -99.0
            silent = int((frames == 0xFF).all(axis=1).sum() + (frames == 0x7F).all(axis=1).sum())
            # own tone absent: 30 dB under the others, or down in the band's noise floor
            # (in a mix of ~1,000 quiet tones µ-law quantisation noise sits near -25 dB)
            ok = others_ok and (own_db < -30 or own < 3 * noise)
            checks.append({"p": i, "ok": ok, "others_heard": others_ok,
                           "own_vs_others_db": round(own_db, 1),
                           "own_vs_noise_db": round(own_noise_db, 1), "silent_frames": silent,
                           "frames": len(frames)})
            # latency: marker bursts of member grp[0] heard by the others
            if i != grp[0]:
                sends = np.array(load.marker_sends.get(grp[0], []), dtype=np.int64)
                sends = sends[(sends >= t0_ns) & (sends < t1_ns - int(0.5e9))]
                marker_sent += len(sends)
                e = audio.marker_energy(pcm)
                hit = e > 0.1 * audio.MARKER_REF
                first = np.flatnonzero(hit & ~np.concatenate([[False], hit[:-1]]))
                hit_t = arr[first]
                for s in sends:
                    after = hit_t[(hit_t >= s) & (hit_t < s + int(0.5e9))]
                    if len(after):
                        marker_hits += 1
                        lat.append((int(after[0]) - int(s)) / 1e6)
    res: dict[str, Any] = {
        "mix_checks_ok": sum(1 for c in checks if c["ok"]),
        "mix_checks": len(checks),
        "mix_detail": checks,
        "markers_sent": marker_sent,
        "markers_heard": marker_hits,
    }
    if lat:
        res["latency_p50_ms"] = round(float(np.percentile(lat, 50)), 1)
        res["latency_p99_ms"] = round(float(np.percentile(lat, 99)), 1)
        res["latency_max_ms"] = round(float(np.max(lat)), 1)
    return res


# --- the servers ---------------------------------------------------------------------------------


class Webhook:
    """The confroom app: every call joins the conference named by its To user."""

    def __init__(self) -> None:
        self.calls = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _call(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls += 1
        return web.json_response([{"verb": "conference", "name": str(body.get("to", "room"))}])

    async def _other(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/call", self._call)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}/call"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class WsApp:
    """The same app as `Webhook`, as a light jambonz WebSocket app (aiohttp, subprotocol
    ws.jambonz.org; not an SDK): every session:new is acked with a conference named by the To
    user, every other hook with no verbs."""

    def __init__(self) -> None:
        self.calls = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=["ws.jambonz.org"])
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            kind = m.get("type")
            if kind == "session:new":
                self.calls += 1
                verbs = [{"verb": "conference", "name": str(m["data"].get("to", "room"))}]
                await ws.send_str(json.dumps({"type": "ack", "msgid": m["msgid"],
                                              "data": verbs}))
            elif kind in ("verb:hook", "session:redirect", "session:reconnect"):
                await ws.send_str(json.dumps({"type": "ack", "msgid": m["msgid"]}))
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._socket)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"ws://127.0.0.1:{self.port}/"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


# Capacity runs measure the media path: admission control must not refuse the set-up calls
# (all from one address, while the node runs near its limit), so its limits are lifted.
NO_ADMISSION_LIMITS = """[rtp]
timeout = 0
[limits]
drain_time = 0.0
max_calls_in_setup = 1000000
max_call_rate = 1000000.0
call_burst = 1000000.0
source_rate = 1000000.0
source_burst = 1000000.0
source_max_in_setup = 1000000
max_clock_lateness = 1000.0
max_tick_share = 1000.0
max_cpu = 1000.0
"""


def start_confroom(opts: Options, app: str, log_path: Path,
                   config: str = NO_ADMISSION_LIMITS,
                   rtp_ports: str = "20000-39999") -> subprocess.Popen[bytes]:
    cfg = log_path.with_suffix(".toml")
    cfg.write_text(config)
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child
    probe = Path(__file__).resolve().parent / "confroom_probe.py"
    env = {**os.environ, "BENCH_PROBE_OUT": str(log_path.with_suffix(".probe.json"))}
    return subprocess.Popen(
        ["taskset", "-c", opts.server_cpu, sys.executable, str(probe), "serve",
         "--config", str(cfg), "--sip-host", "127.0.0.1", "--sip-port", str(opts.sip_port),
         "--rtp-ports", rtp_ports, "--app", app, "--log-level", opts.confroom_log_level],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def probe_summary(path: Path, t0: float, t1: float) -> dict[str, Any]:
    """Tick durations and GC pauses inside [t0, t1) (perf_counter, same clock as the probe:
    CLOCK_MONOTONIC on Linux) plus the engine's own counters for the whole run."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    ticks = np.array([x[1] for x in d["ticks"] if t0 <= x[0] < t1]) * 1e3
    gcs = [x for x in d["gc"] if t0 <= x[0] < t1]
    res: dict[str, Any] = {"engine_stats": d["engine_stats"]}
    if len(ticks):
        res["tick_ms_p50"] = round(float(np.median(ticks)), 2)
        res["tick_ms_p99"] = round(float(np.percentile(ticks, 99)), 2)
        res["tick_ms_max"] = round(float(ticks.max()), 2)
        res["ticks_in_window"] = len(ticks)
    for g in (0, 1, 2):
        p = [x[2] * 1e3 for x in gcs if x[1] == g]
        if p:
            res[f"gc{g}"] = {"count": len(p), "total_ms": round(sum(p), 1),
                             "max_ms": round(max(p), 2)}
    return res


async def wait_log(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {path.read_text(errors='replace')[-2000:]}")
        if needle in path.read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {needle!r} in {path}")


# --- one run -------------------------------------------------------------------------------------


async def setup_confroom(
    opts: Options, load: Load, uac: SipUac
) -> tuple[int, list[Call]]:
    sem = asyncio.Semaphore(opts.concurrency)
    calls: list[Call] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        call = Call(call_id=f"bench-{i}-{random.getrandbits(32):x}", from_user=f"p{i}",
                    to_user=f"room{load.conf[i]}", from_tag=f"t{i}", rtp_port=load.rtp.port)
        async with sem:
            try:
                await uac.invite(call)
            except SipError:
                failed += 1
                return
        calls.append(call)
        if call.remote_rtp is not None:
            load.activate(i, call.remote_rtp)

    await asyncio.gather(*(one(i) for i in range(load.n)))
    return failed, calls


async def run(opts: Options) -> dict[str, Any]:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {opts.gen_cpu})
    loop = asyncio.get_running_loop()
    rtp = RtpSocket()
    load = Load(opts.n, opts.m, rtp)
    loop.add_reader(rtp.fd, load.on_readable)
    res: dict[str, Any] = {"target": opts.target, "n": opts.n, "m": opts.m,
                           "conf_size": round(opts.n / opts.m, 1)}
    stamp = f"{opts.target}-{opts.n}-{opts.m}-{os.getpid()}"
    hard_limit = 600.0 + opts.n * 0.2  # the whole run, set-up included, stops by itself
    load.start_timer(hard_limit)
    t_setup = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    janus: JanusProcess | None = None
    hook: Webhook | None = None
    uac: SipUac | None = None
    jc: JanusClient | None = None
    http: aiohttp.ClientSession | None = None
    calls: list[Call] = []
    try:
        if opts.target == "confroom":
            hook = Webhook()
            app = await hook.start()
            log_path = opts.log_dir / f"bench-{stamp}.log"
            proc = start_confroom(opts, app, log_path)
            pid = proc.pid
            await wait_log(log_path, "confroom ready", proc, 30)
            rss0 = rss_bytes(pid)
            uac = SipUac(("127.0.0.1", opts.sip_port))
            await uac.start()
            failed, calls = await asyncio.wait_for(
                setup_confroom(opts, load, uac), 120 + opts.n * 0.1)
            res["failed_calls"] = failed
            res["sip_retransmits"] = uac.retransmits
            res["webhook_calls"] = hook.calls
            setups = sorted(c.setup_time for c in calls)
            if setups:
                res["call_setup_p50_ms"] = round(setups[len(setups) // 2] * 1e3, 1)
        elif opts.target == "janus":
            janus = JanusProcess(http_port=opts.janus_port, cpu=opts.server_cpu)
            pid = janus.start()
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=opts.concurrency))
            jc = JanusClient(http, opts.janus_port)
            await jc.wait_ready()
            rss0 = rss_bytes(pid)
            await jc.create_session()
            ctl = await jc.attach()
            for c in range(opts.m):
                await jc.create_room(ctl, 1000 + c)
            sem = asyncio.Semaphore(opts.concurrency)
            failed = 0

            async def join(i: int) -> None:
                nonlocal failed
                assert jc is not None
                async with sem:
                    try:
                        _, port = await jc.join_rtp(1000 + int(load.conf[i]), f"p{i}",
                                                    "127.0.0.1", rtp.port)
                    except Exception:
                        failed += 1
                        return
                load.activate(i, ("127.0.0.1", port))

            await asyncio.wait_for(asyncio.gather(*(join(i) for i in range(opts.n))),
                                   120 + opts.n * 0.2)
            await jc.quiet(idle=2.0, timeout=120 + opts.n * 0.1)
            res["failed_calls"] = failed
            res["janus_events"] = jc.events
        else:
            raise ValueError(opts.target)
        res["setup_s"] = round(time.monotonic() - t_setup, 1)
        res["active"] = int(load.active.sum())
        # warm-up, then the window
        await asyncio.sleep(opts.warmup)
        if jc is not None:
            res["janus_events_after_warmup"] = jc.events - res["janus_events"]
        load.recording = True
        c0, g0, w0 = cpu_seconds(pid), cpu_seconds(), time.monotonic()
        b0 = cpu_busy_seconds()
        t0_ns = time.time_ns()
        t0_mono = time.monotonic()
        spy: asyncio.subprocess.Process | None = None
        if opts.profile is not None:
            spy = await asyncio.create_subprocess_exec(
                "taskset", "-c", str(opts.gen_cpu), "py-spy", "record", "--pid", str(pid),
                "--rate", "250", "--duration", str(int(opts.window)), "--format", "raw",
                "--output", str(opts.profile), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(opts.window)
        t1_ns = time.time_ns()
        t1_mono = time.monotonic()
        c1, g1, w1 = cpu_seconds(pid), cpu_seconds(), time.monotonic()
        b1 = cpu_busy_seconds()
        load.recording = False
        if spy is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 30)
            res["profile"] = str(opts.profile)
        # let the packets of the window's last milliseconds come in
        await asyncio.sleep(0.3)
        res["server_cpu_pct"] = round((c1 - c0) / (w1 - w0) * 100, 1)
        res["gen_cpu_pct"] = round((g1 - g0) / (w1 - w0) * 100, 1)
        # CPU used by anything else on the machine meanwhile (other people's tests, py-spy,
        # kernel softirq work charged to no process): a run with much of it is not clean.
        res["other_cpu_pct"] = round(
            ((b1[0] - b0[0]) - (c1 - c0) - (g1 - g0)) / (w1 - w0) * 100, 1)
        res["softirq_cpu_pct"] = round((b1[1] - b0[1]) / (w1 - w0) * 100, 1)
        rss = rss_bytes(pid)
        res["server_rss_mb"] = round(rss / 2**20, 1)
        res["rss_per_participant_kb"] = round((rss - rss0) / max(1, opts.n) / 1024, 1)
        if load.lateness:
            lat = np.array(load.lateness) * 1e3
            res["gen_tick_late_p99_ms"] = round(float(np.percentile(lat, 99)), 2)
            res["gen_tick_cost_p50_ms"] = round(float(np.median(load.tick_cost)) * 1e3, 3)
        res["cpu_us_per_participant_frame"] = round(
            (c1 - c0) / (w1 - w0) / max(1, opts.n) / 50 * 1e6, 2)
        res.update(analyse(load, t0_ns, t1_ns))
        res["unknown_rx"] = load.unknown_rx
        res["send_errors"] = rtp.send_errors
        res["pass"] = bool(res["delivered_pct"] >= 99.9 and res.get("ia_p99_ms", 1e9) <= 40.0)
    finally:
        load.deactivate_all()
        probe_path: Path | None = None
        await load.stop_timer()
        loop.remove_reader(rtp.fd)
        if uac is not None:
            sem2 = asyncio.Semaphore(opts.concurrency)

            async def bye(c: Call) -> None:
                async with sem2:
                    with contextlib.suppress(SipError):
                        await uac.bye(c, timeout=5)

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(bye(c) for c in calls)), 60)
            uac.close()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            probe_path = opts.log_dir / f"bench-{stamp}.probe.json"
        if hook is not None:
            await hook.stop()
        if jc is not None:
            await jc.close()
        if http is not None:
            await http.close()
        if janus is not None:
            janus.stop()
        rtp.close()
    if probe_path is not None and "window_s" in res:
        res["confroom_probe"] = probe_summary(probe_path, t0_mono, t1_mono)
    return res


def summary(r: dict[str, Any]) -> str:
    def g(k: str) -> Any:
        return r.get(k, "-")

    return (
        f"{r['target']:>8} N={r['n']:<5} M={r['m']:<4} pass={g('pass')!s:<5} "
        f"delivered={g('delivered_pct')}% (min {g('delivered_pct_min')}%) "
        f"ia p50/p99={g('ia_p50_ms')}/{g('ia_p99_ms')} ms "
        f"spread={g('arrival_vs_rtp_spread_ms_p50')}/{g('arrival_vs_rtp_spread_ms_max')} ms "
        f"lat p50/p99={g('latency_p50_ms')}/{g('latency_p99_ms')} ms "
        f"mix {g('mix_checks_ok')}/{g('mix_checks')} "
        f"cpu={g('server_cpu_pct')}% ({g('cpu_us_per_participant_frame')} µs/p/frame) "
        f"rss={g('server_rss_mb')} MB ({g('rss_per_participant_kb')} kB/p) "
        f"gen cpu={g('gen_cpu_pct')}% late p99={g('gen_tick_late_p99_ms')} ms "
        f"other cpu={g('other_cpu_pct')}% failed={g('failed_calls')}"
    )


def parse_args(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--target", choices=["confroom", "janus"], default="confroom")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--m", type=int, default=2)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--window", type=float, default=25.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--sip-port", type=int, default=15060)
    p.add_argument("--janus-port", type=int, default=8088)
    p.add_argument("--profile", type=Path, help="py-spy raw (collapsed) profile of the server "
                   "over the window (non-blocking sampling at 250 Hz, py-spy on the generator CPU)")
    p.add_argument("--confroom-log-level", default="INFO")
    a = p.parse_args(argv)
    if a.window < 1 or a.window > 300 or a.n < 2 or a.m < 1 or a.m > a.n:
        p.error("need 1 <= window <= 300 s, n >= 2, 1 <= m <= n")
    return Options(target=a.target, n=a.n, m=a.m, warmup=a.warmup, window=a.window,
                   confroom_log_level=a.confroom_log_level, profile=a.profile,
                   sip_port=a.sip_port, janus_port=a.janus_port), a.json


def main(argv: list[str] | None = None) -> int:
    opts, out = parse_args(argv)
    res = uvloop.run(run(opts))
    print(summary(res))
    if out is not None:
        out.write_text(json.dumps(res, indent=1, default=_json_default))
    return 0



def _json_default(o: Any) -> Any:
    """numpy scalars (np.bool_, np.float64, ...) as plain JSON values."""
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
