"""Call set-up rate: SIPp at rising call rates against confroom with a real webhook app.

    python3 bench/sipp_rate.py --rates 50,100,200,300,400 --seconds 10 --hold-ms 1000
    python3 bench/sipp_rate.py --nodes 2 --kamailio --rates 200,300,400 ...   # cluster

confroom runs pinned to CPU 0 with `--app http://127.0.0.1:PORT/call`; the webhook (an aiohttp
server in this process, CPU 1) answers every call with a conference verb, so each call costs
INVITE -> webhook POST -> conference join -> 200 -> ACK, `--hold-ms` in the conference, BYE.
SIPp (tests/sipp/uac_basic.xml, CPU 1) places `rate * seconds` calls at each rate; a rate
passes when SIPp reports no failed call. Reported per rate: successful/failed calls, SIPp's
response-time figure, confroom's CPU % over the run, and whether it passed. `--app ws` runs
the same app as a light jambonz WebSocket app instead (`ws://` call hook, one socket per call;
compare the CPU per call with `--app http`).

`--nodes N` starts N confroom processes (node i pinned to CPU i mod cores, each with its own
RTP range); `--kamailio` puts Kamailio with deploy/kamailio/kamailio.cfg in front of them
(pinned to the generator's CPU) and SIPp calls Kamailio; without it SIPp calls node 0 (so
`--nodes` > 1 needs `--kamailio`). Kamailio's CPU (all its processes) is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
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

from loadgen import Options, Webhook, WsApp, cpu_seconds, start_confroom, wait_log

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests/sipp/uac_basic.xml"
sys.path[1:1] = [str(ROOT / "tests" / "e2e"), str(ROOT / "tests")]

from frontdoor import KamailioProcess  # noqa: E402 - the e2e tests' Kamailio runner
from harness import free_sip_port  # noqa: E402


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process in process group `pgid` (Kamailio and its children)."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getpgid(int(d.name)) == pgid:
                total += cpu_seconds(d.name)
        except (OSError, ValueError):
            continue
    return total


def _last_stats(path: Path) -> dict[str, str]:
    with path.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


async def one_rate(
    rate: int, seconds: float, hold_ms: int, sip_port: int, pids: list[int], sink_port: int,
    workdir: Path, kamailio_pgid: int | None = None,
) -> dict[str, Any]:
    calls = int(rate * seconds)
    stf = workdir / f"stat-{rate}.csv"
    cmd = [
        "taskset", "-c", "1", "sipp", f"127.0.0.1:{sip_port}", "-sf", str(SCENARIO),
        "-s", "room", "-i", "127.0.0.1", "-p", "0", "-r", str(rate), "-rp", "1000",
        "-m", str(calls), "-l", str(max(10, int(rate * (hold_ms / 1000 + 5)))),
        "-d", str(hold_ms), "-key", "rtp_ip", "127.0.0.1", "-key", "rtp_port", str(sink_port),
        "-key", "payloads", "0 101", "-key", "from_user", "bench",
        "-recv_timeout", "8000", "-timeout", f"{int(seconds + hold_ms / 1000 + 60)}s",
        "-trace_stat", "-stf", str(stf), "-fd", "1", "-nostdin",
        "-trace_err", "-error_file", str(workdir / f"errors-{rate}.log"),
    ]

    def cpu() -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    def kam_cpu() -> float:
        return group_cpu_seconds(kamailio_pgid) if kamailio_pgid is not None else 0.0

    c0, k0, w0 = cpu(), kam_cpu(), time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=str(workdir))
    try:
        out, _ = await asyncio.wait_for(proc.communicate(),
                                        seconds + hold_ms / 1000 + 90)
    except TimeoutError:
        proc.kill()
        out = b""
    c1, k1, w1 = cpu(), kam_cpu(), time.monotonic()
    st = _last_stats(stf) if stf.exists() else {}
    ok = int(st.get("SuccessfulCall(C)", "0") or 0)
    failed = int(st.get("FailedCall(C)", "0") or 0)
    res = {
        "rate": rate,
        "calls": calls,
        "successful": ok,
        "failed": failed,
        "sipp_exit": proc.returncode,
        "response_time_avg": st.get("ResponseTime1(C)", ""),
        "confroom_cpu_pct": round((c1 - c0) / (w1 - w0) * 100, 1),
        "confroom_cpu_ms_per_call": round((c1 - c0) * 1000 / max(1, ok), 2),
        "wall_s": round(w1 - w0, 1),
    }
    if kamailio_pgid is not None:
        res["kamailio_cpu_pct"] = round((k1 - k0) / (w1 - w0) * 100, 1)
        res["kamailio_cpu_ms_per_call"] = round((k1 - k0) * 1000 / max(1, ok), 3)
    res["pass"] = ok == calls and failed == 0 and proc.returncode == 0
    if not res["pass"]:
        res["sipp_tail"] = out.decode(errors="replace")[-600:]
    return res


async def main_async(rates: list[int], seconds: float, hold_ms: int, nodes: int = 1,
                     kamailio: str | None = None, kind: str = "http", sip_port: int = 15070
                     ) -> list[dict[str, Any]]:
    os.sched_setaffinity(0, {1})
    cores = os.cpu_count() or 1
    hook: Webhook | WsApp = WsApp() if kind == "ws" else Webhook()
    app = await hook.start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sipp-"))
    procs: list[subprocess.Popen[bytes]] = []
    # node 0 keeps the historical port; more nodes (and Kamailio) take free ones, so that
    # a cluster run does not collide with another bench on this machine
    ports = ([sip_port or free_sip_port()] if kamailio is None
             else [free_sip_port() for _ in range(nodes)])
    span = 20000 // nodes
    for i, port in enumerate(ports):
        opts = Options(sip_port=port, server_cpu=str(i % cores))
        rtp = f"{20000 + i * span}-{20000 + (i + 1) * span - 1}"
        procs.append(start_confroom(opts, app, workdir / f"confroom{i}.log", rtp_ports=rtp))
    kam: KamailioProcess | None = None
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # confroom's RTP lands here
    sink.bind(("127.0.0.1", 0))
    results: list[dict[str, Any]] = []
    try:
        for i, proc in enumerate(procs):
            await wait_log(workdir / f"confroom{i}.log", "confroom ready", proc, 30)
        target_port = ports[0]
        if kamailio is not None:
            kam = KamailioProcess(kamailio, workdir / "kamailio",
                                  [f"127.0.0.1:{p}" for p in ports], children=4,
                                  shm_mb=256)
            kam.start()
            os.sched_setaffinity(kam.pid, {1})  # its children fork from it after start-up:
            for d in Path("/proc").iterdir():   # pin them too
                if d.name.isdigit():
                    try:
                        if os.getpgid(int(d.name)) == kam.pid:
                            os.sched_setaffinity(int(d.name), {1})
                    except OSError:
                        continue
            target_port = kam.sip_port
        for rate in rates:
            r = await one_rate(rate, seconds, hold_ms, target_port, [p.pid for p in procs],
                               sink.getsockname()[1], workdir,
                               kamailio_pgid=kam.pid if kam is not None else None)
            r["nodes"] = nodes
            r["kamailio"] = kam is not None
            r["webhook_calls_total"] = hook.calls
            r["app"] = kind
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "sipp_tail"}), flush=True)
            await asyncio.sleep(hold_ms / 1000 + 3)  # let the last calls end
            if not r["pass"]:
                print(r.get("sipp_tail", ""), flush=True)
                break
    finally:
        if kam is not None and kam.proc is not None:
            kam.stop()
            (kam.workdir / "kamailio.log").write_text(kam.log_text())
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await hook.stop()
        sink.close()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rates", default="50,100,200,300,400,500,600")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--hold-ms", type=int, default=1000)
    p.add_argument("--json", type=Path)
    p.add_argument("--nodes", type=int, default=1, help="confroom processes (default 1)")
    p.add_argument("--kamailio", action="store_true",
                   help="call through Kamailio (deploy/kamailio/kamailio.cfg) to the nodes")
    p.add_argument("--app", choices=("http", "ws"), default="http",
                   help="the app's kind: HTTP webhook or jambonz WebSocket app")
    p.add_argument("--sip-port", type=int, default=15070,
                   help="node 0's SIP port without --kamailio (0: any free one)")
    a = p.parse_args()
    rates = [int(x) for x in a.rates.split(",")]
    if a.seconds > 60 or any(r > 5000 for r in rates):
        p.error("keep it bounded: seconds <= 60, rates <= 5000")
    if not 1 <= a.nodes <= 8 or (a.nodes > 1 and not a.kamailio):
        p.error("--nodes is 1..8, and more than 1 needs --kamailio")
    kamailio = shutil.which("kamailio") if a.kamailio else None
    if a.kamailio and kamailio is None:
        p.error("kamailio is not installed (apt-get install kamailio)")
    res = uvloop.run(main_async(rates, a.seconds, a.hold_ms, a.nodes, kamailio, a.app,
                                a.sip_port))
    best = max((r["rate"] for r in res if r["pass"]), default=0)
    print(f"highest rate with zero failed calls: {best} calls/s")
    if a.json:
        a.json.write_text(json.dumps({"best": best, "runs": res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
