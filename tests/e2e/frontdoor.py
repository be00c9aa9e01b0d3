"""Kamailio as the cluster's SIP front door, for the e2e tests (and bench): a real `kamailio`
process running the shipped deploy/kamailio/kamailio.cfg on free ports in front of given nodes.

`KamailioProcess` writes the dispatcher list, starts kamailio in the foreground in its own
process group (main process and children), waits until it answers OPTIONS, and on `stop()`
sends SIGTERM and checks that no process of the group is left. Its log (stderr) is read like a
confroom log: `wait_log`, `find_timed_logs` (arrival times, to measure failover windows).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from harness import HOST, LoggedProcess, free_sip_port

ROOT = Path(__file__).resolve().parents[2]
KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"


def dispatcher_list(nodes: Sequence[str], set_id: int = 1) -> str:
    """A dispatcher.list: one `set sip:host:port` line per node ("host:port")."""
    return "".join(f"{set_id} sip:{node}\n" for node in nodes)


def sip_options_ok(host: str, port: int, timeout: float = 0.5) -> bool:
    """Does host:port answer an out-of-dialog OPTIONS over UDP with 200?"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        tag = uuid.uuid4().hex[:8]
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK{tag};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{HOST}>;tag={tag}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {tag}@probe\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (host, port))
        try:
            data = s.recv(65536)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 200")


class KamailioProcess(LoggedProcess):
    """kamailio -DD -E with the shipped config, listening on HOST:sip_port (UDP and TCP)."""

    name = "kamailio"

    def __init__(self, kamailio: str, workdir: Path, nodes: Sequence[str], *,
                 node_timeout_ms: int = 2000, children: int = 2, shm_mb: int = 64) -> None:
        super().__init__()
        self.kamailio = kamailio
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.list_path = workdir / "dispatcher.list"
        self.list_path.write_text(dispatcher_list(nodes))
        self.rundir = workdir / "run"
        self.rundir.mkdir(exist_ok=True)
        self.sip_port = free_sip_port()
        self.node_timeout_ms = node_timeout_ms
        self.children = children
        self.shm_mb = shm_mb  # shared memory: every transaction lives there (~13 kB each)

    @property
    def target(self) -> str:
        """host:port for SIPp."""
        return f"{HOST}:{self.sip_port}"

    def command(self) -> list[str]:
        return [
            self.kamailio, "-DD", "-E", "-f", str(KAMAILIO_CFG), "-Y", str(self.rundir),
            "-m", str(self.shm_mb), "-M", "8",
            "-A", f"SIP_IP={HOST}", "-A", f"SIP_PORT={self.sip_port}",
            "-A", f'DS_LIST="{self.list_path}"',
            "-A", f"NODE_TIMEOUT={self.node_timeout_ms}", "-A", f"CHILDREN={self.children}",
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> KamailioProcess:
        self.proc = subprocess.Popen(
            self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            errors="replace", start_new_session=True,
        )
        self._start_reader()
        deadline = time.monotonic() + timeout
        while not sip_options_ok(HOST, self.sip_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"kamailio did not answer OPTIONS on {self.target} within {timeout}s "
                    f"(rc={self.proc.returncode})\n--- log ---\n{self.log_text(80)}")
        return self

    def group_alive(self) -> bool:
        """Is any process of kamailio's process group still there?"""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM to the main process; fails if it or any child is still there after
        `timeout` (then kills the group so that nothing is left either way)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the children's exit: there is nothing to wait on
        leftover = self.group_alive() or self.proc.poll() is None
        if leftover:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if leftover:
            raise AssertionError(f"kamailio (or a child) still running {timeout}s after "
                                 f"SIGTERM\n--- log ---\n{self.log_text(40)}")
        return int(self.proc.returncode)
