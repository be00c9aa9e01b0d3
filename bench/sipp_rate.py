"""Call set-up rate: SIPp at rising call rates against confroom with a real webhook app.

    python3 bench/sipp_rate.py --rates 50,100,200,300,400 --seconds 10 --hold-ms 1000

confroom runs pinned to CPU 0 with `--app http://127.0.0.1:PORT/call`; the webhook (an aiohttp
server in this process, CPU 1) answers every call with a conference verb, so each call costs
INVITE -> webhook POST -> conference join -> 200 -> ACK, `--hold-ms` in the conference, BYE.
SIPp (tests/sipp/uac_basic.xml, CPU 1) places `rate * seconds` calls at each rate; a rate
passes when SIPp reports no failed call. Reported per rate: successful/failed calls, SIPp's
response-time figure, confroom's CPU % over the run, and whether it passed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
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

from loadgen import Options, Webhook, cpu_seconds, start_confroom, wait_log

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests/sipp/uac_basic.xml"


def _last_stats(path: Path) -> dict[str, str]:
    with path.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


async def one_rate(
    rate: int, seconds: float, hold_ms: int, sip_port: int, pid: int, sink_port: int,
    workdir: Path,
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
    ]
    c0, w0 = cpu_seconds(pid), time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=str(workdir))
    try:
        out, _ = await asyncio.wait_for(proc.communicate(),
                                        seconds + hold_ms / 1000 + 90)
    except TimeoutError:
        proc.kill()
        out = b""
    c1, w1 = cpu_seconds(pid), time.monotonic()
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
        "wall_s": round(w1 - w0, 1),
    }
    res["pass"] = ok == calls and failed == 0 and proc.returncode == 0
    if not res["pass"]:
        res["sipp_tail"] = out.decode(errors="replace")[-600:]
    return res


async def main_async(rates: list[int], seconds: float, hold_ms: int) -> list[dict[str, Any]]:
    os.sched_setaffinity(0, {1})
    hook = Webhook()
    app = await hook.start()
    opts = Options(sip_port=15070)
    workdir = Path(tempfile.mkdtemp(prefix="bench-sipp-"))
    log = workdir / "confroom.log"
    proc = start_confroom(opts, app, log)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # confroom's RTP lands here
    sink.bind(("127.0.0.1", 0))
    results: list[dict[str, Any]] = []
    try:
        await wait_log(log, "confroom ready", proc, 30)
        for rate in rates:
            r = await one_rate(rate, seconds, hold_ms, opts.sip_port, proc.pid,
                               sink.getsockname()[1], workdir)
            r["webhook_calls_total"] = hook.calls
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "sipp_tail"}), flush=True)
            await asyncio.sleep(hold_ms / 1000 + 3)  # let the last calls end
            if not r["pass"]:
                print(r.get("sipp_tail", ""), flush=True)
                break
    finally:
        proc.send_signal(signal.SIGTERM)
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
    a = p.parse_args()
    rates = [int(x) for x in a.rates.split(",")]
    if a.seconds > 60 or any(r > 5000 for r in rates):
        p.error("keep it bounded: seconds <= 60, rates <= 5000")
    res = uvloop.run(main_async(rates, a.seconds, a.hold_ms))
    best = max((r["rate"] for r in res if r["pass"]), default=0)
    print(f"highest rate with zero failed calls: {best} calls/s")
    if a.json:
        a.json.write_text(json.dumps({"best": best, "runs": res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
