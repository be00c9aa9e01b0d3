"""Fixtures for the confroom end-to-end tests (see harness.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    ACCOUNT_SID,
    APPLICATION_SID,
    WEBHOOK_SECRET,
    ConfroomFactory,
    ConfroomProcess,
    HookApp,
    RedisServer,
    RtpPeer,
    SippRunner,
    require_tool,
)

_SERVERS = pytest.StashKey[list[ConfroomProcess]]()
_SIPP = pytest.StashKey[list[SippRunner]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when not in ("setup", "call") or not report.failed:
        return
    for i, srv in enumerate(item.stash.get(_SERVERS, [])):
        cmd = " ".join(srv.command()) if srv.proc is not None else "(not started)"
        report.sections.append(
            (f"confroom #{i} log", f"$ {cmd}\n{srv.log_text(last=400)}")
        )
    for runner in item.stash.get(_SIPP, []):
        for run in runner.runs:
            if run.result is not None and not run.result.ok(calls=run.result.created or 1):
                report.sections.append((f"SIPp {run.outdir.name}", run.result.describe()))


@pytest.fixture
def hook_app() -> Iterator[HookApp]:
    """A real webhook server (aiohttp in a thread); program it with .route(path, ...)."""
    app = HookApp().start()
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def rtp_peer_factory() -> Iterator[Callable[[], RtpPeer]]:
    peers: list[RtpPeer] = []

    def make() -> RtpPeer:
        peer = RtpPeer()
        peers.append(peer)
        return peer

    yield make
    for p in peers:
        p.close()


@pytest.fixture
def rtp_peer(rtp_peer_factory: Callable[[], RtpPeer]) -> RtpPeer:
    return rtp_peer_factory()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory: redis_server(password=None, tls=None) starts a private redis-server (stopped
    after); tls = (CA, certificate, key) PEM files."""
    servers: list[RedisServer] = []

    def make(password: str | None = None,
             tls: tuple[Path, Path, Path] | None = None) -> RedisServer:
        srv = RedisServer(tmp_path / f"redis{len(servers)}", password=password, tls=tls)
        servers.append(srv)
        return srv.start()

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def sipp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SippRunner]:
    """SIPp runs bound to this test's tmp dir (each run gets its own output directory)."""
    require_tool("sipp")
    runner = SippRunner(tmp_path / "sipp")
    runner.workdir.mkdir()
    request.node.stash.setdefault(_SIPP, []).append(runner)
    try:
        yield runner
    finally:
        runner.close()



def app_table(
    call_hook: str,
    *,
    webhook_secret: str | None = WEBHOOK_SECRET,
    call_status_hook: str | None = None,
    numbers: list[str] | None = None,
    name: str = "e2e",
) -> dict[str, Any]:
    """One [[apps]] table (call_hook: a URL or a JSON verb file path)."""
    return {
        "name": name,
        "call_hook": call_hook,
        "call_status_hook": call_status_hook,
        "webhook_secret": webhook_secret,
        "account_sid": ACCOUNT_SID,
        "application_sid": APPLICATION_SID,
        "numbers": numbers or ["*"],
    }


@pytest.fixture
def confroom(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Generator[ConfroomFactory, None, None]:
    """Factory: confroom(call_hook=URL | verbs=[...], ...) starts a server and waits until ready.

    Keyword arguments: call_hook, verbs (written to a JSON verb file), webhook_secret,
    call_status_hook, apps (full list of [[apps]] tables, overrides the former), rtp_timeout,
    webhook_timeout, extra_toml, ready_timeout, prepare (callable run on the server object
    before it starts, e.g. to put files into its media dir), cli_app (--app flag), fd_limit
    (RLIMIT_NOFILE of the server process, soft = hard).
    """
    servers: list[ConfroomProcess] = request.node.stash.setdefault(_SERVERS, [])

    def factory(
        call_hook: str | None = None,
        *,
        verbs: list[Any] | None = None,
        webhook_secret: str | None = WEBHOOK_SECRET,
        call_status_hook: str | None = None,
        apps: list[dict[str, Any]] | None = None,
        rtp_timeout: float | None = None,
        webhook_timeout: float | None = None,
        extra_toml: dict[str, Any] | None = None,
        ready_timeout: float = 10.0,
        prepare: Callable[[ConfroomProcess], None] | None = None,
        cli_app: str | None = None,
        fd_limit: int | None = None,
    ) -> ConfroomProcess:
        workdir = tmp_path / f"confroom{len(servers)}"
        workdir.mkdir()
        if apps is None:
            if verbs is not None:
                import json

                verb_file = workdir / "app.json"
                verb_file.write_text(json.dumps(verbs))
                call_hook = str(verb_file)
            if call_hook is None:
                raise ValueError("confroom(): give call_hook, verbs or apps")
            apps = [app_table(call_hook, webhook_secret=webhook_secret,
                              call_status_hook=call_status_hook)]
        srv = ConfroomProcess(
            workdir,
            apps=apps,
            rtp_timeout=rtp_timeout,
            webhook_timeout=webhook_timeout,
            extra_toml=extra_toml,
            cli_app=cli_app,
            fd_limit=fd_limit,
        )
        if prepare is not None:
            prepare(srv)
        servers.append(srv)
        srv.start()
        srv.wait_ready(timeout=ready_timeout)
        return srv

    try:
        yield factory
    finally:
        for srv in servers:
            if srv.proc is not None and srv.proc.poll() is None:
                try:
                    srv.stop(timeout=10)
                except AssertionError:
                    srv.kill()
