"""End-to-end harness for confroom: a real server subprocess, real SIP peers (SIPp), a real
webhook app (aiohttp) and a real RTP endpoint (UDP socket).

Everything here is independent of the confroom package on purpose (G.711, RTP parsing, the
webhook signature): the e2e tests check the server from the outside, as a SIP carrier and a
jambonz app would see it. Nothing sleeps for a fixed time: every wait is a condition with a
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web

from toolcheck import in_ci as in_ci  # re-exported for the e2e tests
from toolcheck import require_file
from toolcheck import require_tool as require_tool

HOST = "127.0.0.1"
SIPP_DIR = Path(__file__).resolve().parent.parent / "sipp"
SIPP_PCAP_DIR = Path("/usr/share/sip-tester")
READY_LINE = "confroom ready"
WEBHOOK_SECRET = "e2e-secret-0123456789"
ACCOUNT_SID = "11111111-2222-4333-8444-555555555555"
APPLICATION_SID = "66666666-7777-4888-9999-aaaaaaaaaaaa"

Int16Array = npt.NDArray[np.int16]


# --------------------------------------------------------------------------------- tools


# --------------------------------------------------------------------------------- ports


def free_udp_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Ports for servers the tests start are drawn below Linux's ephemeral range (32768+), where the
# kernel never puts a client socket: a port found free stays free until the server binds it
# (a port taken from bind(0) can be handed to somebody's outgoing connection meanwhile).
# Two pools: a confroom's RTP range is bound lazily, port by port, as calls come, so a port in
# it looks free long after the probe; no other picker may draw from that pool (a SIPp port
# drawn inside a node's RTP range lost the bind race to the node's next call).
_RTP_RANGES = (20000, 26000)  # confroom's --rtp-ports blocks only
_SERVER_PORTS = (26000, 32000)  # listeners and blocks bound as soon as they are picked


def _bindable(host: str, ports: Iterable[int], kinds: Iterable[int]) -> bool:
    """Can every port of `ports` be bound now, for every socket type of `kinds`?"""
    socks: list[socket.socket] = []
    try:
        for port in ports:
            for kind in kinds:
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


# Ports handed out recently, by when: a port picked for a process that has not bound it yet
# still probes free, so the pickers never hand the same port out twice within _HELD_S (three
# SIPp runs started in a row once got overlapping ports and one call was never placed).
_HELD_S = 30.0
_handed_out: dict[int, float] = {}


def _take(ports: range) -> bool:
    """Mark `ports` handed out, unless one of them was handed out within _HELD_S."""
    now = time.monotonic()
    if any(now - _handed_out.get(p, -_HELD_S) < _HELD_S for p in ports):
        return False
    for p in ports:
        _handed_out[p] = now
    return True


def _free_server_port(host: str, kinds: tuple[int, ...], attempts: int = 500) -> int:
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(*_SERVER_PORTS)
        if _bindable(host, (port,), kinds) and _take(range(port, port + 1)):
            return port
    raise RuntimeError(f"no port in {_SERVER_PORTS} free for socket types {kinds}")


def free_tcp_port(host: str = HOST) -> int:
    """A TCP port free now (for a listener the test starts: HTTP, SIP over TLS)."""
    return _free_server_port(host, (socket.SOCK_STREAM,))


def free_sip_port(host: str = HOST) -> int:
    """A port number free for both TCP (listening) and UDP on `host` (SIP uses both)."""
    return _free_server_port(host, (socket.SOCK_STREAM, socket.SOCK_DGRAM))


def free_port_block(count: int, host: str = HOST, lo: int = _SERVER_PORTS[0],
                    hi: int = _SERVER_PORTS[1], hold: bool = True) -> int:
    """The first port of `count` consecutive UDP ports that are free now.

    Drawn below the Linux ephemeral range (32768+) so that client sockets do not take them.
    """
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(lo, hi - count)
        base -= base % 2  # RTP ports are even by convention
        block = range(base, base + count)
        if _bindable(host, block, (socket.SOCK_DGRAM,)) and (not hold or _take(block)):
            return base
    raise RuntimeError(f"no block of {count} free UDP ports in {lo}-{hi}")


# --------------------------------------------------------------------------------- TOML


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, Sequence):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer: top-level tables and arrays of tables of scalar/list/inline values."""
    out: list[str] = []
    for section, body in data.items():
        if isinstance(body, Mapping):
            out.append(f"[{section}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in body.items() if v is not None]
            out.append("")
        elif isinstance(body, list) and all(isinstance(t, Mapping) for t in body):
            for table in body:
                out.append(f"[[{section}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
                out.append("")
        else:
            raise TypeError(f"top-level TOML key {section!r} must be a table or array of tables")
    return "\n".join(out)


# --------------------------------------------------------------------------------- server


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # after "pid (comm) ": state is field 3, utime field 14, stime field 15 (1-based)
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class LoggedProcess:
    """A subprocess whose merged stdout/stderr is read line by line in a thread: waits on log
    lines with timeouts (`wait_log`), and the arrival time of every line (`line_times`,
    time.monotonic()). Subclasses start `self.proc` and call `_start_reader()`."""

    name = "process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.line_times: list[float] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader: threading.Thread | None = None

    def _start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-log", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\r\n"))
                self.line_times.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    # -- log -------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the log; pass it as `since` to only look at later lines."""
        with self._cond:
            return len(self.lines)

    def log_text(self, last: int | None = None) -> str:
        with self._cond:
            lines = self.lines if last is None else self.lines[-last:]
            return "\n".join(lines)

    def find_logs(self, pattern: str, since: int = 0) -> list[re.Match[str]]:
        rx = re.compile(pattern)
        with self._cond:
            return [m for line in self.lines[since:] if (m := rx.search(line))]

    def find_timed_logs(self, pattern: str, since: int = 0) -> list[tuple[float, re.Match[str]]]:
        """Like find_logs, with the time.monotonic() at which each line was read."""
        rx = re.compile(pattern)
        with self._cond:
            return [(t, m) for t, line in zip(self.line_times[since:], self.lines[since:],
                                              strict=True) if (m := rx.search(line))]

    def wait_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        return self.wait_logs(pattern, 1, timeout=timeout, since=since)[0]

    def wait_logs(
        self, pattern: str, count: int, timeout: float = 10.0, since: int = 0
    ) -> list[re.Match[str]]:
        """Wait until `count` log lines (after `since`) match `pattern`; fail on timeout/exit."""
        rx = re.compile(pattern)
        found: list[re.Match[str]] = []
        scanned = since
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[scanned:]:
                    if m := rx.search(line):
                        found.append(m)
                scanned = max(scanned, len(self.lines))
                if len(found) >= count:
                    return found
                if self._eof:
                    rc = None
                    if self.proc is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            rc = self.proc.wait(timeout=2)
                    raise AssertionError(
                        f"{self.name} exited (rc={rc}) before {count} log line(s) matched "
                        f"{pattern!r} (got {len(found)})\n--- log ---\n{self.log_text_unlocked()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timeout after {timeout}s waiting for {count} log line(s) matching "
                        f"{pattern!r} (got {len(found)})\n--- log (last 80) ---\n"
                        f"{self.log_text_unlocked(80)}"
                    )
                self._cond.wait(remaining)

    def log_text_unlocked(self, last: int | None = None) -> str:
        lines = self.lines if last is None else self.lines[-last:]
        return "\n".join(lines)


