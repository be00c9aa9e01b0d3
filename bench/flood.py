"""INVITE floods against a running conference (issue 9): do the members keep their audio?

    python3 bench/flood.py                      # the issue's two floods: 1,000/s for 20 s,
                                                # then 3,000/s for 10 s
    python3 bench/flood.py --flood 500x5        # one flood: RATE x SECONDS
    python3 bench/flood.py --options-burst 5000 # SIP UDP receive-buffer check only

confroom (pinned to CPU 0, default [limits], a webhook app served by this process answering
every call with one verb, `conference` named by the To user) hosts a conference of `--members`
participants (bench/loadgen.py's generator: one UDP socket, kernel receive timestamps, tones)
on CPU 1. After a warm-up, SIPp (tests/sipp/uac_flood.xml, CPU 1) sends new INVITEs at RATE
per second for SECONDS to another number; each admitted one is ACKed and BYEd at once, each
503 must carry Retry-After and is ACKed.

Reported per flood: frames delivered to the existing members during the flood (% of 50/s,
worst member, worst inter-arrival gap), INVITEs with a final answer (SIPp calls that did not
time out), 200 / 503 counts, server CPU % over the flood, and the server's log lines written
during it (all, ERROR, shed summaries).

`--options-burst N` sends N OPTIONS back to back from one socket and counts the 200s: the
share the SIP UDP socket dropped in the kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.machinery
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    Load,
    Options,
    Webhook,
    analyse,
    cpu_busy_seconds,
    cpu_seconds,
    setup_confroom,
    start_confroom,
    wait_log,
)
from rtpio import RtpSocket
from sipua import SipUac

ROOT = Path(__file__).resolve().parent.parent


def wait_quiet() -> float:
    """bench/run's wait for an idle machine (that script has no .py name to import by)."""
    loader = importlib.machinery.SourceFileLoader("bench_run", str(ROOT / "bench" / "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return float(mod.wait_quiet())



SCENARIO = ROOT / "tests/sipp/uac_flood.xml"
ISSUE_FLOODS = [(1000, 20.0), (3000, 10.0)]


def _sipp_totals(stdout: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, key in (("Successful call", "successful"), ("Failed call", "failed"),
                      ("Outgoing calls created", "created")):
        found = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", stdout)
        if found:
            out[key] = int(found[-1])
    return out


async def flood(rate: int, seconds: float, sip_port: int, pid: int, log: Path, load: Load,
                workdir: Path, profile: Path | None) -> dict[str, Any]:
    calls = int(rate * seconds)
    tag = f"{rate}x{seconds:g}"
    logs = workdir / f"flood-{tag}.log"
    cmd = [
        "taskset", "-c", "1", "sipp", f"127.0.0.1:{sip_port}", "-sf", str(SCENARIO),
        "-s", "flood", "-i", "127.0.0.1", "-p", "0", "-r", str(rate), "-rp", "1000",
        "-m", str(calls), "-l", str(max(100, rate * 3)),
        "-key", "rtp_ip", "127.0.0.1", "-key", "rtp_port", "9", "-key", "payloads", "0 101",
        "-key", "from_user", "flood", "-recv_timeout", "10000",
        "-timeout", f"{int(seconds + 60)}s", "-nostdin", "-trace_logs", "-log_file", str(logs),
    ]  # fmt: skip
    log_mark = len(log.read_bytes())
    load.chunks.clear()
    load.recording = True
    c0, w0, b0 = cpu_seconds(pid), time.monotonic(), cpu_busy_seconds()
    t0_ns = time.time_ns()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=str(workdir))
    spy: asyncio.subprocess.Process | None = None
    if profile is not None:
        spy = await asyncio.create_subprocess_exec(
            shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
            "record", "--pid", str(pid), "--rate", "250",
            "--duration", str(int(seconds)), "--format", "raw", "--nonblocking",
            "--output", str(profile.with_suffix(f".{tag}.txt")),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    # the window: the flood's INVITEs (SIPp sends at the rate from its start)
    await asyncio.sleep(seconds)
    c1, w1, b1 = cpu_seconds(pid), time.monotonic(), cpu_busy_seconds()
    t1_ns = time.time_ns()
    if spy is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(spy.wait(), 30)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        out = b""
    await asyncio.sleep(0.3)
    load.recording = False
    # the first 0.5 s is SIPp starting up: measure from there
    media = analyse(load, t0_ns + 500_000_000, t1_ns)
    totals = _sipp_totals(out.decode(errors="replace"))
    outcome = logs.read_text(errors="replace") if logs.exists() else ""
    n200 = len(re.findall(r"final_status=200", outcome))
    n503 = len(re.findall(r"final_status=503", outcome))
    lines = log.read_bytes()[log_mark:].decode(errors="replace").splitlines()
    created = totals.get("created", 0)
    res: dict[str, Any] = {
        "flood": tag,
        "invites": created,
        "answered_pct": round(100.0 * (n200 + n503) / created, 2) if created else 0.0,
        "ok_200": n200,
        "shed_503": n503,
        "sipp_failed": totals.get("failed"),
        "members_frames_pct": media.get("delivered_pct"),
        "members_frames_pct_min": media.get("delivered_pct_min"),
        "members_ia_max_ms": media.get("ia_max_ms"),
        "members_ia_p99_ms": media.get("ia_p99_ms"),
        "server_cpu_pct": round((c1 - c0) / (w1 - w0) * 100, 1),
        # everything else on the 2 cores: this generator, SIPp, and other people's work
        "rest_cpu_pct": round(((b1[0] - b0[0]) - (c1 - c0)) / (w1 - w0) * 100, 1),
        "window_mono": [w0 + 0.5, w1],
        "log_lines": len(lines),
        "log_error_lines": sum(" ERROR " in ln for ln in lines),
        "log_shed_summaries": sum("shed " in ln and "new call(s)" in ln for ln in lines),
    }
    return res


async def options_burst(n: int, sip_port: int) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    msgs = [(
        f"OPTIONS sip:ping@127.0.0.1:{sip_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-burst-{i}\r\n"
        f"From: <sip:bench@127.0.0.1>;tag=b{i}\r\nTo: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: burst-{i}-{os.getpid()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        f"Content-Length: 0\r\n\r\n").encode() for i in range(n)]
    t0 = time.monotonic()
    for m in msgs:
        sock.sendto(m, ("127.0.0.1", sip_port))
    sent_s = time.monotonic() - t0
    sock.settimeout(3.0)
    got = 0
    with contextlib.suppress(TimeoutError):
        while got < n:
            data = sock.recv(65535)
            if data.startswith(b"SIP/2.0 200"):
                got += 1
    sock.close()
    return {"options_sent": n, "send_s": round(sent_s, 3), "answered": got,
            "lost_pct": round(100.0 * (n - got) / n, 1)}


async def main_async(a: argparse.Namespace) -> list[dict[str, Any]]:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})
    opts = Options(sip_port=a.sip_port, n=a.members, m=1)
    workdir = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    log = workdir / "confroom.log"
    hook = Webhook()
    app = await hook.start()
    config = "[rtp]\ntimeout = 0\n" + (a.config.read_text() if a.config else "")
    os.environ["CONFROOM_DRAIN_TIME"] = "0"
    proc = start_confroom(opts, app, log, config=config)
    results: list[dict[str, Any]] = []
    rtp: RtpSocket | None = None
    load: Load | None = None
    uac: SipUac | None = None
    loop = asyncio.get_running_loop()
    try:
        await wait_log(log, "confroom ready", proc, 30)
        if a.options_burst:
            r = await options_burst(a.options_burst, opts.sip_port)
            print(json.dumps(r), flush=True)
            return [r]
        rtp = RtpSocket()
        load = Load(opts.n, opts.m, rtp)
        loop.add_reader(rtp.fd, load.on_readable)
        load.start_timer(3600)
        uac = SipUac(("127.0.0.1", opts.sip_port))
        await uac.start()
        failed, calls = await setup_confroom(opts, load, uac)
        if failed or len(calls) != opts.n:
            raise RuntimeError(f"only {len(calls)} of {opts.n} members joined")
        await asyncio.sleep(a.warmup)
        for rate, seconds in a.floods:
            if a.quiet:
                wait_quiet()
            r = await flood(rate, seconds, opts.sip_port, proc.pid, log, load, workdir,
                            a.profile)
            r["members"] = opts.n
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "window_mono"}), flush=True)
            await asyncio.sleep(a.pause)  # let the node recover between floods
    finally:
        if load is not None:
            load.deactivate_all()
            await load.stop_timer()
        if rtp is not None:
            loop.remove_reader(rtp.fd)
            rtp.close()
        if uac is not None:
            uac.close()
        proc.send_signal(signal.SIGTERM)  # CONFROOM_DRAIN_TIME=0: no drain
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        await hook.stop()
    for r in results:  # the server's own media clock over each flood (bench probe)
        r.update(_clock(log.with_suffix(".probe.json"), *r.pop("window_mono")))
    return results


