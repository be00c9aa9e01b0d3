"""The `confroom` command line: `confroom serve [options]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from confroom import __version__
from confroom.config import ConfigError, load
from confroom.memory import GcPolicy, garbage_report

if TYPE_CHECKING:
    from confroom.server import Server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="confroom",
        description="confroom: a SIP/RTP voice conferencing server driven by jambonz-style "
        "webhook applications.",
    )
    p.add_argument("--version", action="version", version=f"confroom {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the SIP server. Flags override the config file, which overrides "
        "CONFROOM_* environment variables' defaults (see README, Configuration).",
    )
    s.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML configuration file (default: none, built-in defaults)")
    s.add_argument("--sip-host", metavar="H",
                   help="address to listen on for SIP (UDP and TCP); default 0.0.0.0")
    s.add_argument("--sip-port", type=int, metavar="N",
                   help="SIP port for UDP and TCP; default 5060 (0 picks a free port)")
    s.add_argument("--sip-tls-port", type=int, metavar="N",
                   help="port for SIP over TLS (needs --tls-cert and --tls-key or [tls]); "
                   "default off")
    s.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="PEM certificate chain for SIP over TLS and HTTPS")
    s.add_argument("--tls-key", type=Path, metavar="FILE",
                   help="PEM private key of --tls-cert")
    s.add_argument("--rtp-ports", metavar="LO-HI",
                   help="UDP port range for RTP, one port per call; default 20000-30000")
    s.add_argument("--app", metavar="URL-or-FILE",
                   help="the default application: a call-hook URL (http/https) that answers "
                   "with a JSON verb list, a ws(s) URL of a jambonz WebSocket app, or a local "
                   "JSON verb file; default: the embedded app")
    s.add_argument("--http-port", type=int, metavar="N",
                   help="port of the REST API and health endpoint; default off. Needs a "
                   "bearer token: [http] token in the config file or CONFROOM_API_TOKEN")
    s.add_argument("--http-self-signed", action="store_true", default=None,
                   help="serve HTTPS (pages, API, wss://.../sip) with a self-signed certificate "
                   "generated at start, for local use without [tls]")
    s.add_argument("--webhook-max-body", type=int, metavar="BYTES",
                   help="largest webhook answer read; a longer one fails the hook "
                   "(default 1048576)")
    s.add_argument("--webhook-ca-file", type=Path, metavar="PEM",
                   help="CA bundle that https webhooks and wss app sockets trust instead of "
                   "the system CA store")
    s.add_argument("--ws-ack-timeout", type=float, metavar="SECONDS",
                   help="how long a WebSocket app has to ack session:new and hooks "
                   "(default 5)")
    s.add_argument("--user-agent", metavar="TEXT",
                   help="User-Agent of SIP messages and Server header of HTTP responses; "
                   "'' sends none; default confroom/0.1")
    s.add_argument("--tcp-max-connections", type=int, metavar="N",
                   help="SIP TCP connections in total; default: sized from the descriptor limit")
    s.add_argument("--tcp-max-per-source", type=int, metavar="N",
                   help="SIP TCP connections from one IP address; default: sized from the "
                   "descriptor limit")
    s.add_argument("--tcp-idle-timeout", type=float, metavar="SECONDS",
                   help="close a SIP TCP connection without traffic that no call uses; "
                   "default 300")
    s.add_argument("--drain-time", type=float, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, refuse new calls (503) and let calls finish for "
                   "up to this long before ending them; a second signal ends them at once; "
                   "default 30 (CONFROOM_DRAIN_TIME, [limits] drain_time)")
    s.add_argument("--outbound-allowed-domains", metavar="D1,D2",
                   help="SIP domains or hosts that outbound `sip` targets may reach besides "
                   "the [[trunks]]; default none")
    s.add_argument("--outbound-max-calls", type=int, metavar="N",
                   help="outbound calls in progress per account; default 10 (0: none)")
    s.add_argument("--outbound-cps", type=float, metavar="RATE",
                   help="new outbound calls per second (a dial to N targets counts N); default 5")
    s.add_argument("--talk-gate", action=argparse.BooleanOptionalAction, default=None,
                   help="sum a conference member into the mix only while it talks; default on "
                   "(CONFROOM_TALK_GATE, [conference] talk_gate)")
    s.add_argument("--codecs", metavar="C1,C2",
                   help="audio codecs accepted and offered, in the server's order (OPUS, G722, "
                   "PCMU, PCMA); default all four (CONFROOM_CODECS, [media] codecs)")
    s.add_argument("--codec-priority", choices=["caller", "server"],
                   help="whose codec order wins: the caller's offer (default) or --codecs "
                   "(CONFROOM_CODEC_PRIORITY, [media] codec_priority)")
    s.add_argument("--redis", metavar="URL",
                   help="join the cluster sharing this Redis: redis://[:password@]host:port/db "
                   "or rediss:// (CONFROOM_REDIS, [cluster] redis)")
    s.add_argument("--node-id", metavar="NAME",
                   help="this node's name in the cluster (CONFROOM_NODE_ID, [cluster] node_id; "
                   "default: host-pid)")
    s.add_argument("--workers", type=int, metavar="N",
                   help="run N processes behind the same SIP and HTTP ports, one cluster "
                   "(with no --redis, a private redis-server) (CONFROOM_WORKERS, [cluster] "
                   "workers; default 1)")
    s.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO")
    return p


async def _serve(args: argparse.Namespace) -> int:
    from confroom.server import Server

    overrides = {
        "sip_host": args.sip_host,
        "sip_port": args.sip_port,
        "sip_tls_port": args.sip_tls_port,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "rtp_ports": args.rtp_ports,
        "app": args.app,
        "http_port": args.http_port,
        "http_self_signed": args.http_self_signed,
        "webhook_max_body": args.webhook_max_body,
        "webhook_ca_file": args.webhook_ca_file,
        "ws_ack_timeout": args.ws_ack_timeout,
        "user_agent": args.user_agent,
        "sip_tcp_max_connections": args.tcp_max_connections,
        "sip_tcp_max_per_source": args.tcp_max_per_source,
        "sip_tcp_idle_timeout": args.tcp_idle_timeout,
        "drain_time": args.drain_time,
        "outbound_allowed_domains": args.outbound_allowed_domains,
        "outbound_max_concurrent_calls": args.outbound_max_calls,
        "outbound_calls_per_second": args.outbound_cps,
        "talk_gate": args.talk_gate,
        "codecs": args.codecs,
        "codec_priority": args.codec_priority,
        "cluster_redis": args.redis,
        "cluster_node_id": args.node_id,
        "workers": args.workers,
    }
    try:
        config = load(args.config, overrides=overrides)
    except ConfigError as e:
        logging.getLogger("confroom").error("configuration error: %s", e)
        return 2
    if config.workers > 1:
        from confroom.cluster.workers import supervise

        return await supervise(config, getattr(args, "argv", None) or sys.argv[1:])
    server = Server(config)
    try:
        await server.start()
    except OSError as e:
        logging.getLogger("confroom").error("cannot start: %s", e)
        await server.stop()
        return 1
    stop = asyncio.Event()  # the first SIGTERM/SIGINT: drain
    abort = asyncio.Event()  # the second: end every call now

    def on_signal() -> None:
        (abort if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: logging.getLogger("confroom").info("gc: %s", garbage_report())
    )
    gc_policy = GcPolicy()  # see confroom.memory
    gc_task = loop.create_task(_gc_ticks(gc_policy, server), name="gc-policy")
    await stop.wait()
    await server.drain(config.drain_time, abort)
    gc_task.cancel()
    gc_policy.close()
    logging.getLogger("confroom").info("shutting down: ending %d call(s)", len(server.calls))
    await server.stop()
    logging.getLogger("confroom").info("stopped")
    return 0


async def _gc_ticks(policy: GcPolicy, server: Server) -> None:
    while True:
        await asyncio.sleep(1.0)
        policy.tick(quiet=not server.calls)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --workers starts them again
    # a --workers worker names itself in every line (they share the supervisor's stderr)
    slot = os.environ.get("CONFROOM_WORKER_SLOT", "").partition("/")[0]
    who = f"[w{slot}] " if slot.isdigit() else ""
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency
            return asyncio.run(_serve(args))
        return uvloop.run(_serve(args))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