class ConfroomProcess(LoggedProcess):
    """A confroom server subprocess on 127.0.0.1 with its own config, media dir and log."""

    name = "confroom"

    def __init__(
        self,
        workdir: Path,
        *,
        apps: Sequence[Mapping[str, Any]],
        rtp_timeout: float | None = None,
        webhook_timeout: float | None = None,
        extra_toml: Mapping[str, Any] | None = None,
        cli_app: str | None = None,
        rtp_port_count: int = 400,
        env: Mapping[str, str] | None = None,
        fd_limit: int | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.media_dir = workdir / "media"
        self.cache_dir = workdir / "cache"
        self.media_dir.mkdir(exist_ok=True)
        self.cache_dir.mkdir(exist_ok=True)
        self.config_path = workdir / "confroom.toml"
        self.sip_port = free_sip_port()
        # not held: two servers' ranges may overlap (each skips a port the other has bound)
        self.rtp_lo = free_port_block(rtp_port_count, lo=_RTP_RANGES[0], hi=_RTP_RANGES[1],
                                      hold=False)
        self.rtp_hi = self.rtp_lo + rtp_port_count - 1
        self.apps = [dict(a) for a in apps]
        self.cli_app = cli_app
        self.env = dict(env or {})
        # RLIMIT_NOFILE (soft and hard) of the server process, so it cannot raise it
        self.fd_limit = fd_limit
        config: dict[str, Any] = {
            "rtp": {} if rtp_timeout is None else {"timeout": float(rtp_timeout)},
            "media": {"dir": str(self.media_dir), "cache_dir": str(self.cache_dir)},
        }
        if webhook_timeout is not None:
            config["webhooks"] = {"timeout": float(webhook_timeout)}
        for section, values in (extra_toml or {}).items():
            if isinstance(values, list):  # an array of tables, e.g. [[trunks]]
                config[section] = values
            else:
                config.setdefault(section, {}).update(values)
        config["apps"] = self.apps
        self.config = config
        super().__init__()

    # -- life cycle ------------------------------------------------------------------

    @property
    def target(self) -> str:
        """host:port for SIPp."""
        return f"{HOST}:{self.sip_port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "confroom", "serve",
            "--config", str(self.config_path),
            "--sip-host", HOST,
            "--sip-port", str(self.sip_port),
            "--rtp-ports", f"{self.rtp_lo}-{self.rtp_hi}",
        ]  # fmt: skip
        if self.cli_app:
            cmd += ["--app", self.cli_app]
        return cmd

    def start(self) -> ConfroomProcess:
        self.config_path.write_text(to_toml(self.config))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for k in list(env):  # the TOML and the flags decide, not the caller's environment
            if k.startswith("CONFROOM_") and k not in self.env:
                del env[k]
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            errors="replace",
            preexec_fn=self._limit_fds if self.fd_limit is not None else None,
        )
        self._start_reader()
        return self

    def _limit_fds(self) -> None:  # runs in the child between fork and exec
        assert self.fd_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_limit, self.fd_limit))

    def open_fds(self) -> int:
        """Descriptors the server process has open now (from /proc)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_ready(self, timeout: float = 10.0) -> None:
        try:
            self.wait_log(re.escape(READY_LINE), timeout=timeout)
        except AssertionError as e:
            raise AssertionError(f"confroom did not become ready: {e}") from None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait for the exit, return the exit code (kills after `timeout`)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise AssertionError(
                    f"confroom did not exit within {timeout}s of SIGTERM\n{self.log_text()}"
                ) from None
        if self._reader is not None:
            self._reader.join(timeout=5)
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


ConfroomFactory = Callable[..., ConfroomProcess]
"""The `confroom` fixture: confroom(call_hook | verbs=..., ...) -> a ready server."""


class RedisServer:
    """A private redis-server on a free port of 127.0.0.1, its data in `workdir` (no
    persistence); `password` sets requirepass; `tls` = (CA, certificate, key) PEM files makes
    it TLS only. stop()/start() again keep the port."""

    def __init__(self, workdir: Path, password: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}{HOST}:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        exe = require_tool("redis-server")
        cmd = [exe, "--port", str(self.port), "--bind", HOST, "--save", "",
               "--appendonly", "no", "--dir", str(self.workdir), "--logfile",
               str(self.workdir / "redis.log")]
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.tls is not None:
            ca, cert, key = self.tls
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                    "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                    "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") in ("PONG", b"PONG"):
                    return self
            except OSError:
                pass
            assert self.proc.poll() is None, f"redis-server exited: {self.log_text()}"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_text(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def command(self, *args: str) -> Any:
        """One Redis command over a fresh connection (RESP, no client library)."""
        with socket.create_connection((HOST, self.port), timeout=5) as raw:
            sock = raw
            if self.tls is not None:
                import ssl

                ctx = ssl.create_default_context(cafile=str(self.tls[0]))
                sock = ctx.wrap_socket(raw, server_hostname=HOST)
            f = sock.makefile("rb")
            if self.password:
                sock.sendall(_resp(["AUTH", self.password]))
                _read_resp(f)
            sock.sendall(_resp(list(args)))
            return _read_resp(f)


def _resp(args: Sequence[str]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_resp(f: Any) -> Any:
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise OSError(f"redis error: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_resp(f) for _ in range(n)]
    raise OSError(f"unexpected RESP reply {line!r}")


def parse_kv(line: str) -> dict[str, str]:
    """key=value pairs of a log line (values end at whitespace)."""
    return dict(re.findall(r"(\w+)=(\S+)", line))


# --------------------------------------------------------------------------------- webhooks


@dataclass
class HookRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    json: Any
    time: float

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers.items():
            if k.lower() == low:
                return v
        return None


@dataclass
class Reply:
    """What a HookApp route answers: JSON (verbs) or a raw body, a status and a delay; with
    `stream` > 0, that many bytes of blanks written 64 KiB at a time without a Content-Length
    (HookApp.streamed gets how many were written before the client went away)."""

    verbs: Any = None
    status: int = 200
    delay: float = 0.0
    body: bytes | str | None = None
    content_type: str = "application/json"
    stream: int = 0


RouteSpec = (
    Reply | list[Any] | int | Callable[[HookRequest], "Reply | list[Any] | int | Awaitable[Any]"]
)


def verify_signature(header: str | None, raw: bytes, secret: str, tolerance: float = 300) -> bool:
    """Check a `Jambonz-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "t.body")>` header."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, _, v = item.strip().partition("=")
        parts.setdefault(k, []).append(v)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance:
        return False
    expected = hmac.new(
        secret.encode(), f"{t}.".encode() + raw, hashlib.sha256
    ).hexdigest()
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