def _clock(probe: Path, t0: float, t1: float) -> dict[str, Any]:
    """Ticks the server's media clock ran in [t0, t1) against 50/s, and its worst gap."""
    try:
        ticks = [t for t, _ in json.loads(probe.read_text())["ticks"] if t0 <= t < t1]
    except (OSError, ValueError, KeyError):
        return {}
    if len(ticks) < 2:
        return {"server_ticks_pct": 0.0}
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    return {"server_ticks_pct": round(100.0 * len(ticks) / ((t1 - t0) / 0.02), 2),
            "server_tick_gap_max_ms": round(max(gaps) * 1e3, 1)}


def _flood(v: str) -> tuple[int, float]:
    rate, _, seconds = v.partition("x")
    return int(rate), float(seconds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--flood", action="append", type=_flood, dest="floods",
                   metavar="RATExSECONDS", help="default: 1000x20 then 3000x10 (the issue's)")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--pause", type=float, default=15.0, help="seconds between floods")
    p.add_argument("--sip-port", type=int, default=15090)
    p.add_argument("--config", type=Path, help="extra TOML for confroom (e.g. [limits])")
    p.add_argument("--options-burst", type=int, default=0, metavar="N")
    p.add_argument("--profile", type=Path, help="py-spy raw profile of the server per flood "
                   "(PATH.<flood>.txt; summarise with bench/profile_summary.py)")
    p.add_argument("--quiet", action="store_true",
                   help="wait (bounded) for an idle machine before each flood")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    a.floods = a.floods or ISSUE_FLOODS
    res = uvloop.run(main_async(a))
    for r in res:
        print(json.dumps(r))
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
