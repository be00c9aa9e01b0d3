"""`supervise`: `confroom serve --workers N`, N cluster nodes on one machine's cores.

The supervisor runs no calls itself. It starts a private `redis-server` (on a Unix socket in
a private temporary directory, no persistence) unless a Redis URL is configured, then N
worker processes: `confroom serve` with the same arguments, each with `--redis` (that URL),
`--node-id <host>-w<i>`, its own slice of the RTP port range and SO_REUSEPORT on the SIP and
HTTP sockets. RTP cannot reach the wrong worker: each owns the ports of its calls. SIP can:
the kernel hands a datagram to a worker by a hash of its source address, which changes when a
caller changes its source port and for every flow when a worker dies or comes back. So each
worker decides whose every message is (`confroom.sip.ownership`: our mark in the To tag or
the top Via branch, the Call-ID hash for new calls) and passes other workers' messages to
them over Unix datagram sockets in the private directory (`confroom.cluster.forward`); the
owner answers from its own socket on the same port.

A worker that dies is started again after `RESTART_DELAY_S`, as a new cluster node
(`--node-id <id>-w<i>-r<n>`: the survivors reap the dead one's conference members). Its calls
are lost: their RTP
ports get nothing until the new process reuses them, their in-dialog requests are answered
481 by whichever worker reads them, and the cluster reaps their conference members. The
other workers' calls go on (their messages reach them whichever worker the kernel picks);
new calls that hash to the dead worker are taken by the next one while it is down.
SIGTERM/SIGINT go to every worker (each drains as usual); the supervisor exits when they have,
and stops its Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from confroom.config import Config

log = logging.getLogger("confroom.workers")

RESTART_DELAY_S = 1.0


def _strip_workers(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    return out


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM it when the supervisor dies (even by SIGKILL), so
    that no worker is left serving the port on its own (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


async def _private_redis(workdir: Path) -> tuple[asyncio.subprocess.Process, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise OSError("--workers without a Redis URL needs redis-server (apt-get install "
                      "redis-server; scripts/setup.sh installs it)")
    sock = workdir / "redis.sock"
    proc = await asyncio.create_subprocess_exec(
        exe, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--dir", str(workdir),
        "--logfile", str(workdir / "redis.log"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
    for _ in range(100):
        if sock.exists():
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"unix://{sock}"
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    proc.kill()
    raise OSError(f"the private redis-server did not start (see {workdir / 'redis.log'})")


async def supervise(config: Config, argv: list[str]) -> int:
    n = config.workers
    workdir = Path(tempfile.mkdtemp(prefix="confroom-workers-"))
    redis_proc: asyncio.subprocess.Process | None = None
    url = config.cluster_redis
    try:
        if not url:
            redis_proc, url = await _private_redis(workdir)
            log.info("workers: private redis-server on %s", url)
        lo, hi = config.rtp_port_min, config.rtp_port_max
        per = (hi - lo + 1) // n
        if per < 4:
            raise OSError(f"--workers {n}: the RTP range {lo}-{hi} is too small to share")
        base = _strip_workers(argv)
        host = socket.gethostname().split(".")[0] or "node"
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        env = {**os.environ, "CONFROOM_WORKERS": "1", "CONFROOM_REUSE_PORT": "1",
               "CONFROOM_WORKER_DIR": str(workdir)}

        async def run_worker(i: int) -> None:
            a = lo + i * per
            node = (config.cluster_node_id + f"-w{i}" if config.cluster_node_id
                    else f"{host}-{os.getpid()}-w{i}")
            life = 0
            while True:
                # a restarted worker is a new cluster node: the survivors reap the old one
                args = [*base, "--redis", url, "--node-id", node if not life
                        else f"{node}-r{life}", "--rtp-ports", f"{a}-{a + per - 1}"]
                life += 1
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "confroom", *args,
                    env={**env, "CONFROOM_WORKER_SLOT": f"{i}/{n}"},
                    stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
                log.info("workers: worker %d started (pid %d, rtp %d-%d)", i, proc.pid, a,
                         a + per - 1)
                waiter = asyncio.ensure_future(proc.wait())
                stop = asyncio.ensure_future(stopping.wait())
                await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stopping.is_set():
                    stop.cancel()
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGTERM)
                    await waiter
                    return
                stop.cancel()
                log.error("workers: worker %d (pid %d) exited with %s; starting it again",
                          i, proc.pid, proc.returncode)
                await asyncio.sleep(RESTART_DELAY_S)

        await asyncio.gather(*(run_worker(i) for i in range(n)))
        log.info("workers: all %d workers stopped", n)
        return 0
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    finally:
        if redis_proc is not None and redis_proc.returncode is None:
            redis_proc.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(redis_proc.wait(), 5)
        shutil.rmtree(workdir, ignore_errors=True)