def sign(raw: bytes, secret: str, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


WS_APPS_DIR = Path(__file__).resolve().parent / "ws_apps"


class WsAppProcess:
    """A jambonz WebSocket app as a separate process, written with an unmodified jambonz SDK
    (`ws_apps/py_app.py`: jambonz-python-sdk; `ws_apps/node_app.mjs`: @jambonz/sdk from npm).

    `spec` tells it which verbs each caller gets (see those files). The app prints one JSON
    line per event; `events()` / `wait_event()` read them. `command()` makes it send a
    `command` over the call's socket. `kill()` (SIGKILL) and `start()` again restart it on the
    same port. A python app whose spec has "tls" ({"cert", "key"}) serves wss://."""

    def __init__(self, kind: str, spec: Mapping[str, Any], port: int | None = None) -> None:
        self.kind = kind
        self.spec = dict(spec)
        self.port = port or free_tcp_port()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    @property
    def url(self) -> str:
        return f"{'wss' if 'tls' in self.spec else 'ws'}://{HOST}:{self.port}/"

    def command_line(self) -> list[str]:
        spec = json.dumps(self.spec)
        if self.kind == "node":
            node = require_tool("node")
            require_file(WS_APPS_DIR / "node_modules" / "@jambonz" / "sdk",
                         "`npm ci` in tests/e2e/ws_apps installs it: scripts/setup.sh --test")
            return [node, str(WS_APPS_DIR / "node_app.mjs"), str(self.port), spec]
        return [sys.executable, str(WS_APPS_DIR / "py_app.py"), str(self.port), spec]

    def start(self, timeout: float = 15.0) -> WsAppProcess:
        cmd = self.command_line()
        self.proc = subprocess.Popen(cmd, cwd=WS_APPS_DIR, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        proc = self.proc
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        n = sum(1 for e in self.events() if e.get("ev") == "ready")
        self.wait_event(lambda e: e.get("ev") == "ready", n=n + 1, timeout=timeout)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"ev": "output", "line": line.rstrip()}
            with self._cond:
                self.lines.append(obj)
                self._cond.notify_all()

    def events(self, ev: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.lines if ev is None or e.get("ev") == ev]

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], n: int = 1,
                   timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.lines if pred(e)]
                if len(found) >= n:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(json.dumps(e) for e in self.lines[-20:])
                    raise AssertionError(f"ws app: {n} matching event(s) not seen in "
                                         f"{timeout:g}s; last events:\n{tail}")
                self._cond.wait(left)

    def sessions(self, timeout: float = 15.0, n: int = 1) -> dict[str, str]:
        """from user -> call_sid of the sessions seen (waits for `n`)."""
        found = self.wait_event(lambda e: e.get("ev") == "session", n=n, timeout=timeout)
        return {e["from"]: e["call_sid"] for e in found}

    def command(self, call_sid: str, command: str, data: Any = None) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        sent = len(self.events("sent"))
        self.proc.stdin.write(json.dumps({"call_sid": call_sid, "command": command,
                                          "data": data}) + "\n")
        self.proc.stdin.flush()
        self.wait_event(lambda e: e.get("ev") == "sent", n=sent + 1, timeout=5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()


class HookApp:
    """A jambonz-style webhook app: a real aiohttp server in a background thread."""

    def __init__(self, host: str = HOST) -> None:
        self.host = host
        self.port = 0
        self.routes: dict[str, RouteSpec] = {}
        self.requests: list[HookRequest] = []
        self.streamed: list[int] = []  # bytes written by each `Reply(stream=...)` answer
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="hookapp", daemon=True)

    def start(self) -> HookApp:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(timeout=10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def route(self, path: str, spec: RouteSpec) -> None:
        """Program what `path` answers: a verb list, a status code, a Reply or a callable."""
        with self._cond:
            self.routes[path] = spec

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        rec = HookRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            raw=raw,
            json=parsed,
            time=time.monotonic(),
        )
        with self._cond:
            self.requests.append(rec)
            spec = self.routes.get(request.path)
            self._cond.notify_all()
        if spec is None:
            return web.Response(status=404, text="no such route in the test's HookApp")
        result: Any = spec(rec) if callable(spec) else spec
        if asyncio.iscoroutine(result):
            result = await result
        reply = result if isinstance(result, Reply) else (
            Reply(status=result) if isinstance(result, int) else Reply(verbs=result)
        )
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.stream:
            return await self._stream(request, reply)
        if reply.body is not None:
            body = reply.body.encode() if isinstance(reply.body, str) else reply.body
            return web.Response(status=reply.status, body=body, content_type=reply.content_type)
        if reply.verbs is None:
            return web.Response(status=reply.status)
        return web.Response(
            status=reply.status, text=json.dumps(reply.verbs), content_type="application/json"
        )

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        resp = web.StreamResponse(status=reply.status,
                                  headers={"Content-Type": reply.content_type})
        await resp.prepare(request)
        chunk = b" " * 65536
        sent = 0
        try:
            while sent < reply.stream:
                n = min(len(chunk), reply.stream - sent)
                await resp.write(chunk[:n])
                sent += n
            await resp.write_eof()
        except (ConnectionError, RuntimeError):  # the client closed the connection
            pass
        with self._cond:
            self.streamed.append(sent)
            self._cond.notify_all()
        return resp

    def received(self, path: str | None = None) -> list[HookRequest]:
        with self._cond:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_requests(self, path: str, n: int = 1, timeout: float = 10.0) -> list[HookRequest]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for r in self.requests if r.path == path) >= n, timeout
            )
            got = [r for r in self.requests if r.path == path]
        if not ok:
            raise AssertionError(
                f"HookApp: {len(got)} request(s) to {path} within {timeout}s, wanted {n}; "
                f"all paths seen: {[r.path for r in self.received()]}"
            )
        return got

    def wait_for(
        self, predicate: Callable[[list[HookRequest]], bool], timeout: float = 10.0
    ) -> list[HookRequest]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(list(self.requests)), timeout):
                raise AssertionError(
                    f"HookApp: condition not met within {timeout}s; requests: "
                    f"{[(r.path, r.json) for r in self.requests]}"
                )
            return list(self.requests)


# --------------------------------------------------------------------------------- G.711


def _ulaw_decode_one(u: int) -> int:
    u = ~u & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return (0x84 - t) if (u & 0x80) else (t - 0x84)


def _alaw_decode_one(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if (a & 0x80) else -t


_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for i, end in enumerate(ends):
        if value <= end:
            return i
    return len(ends)


def _ulaw_encode_one(pcm: int) -> int:
    v = pcm >> 2
    if v < 0:
        v, mask = -v, 0x7F
    else:
        mask = 0xFF
    v = min(v, 8159) + 0x21
    seg = _segment(v, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask


def _alaw_encode_one(pcm: int) -> int:
    v = pcm >> 3
    if v >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        v = -v - 1
    seg = _segment(v, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= ((v >> 1) if seg < 2 else (v >> seg)) & 0x0F
    return aval ^ mask


ULAW_DECODE = np.array([_ulaw_decode_one(i) for i in range(256)], dtype=np.int16)
ALAW_DECODE = np.array([_alaw_decode_one(i) for i in range(256)], dtype=np.int16)
_ALL_PCM = range(-32768, 32768)
ULAW_ENCODE = np.array([_ulaw_encode_one(i) for i in _ALL_PCM], dtype=np.uint8)
ALAW_ENCODE = np.array([_alaw_encode_one(i) for i in _ALL_PCM], dtype=np.uint8)
CODECS = {"PCMU": 0, "PCMA": 8, "G722": 9, "OPUS": 111}
# RTP time per 20 ms, and PCM rate, of each codec (G.722: RTP clock 8000, audio 16 kHz)
TS_PER_20MS = {"PCMU": 160, "PCMA": 160, "G722": 160, "OPUS": 960}
PCM_RATE = {"PCMU": 8000, "PCMA": 8000, "G722": 16000, "OPUS": 16000}


def g711_decode(payload: bytes, payload_type: int) -> Int16Array:
    table = {0: ULAW_DECODE, 8: ALAW_DECODE}[payload_type]
    return table[np.frombuffer(payload, dtype=np.uint8)]


def g711_encode(pcm: npt.ArrayLike, payload_type: int) -> bytes:
    table = {0: ULAW_ENCODE, 8: ALAW_ENCODE}[payload_type]
    idx = np.asarray(pcm, dtype=np.int32) + 32768
    return bytes(table[idx].tobytes())


# --------------------------------------------------------------------------------- audio


def tone(freq: float, seconds: float, rate: int = 8000, amplitude: float = 0.5) -> Int16Array:
    n = round(seconds * rate)
    t = np.arange(n) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


def write_wav(path: Path, pcm: npt.ArrayLike, rate: int = 8000) -> Path:
    data = np.asarray(pcm, dtype=np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.astype("<i2").tobytes())
    return path


def write_tone_wav(
    path: Path, freq: float, seconds: float, rate: int = 8000, amplitude: float = 0.5
) -> Path:
    return write_wav(path, tone(freq, seconds, rate, amplitude), rate)


def speech_pcm(workdir: Path, text: str, dbfs: float = -20.0) -> Int16Array:
    """espeak-ng speech, 8 kHz mono 16-bit via sox, silence trimmed, scaled to `dbfs` RMS."""
    espeak, sox = require_tool("espeak-ng"), require_tool("sox")
    raw, wav8k = workdir / "speech.wav", workdir / "speech8k.raw"
    subprocess.run([espeak, "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run([sox, str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer",
                    "-t", "raw", str(wav8k)], check=True, capture_output=True)
    pcm = np.frombuffer(wav8k.read_bytes(), dtype="<i2").astype(np.float64)
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
    levels = np.sqrt(np.mean(frames**2, axis=1))
    active = np.flatnonzero(levels > 0.05 * levels.max())
    frames = frames[active[0] : active[-1] + 1]  # no leading/trailing silence
    level = np.sqrt(np.mean(frames[levels[active[0] : active[-1] + 1] > 0.05 * levels.max()]
                            ** 2))
    scaled = frames.reshape(-1) * (32768 * 10 ** (dbfs / 20) / level)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def rms(pcm: npt.ArrayLike) -> float:
    a = np.asarray(pcm, dtype=np.float64)
    return float(np.sqrt(np.mean(a * a))) if a.size else 0.0


def loud_frames(pcm: Int16Array, threshold: float = 300.0, frame: int = 160) -> Int16Array:
    """Concatenation of the 20 ms frames whose RMS exceeds `threshold`."""
    n = len(pcm) // frame
    if n == 0:
        return np.zeros(0, dtype=np.int16)
    frames = pcm[: n * frame].reshape(n, frame)
    levels = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return frames[levels > threshold].reshape(-1)


def _spectrum(pcm: npt.ArrayLike, rate: int) -> tuple[npt.NDArray[np.float64], ...]:
    a = np.asarray(pcm, dtype=np.float64)
    if a.size < 16:
        raise ValueError("not enough samples for a spectrum")
    a = a - a.mean()
    spec = np.abs(np.fft.rfft(a * np.hanning(a.size))) ** 2
    freqs = np.fft.rfftfreq(a.size, 1.0 / rate)
    return freqs, spec


def dominant_frequency(pcm: npt.ArrayLike, rate: int = 8000) -> float:
    """The strongest frequency (Hz), refined by parabolic interpolation between FFT bins."""
    freqs, spec = _spectrum(pcm, rate)
    spec[0] = 0.0
    k = int(np.argmax(spec))
    if 0 < k < len(spec) - 1:
        a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom != 0 else 0.0
        return float(freqs[k] + offset * (freqs[1] - freqs[0]))
    return float(freqs[k])


def tone_power(pcm: npt.ArrayLike, freq: float, rate: int = 8000, bandwidth: float = 20.0) -> float:
    """Share (0..1) of the signal's energy within `freq` +- `bandwidth` Hz."""
    freqs, spec = _spectrum(pcm, rate)
    total = float(spec[1:].sum())
    if total <= 0:
        return 0.0
    band = (freqs >= freq - bandwidth) & (freqs <= freq + bandwidth)
    return float(spec[band].sum()) / total


def band_power(pcm: npt.ArrayLike, lo: float, hi: float, rate: int = 8000) -> float:
    freqs, spec = _spectrum(pcm, rate)
    total = float(spec[1:].sum())
    if total <= 0:
        return 0.0
    return float(spec[(freqs >= lo) & (freqs <= hi)].sum()) / total


# --------------------------------------------------------------------------------- RTP

RTP_HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True)
class RtpPacket:
    arrival: float  # time.monotonic()
    source: tuple[str, int]
    version: int
    marker: bool
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes

    @classmethod
    def parse(cls, data: bytes, source: tuple[str, int], arrival: float) -> RtpPacket | None:
        if len(data) < RTP_HEADER.size:
            return None
        b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(data)
        if b0 >> 6 != 2:
            return None
        offset = RTP_HEADER.size + 4 * (b0 & 0x0F)
        if b0 & 0x10:  # header extension
            if len(data) < offset + 4:
                return None
            (ext_words,) = struct.unpack_from("!H", data, offset + 2)
            offset += 4 + 4 * ext_words
        end = len(data)
        if b0 & 0x20 and end > offset:  # padding
            end -= data[-1]
        return cls(arrival, source, b0 >> 6, bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc,
                   data[offset:end])


def build_rtp(
    payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False
) -> bytes:
    return RTP_HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, seq & 0xFFFF,
                           timestamp & 0xFFFFFFFF, ssrc) + payload


DTMF_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14,
               "D": 15}


class RtpPeer:
    """A UDP RTP endpoint on 127.0.0.1:<ephemeral> that records what it receives and can send
    G.711 tones and RFC 4733 digits, paced at 20 ms with monotonic deadlines.

    SRTP: set `protect` (applied to every packet sent) and `unprotect` (every datagram
    received; None = not authentic, counted in `rejected`); `wire` keeps what arrived as it
    arrived."""

    def __init__(self, host: str = HOST) -> None:
        self.protect: Callable[[bytes], bytes] | None = None
        self.unprotect: Callable[[bytes], bytes | None] | None = None
        self.wire: list[bytes] = []
        self.rejected = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self._packets: list[RtpPacket] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._recv_loop, name="rtp-peer", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _recv_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                break
            if self.unprotect is not None:
                self.wire.append(data)
                plain = self.unprotect(data)
                if plain is None:
                    self.rejected += 1
                    continue
                data = plain
            pkt = RtpPacket.parse(data, (src[0], src[1]), time.monotonic())
            if pkt is None:
                continue
            with self._cond:
                self._packets.append(pkt)
                self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> RtpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- receiving -------------------------------------------------------------------

    def packets(self, payload_types: Iterable[int] | None = None) -> list[RtpPacket]:
        pts = None if payload_types is None else set(payload_types)
        with self._cond:
            return [p for p in self._packets if pts is None or p.payload_type in pts]

    def wait_packets(
        self, n: int = 1, timeout: float = 10.0, payload_types: Iterable[int] | None = None
    ) -> list[RtpPacket]:
        pts = None if payload_types is None else set(payload_types)

        def matching() -> list[RtpPacket]:
            return [p for p in self._packets if pts is None or p.payload_type in pts]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= n, timeout):
                raise AssertionError(
                    f"RtpPeer {self.address}: {len(matching())} packet(s) within {timeout}s, "
                    f"wanted {n}"
                )
            return matching()

    def wait_quiet(self, quiet: float = 0.5, timeout: float = 10.0) -> bool:
        """Wait until no packet has arrived for `quiet` seconds (True) or `timeout` (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                last = self._packets[-1].arrival if self._packets else 0.0
                now = time.monotonic()
                if now - last >= quiet:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(min(quiet - (now - last), deadline - now))

    def decoded_pcm(self, since: float | None = None) -> Int16Array:
        """The received G.711 audio (PCMU/PCMA), in sequence order, as 16-bit PCM."""
        pkts = [p for p in self.packets((0, 8)) if since is None or p.arrival >= since]
        if not pkts:
            return np.zeros(0, dtype=np.int16)
        # unwrap 16-bit sequence numbers relative to the first packet, then sort
        first = pkts[0].seq
        def key(p: RtpPacket) -> int:
            d = (p.seq - first) & 0xFFFF
            return d - 0x10000 if d >= 0x8000 else d
        seen: set[int] = set()
        chunks: list[Int16Array] = []
        for p in sorted(pkts, key=key):
            k = key(p)
            if k in seen:
                continue
            seen.add(k)
            chunks.append(g711_decode(p.payload, p.payload_type))
        return np.concatenate(chunks)

    def decoded_wide(self, codec: str, payload_type: int | None = None,
                     since: float | None = None) -> Int16Array:
        """The received G.722 or Opus audio as 16 kHz PCM (confroom's codec module), in
        sequence order; a missing packet is a 20 ms gap of zeros."""
        from confroom.media.codecs import make_decoder
        pt = CODECS[codec] if payload_type is None else payload_type
        pkts = [p for p in self.packets((pt,)) if since is None or p.arrival >= since]
        if not pkts:
            return np.zeros(0, dtype=np.int16)
        first = pkts[0].seq
        by_seq: dict[int, bytes] = {}
        for p in pkts:
            d = (p.seq - first) & 0xFFFF
            by_seq.setdefault(d - 0x10000 if d >= 0x8000 else d, p.payload)
        decoder = make_decoder(codec)
        chunks: list[Int16Array] = []
        for k in range(min(by_seq), max(by_seq) + 1):
            frame = decoder.decode(by_seq[k]) if k in by_seq else None
            chunks.append(np.zeros(320, dtype=np.int16) if frame is None else frame)
        return np.concatenate(chunks)

    def sources(self) -> set[tuple[str, int]]:
        return {p.source for p in self.packets()}

    def continue_stream_of(self, other: RtpPeer) -> None:
        """Send `other`'s RTP stream on from this peer's port (same SSRC, next sequence number
        and timestamp): what a phone's packets look like after its NAT binding changed."""
        with other._send_lock, self._send_lock:
            self._ssrc, self._seq, self._ts = other._ssrc, other._seq, other._ts

    # -- sending ---------------------------------------------------------------------

    def send_pcm(
        self,
        pcm: npt.ArrayLike,
        to: tuple[str, int],
        codec: str = "PCMU",
        ptime_ms: int = 20,
        lost: Collection[int] = (),
        delays_ms: Sequence[float] | None = None,
        payload_type: int | None = None,
    ) -> int:
        """Send PCM as RTP, one packet per `ptime_ms`, paced by deadlines: G.711 (8 kHz PCM),
        or G.722 / Opus (16 kHz PCM, 20 ms only, encoded with confroom's codec module; Opus
        as `payload_type`, default 111). An impaired network on the sender's side: packets
        numbered in `lost` (0 = the first) are not sent (their sequence numbers and
        timestamps are used up all the same), packet i leaves `delays_ms[i]` late (so
        packets can overtake each other)."""
        pt = CODECS[codec] if payload_type is None else payload_type
        samples = np.asarray(pcm, dtype=np.int16)
        step = PCM_RATE[codec] // 1000 * ptime_ms
        ts_step = TS_PER_20MS[codec] * ptime_ms // 20
        encode: Callable[[Int16Array], bytes] = lambda chunk: g711_encode(chunk, pt)  # noqa: E731
        if codec in ("G722", "OPUS"):
            from confroom.media.codecs import make_encoder
            assert ptime_ms == 20, "wideband codecs: 20 ms packets only"
            encode = make_encoder(codec).encode
        count = -(-len(samples) // step)
        sent = 0
        with self._send_lock:
            packets: list[tuple[float, int, bytes]] = []
            for i in range(count):
                chunk = samples[i * step : (i + 1) * step]
                if len(chunk) < step:
                    chunk = np.pad(chunk, (0, step - len(chunk)))
                payload = encode(chunk)  # (an encoder's state runs on over lost packets)
                if i not in lost:
                    seq, ts = (self._seq + i) & 0xFFFF, (self._ts + i * ts_step) & 0xFFFFFFFF
                    pkt = build_rtp(pt, seq, ts, self._ssrc, payload, marker=(i == 0))
                    late = 0.0 if delays_ms is None else delays_ms[i]
                    packets.append(((i * ptime_ms + late) / 1000, i, pkt))
            self._seq = (self._seq + count) & 0xFFFF
            self._ts = (self._ts + count * ts_step) & 0xFFFFFFFF
            packets.sort()
            start = time.monotonic()
            for at, _, pkt in packets:
                delay = start + at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                if self._stop.is_set():
                    break
                self.sock.sendto(pkt if self.protect is None else self.protect(pkt), to)
                sent += 1
        return sent

    def send_tone(
        self,
        freq: float,
        seconds: float,
        to: tuple[str, int],
        codec: str = "PCMU",
        amplitude: float = 0.5,
    ) -> int:
        return self.send_pcm(tone(freq, seconds, amplitude=amplitude), to, codec)

    def send_tone_async(self, *args: Any, **kwargs: Any) -> threading.Thread:
        t = threading.Thread(target=self.send_tone, args=args, kwargs=kwargs, daemon=True)
        t.start()
        return t

    def send_dtmf(
        self, digit: str, to: tuple[str, int], duration_ms: int = 160, payload_type: int = 101
    ) -> int:
        """One RFC 4733 event: packets every 20 ms, then the end packet three times."""
        event = DTMF_EVENTS[digit.upper()]
        sent = 0
        with self._send_lock:
            ts = self._ts
            start = time.monotonic()
            steps = max(1, duration_ms // 20)
            for i in range(steps + 3):
                end = i >= steps
                dur = 160 * min(i + 1, steps)
                payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, dur)
                delay = start + min(i, steps) * 0.02 - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                pkt = build_rtp(payload_type, self._seq, ts, self._ssrc, payload, marker=(i == 0))
                self.sock.sendto(pkt if self.protect is None else self.protect(pkt), to)
                self._seq = (self._seq + 1) & 0xFFFF
                sent += 1
            self._ts = (ts + 160 * steps) & 0xFFFFFFFF
        return sent


# --------------------------------------------------------------------------------- SIPp


@dataclass
class SippResult:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    successful: int | None
    failed: int | None
    created: int | None
    elapsed: float
    errors: str = ""
    logs: str = ""
    messages: str = ""
    stats: list[dict[str, str]] = field(default_factory=list)
    timed_out: bool = False

    def ok(self, calls: int = 1) -> bool:
        return (
            self.returncode == 0
            and not self.timed_out
            and self.failed == 0
            and self.successful == calls
        )

    @property
    def call_ids(self) -> list[str]:
        """Call-IDs SIPp used, in order of first appearance (needs -trace_msg)."""
        seen: dict[str, None] = {}
        for m in re.finditer(r"^Call-ID:\s*(\S+)", self.messages, re.M | re.I):
            seen.setdefault(m.group(1), None)
        return list(seen)

    @property
    def final_statuses(self) -> list[int]:
        """Statuses logged by uac_expect_status/uac_decline ("final_status=NNN")."""
        return [int(x) for x in re.findall(r"final_status=(\d+)", self.logs)]

    def describe(self, tail: int = 4000) -> str:
        screen = self.stdout[-tail:]
        return (
            f"SIPp rc={self.returncode} successful={self.successful} failed={self.failed} "
            f"created={self.created} elapsed={self.elapsed:.1f}s timed_out={self.timed_out}\n"
            f"cmd: {' '.join(self.cmd)}\n--- errors ---\n{self.errors[-tail:]}\n"
            f"--- stderr ---\n{self.stderr[-tail:]}\n--- screen ---\n{screen}"
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def parse_sipp_stats(text: str) -> list[dict[str, str]]:
    rows = list(csv.reader(text.splitlines(), delimiter=";"))
    if len(rows) < 2:
        return []
    head = rows[0]
    return [dict(zip(head, r, strict=False)) for r in rows[1:] if r]


def parse_sipp_screen(text: str) -> dict[str, int]:
    """Cumulative counters from SIPp's final statistics screen."""
    out: dict[str, int] = {}
    for name, key in (("Successful call", "successful"), ("Failed call", "failed"),
                      ("Outgoing calls created", "created")):
        found = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", text)
        if found:
            out[key] = int(found[-1])
    return out


class SippRun:
    """A SIPp process started in the background; `wait()` returns its SippResult."""

    def __init__(self, cmd: list[str], outdir: Path, timeout: float) -> None:
        self.cmd = cmd
        self.outdir = outdir
        self.timeout = timeout
        self._stdout = open(outdir / "stdout.txt", "w")  # noqa: SIM115 - closed in wait()
        self._stderr = open(outdir / "stderr.txt", "w")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=outdir, stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr
        )
        self.result: SippResult | None = None

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> SippResult:
        if self.result is not None:
            return self.result
        limit = self.timeout + 15 if timeout is None else timeout
        timed_out = False
        try:
            self.proc.wait(timeout=max(0.0, self.started + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elapsed = time.monotonic() - self.started
        self._stdout.close()
        self._stderr.close()
        out = self.outdir
        stdout = _read(out / "stdout.txt")
        stats = parse_sipp_stats(_read(out / "stats.csv"))
        screen = parse_sipp_screen(_read(out / "screen.txt") + "\n" + stdout)

        def counter(col: str, key: str) -> int | None:
            if stats and stats[-1].get(col, "").isdigit():
                return int(stats[-1][col])
            return screen.get(key)

        self.result = SippResult(
            cmd=self.cmd,
            returncode=int(self.proc.returncode),
            stdout=stdout,
            stderr=_read(out / "stderr.txt"),
            successful=counter("SuccessfulCall(C)", "successful"),
            failed=counter("FailedCall(C)", "failed"),
            created=counter("OutgoingCall(C)", "created"),
            elapsed=elapsed,
            errors=_read(out / "errors.log"),
            logs=_read(out / "logs.log"),
            messages=_read(out / "messages.log"),
            stats=stats,
            timed_out=timed_out,
        )
        return self.result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_run_counter = iter(range(1, 1_000_000))


def scenario_path(scenario: str | Path) -> Path:
    p = Path(scenario)
    if not p.suffix:
        p = p.with_suffix(".xml")
    return p if p.is_absolute() else SIPP_DIR / p


DEFAULT_KEYS = {"from_user": "alice", "rtp_ip": HOST, "rtp_port": "9", "payloads": "0 8 101"}


def sipp_command(
    scenario: str | Path,
    target: str,
    outdir: Path,
    *,
    transport: str = "u1",
    service: str = "1000",
    keys: Mapping[str, object] | None = None,
    variables: Mapping[str, object] | None = None,
    calls: int = 1,
    rate: float | None = None,
    limit: int | None = None,
    pause_ms: int | None = None,
    lost: float | None = None,
    timeout: float = 30.0,
    recv_timeout: float | None = None,
    local_port: int | None = None,
    media_port: int | None = None,
    trace_msg: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    sipp = shutil.which("sipp") or "sipp"
    all_keys = {**DEFAULT_KEYS, **{k: str(v) for k, v in (keys or {}).items()}}
    cmd = [
        sipp, "-sf", str(scenario_path(scenario)), target,
        "-i", HOST,
        "-p", str(local_port if local_port is not None else free_sip_port()),
        "-mi", HOST,
        "-mp", str(media_port if media_port is not None else free_port_block(4)),
        "-t", transport,
        "-s", service,
        "-m", str(calls),
        "-nostdin",
        "-timeout", f"{timeout:g}s", "-timeout_error",
        "-recv_timeout", str(int((recv_timeout if recv_timeout is not None else timeout) * 1000)),
        "-trace_err", "-error_file", str(outdir / "errors.log"),
        "-trace_stat", "-stf", str(outdir / "stats.csv"), "-fd", "1",
        "-trace_screen", "-screen_file", str(outdir / "screen.txt"),
        "-trace_logs", "-log_file", str(outdir / "logs.log"),
    ]  # fmt: skip
    if trace_msg:
        cmd += ["-trace_msg", "-message_file", str(outdir / "messages.log")]
    if rate is not None:
        cmd += ["-r", f"{rate:g}", "-rp", "1000"]
    if limit is not None:
        cmd += ["-l", str(limit)]
    if pause_ms is not None:
        cmd += ["-d", str(int(pause_ms))]
    if lost is not None:
        cmd += ["-lost", f"{lost:g}"]
    for k, v in all_keys.items():
        cmd += ["-key", k, v]
    for k, v in (variables or {}).items():
        cmd += ["-set", k, str(v)]
    return [*cmd, *extra]


def start_sipp(
    scenario: str | Path, target: str, workdir: Path, *, timeout: float = 30.0, **kw: Any
) -> SippRun:
    """Start SIPp in the background (e.g. while the test does RTP work); `.wait()` for it."""
    outdir = workdir / f"sipp-{next(_run_counter):03d}-{scenario_path(scenario).stem}"
    outdir.mkdir(parents=True)
    cmd = sipp_command(scenario, target, outdir, timeout=timeout, **kw)
    return SippRun(cmd, outdir, timeout)


def run_sipp(
    scenario: str | Path, target: str, workdir: Path, *, timeout: float = 30.0, **kw: Any
) -> SippResult:
    return start_sipp(scenario, target, workdir, timeout=timeout, **kw).wait()


class SippRunner:
    """run_sipp/start_sipp bound to a test's tmp dir; remembers runs for failure reports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.runs: list[SippRun] = []

    def start(self, scenario: str | Path, target: str, **kw: Any) -> SippRun:
        run = start_sipp(scenario, target, self.workdir, **kw)
        self.runs.append(run)
        return run

    def run(self, scenario: str | Path, target: str, **kw: Any) -> SippResult:
        return self.start(scenario, target, **kw).wait()

    def close(self) -> None:
        for r in self.runs:
            r.kill()
            r.wait(timeout=5)
