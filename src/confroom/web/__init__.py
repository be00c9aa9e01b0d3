"""The browser pages served by the HTTP server: `/phone`, `/dashboard`, `/static/*`, and the
dashboard's live feed `GET /v1/Events` (Server-Sent Events, bearer token like every `/v1`
route).

Pages and the vendored JsSIP build (pinned in `web/package.json` and its lockfile, built by
`make vendor-js`) ship inside this package; nothing is loaded from a CDN. The pages are
static: `/phone?conference=NAME` joins NAME over SIP over WebSocket (`/sip`), `/dashboard`
asks for the API token and shows nothing without it. The feed sends the state of every live
conference as one JSON event whenever it changed (checked every `FEED_INTERVAL` seconds, so
talking changes reach the page within that), and a comment line every `KEEPALIVE` seconds.
In a cluster it is the state of every node (asked over the cluster's command bus every
`CLUSTER_FEED_INTERVAL` seconds; each participant names its node); while Redis is
unreachable, this node's own conferences.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from importlib import resources
from typing import Any, Final, Protocol

from aiohttp import web

from confroom.conference.control import live_conferences
from confroom.conference.service import ConferenceService
from confroom.conference.shared import SharedStateError

__all__ = ["add_routes", "snapshot"]

FEED_INTERVAL: Final = 0.2
CLUSTER_FEED_INTERVAL: Final = 0.4
KEEPALIVE: Final = 15.0
_TYPES: Final = {".js": "text/javascript", ".html": "text/html", ".css": "text/css",
                 ".md": "text/plain", ".png": "image/png"}


class HasConferences(Protocol):
    @property
    def conferences(self) -> ConferenceService: ...


def _read(name: str) -> bytes:
    return (resources.files("confroom.web") / "static" / name).read_bytes()


def snapshot(server: HasConferences, node: str) -> list[dict[str, Any]]:
    """Every live conference of this node with its members, for the dashboard."""
    return live_conferences(server.conferences.registry.all(), node, time.time())


async def cluster_snapshot(server: HasConferences, node: str) -> list[dict[str, Any]]:
    """Every live conference of the cluster (of this node without one, or while the
    cluster's Redis is unreachable)."""
    shared = server.conferences.shared
    if shared is not None:
        try:
            return await shared.live_conferences()
        except SharedStateError:
            pass  # the node has logged the outage once
    return snapshot(server, node)


def add_routes(app: web.Application, server: HasConferences) -> None:
    # the name members' node column shows: a cluster node's id, else the host's name
    node = str(getattr(server.conferences.shared, "node_id", None) or socket.gethostname())
    interval = FEED_INTERVAL if server.conferences.shared is None else CLUSTER_FEED_INTERVAL
    static_names = {p.name for p in (resources.files("confroom.web") / "static").iterdir()}

    async def page(request: web.Request) -> web.Response:
        name = "phone.html" if request.path == "/phone" else "dashboard.html"
        return web.Response(body=_read(name), content_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in static_names:
            raise web.HTTPNotFound(reason=f"no file {name[:100]!r}")
        ctype = _TYPES.get(name[name.rfind("."):], "application/octet-stream")
        return web.Response(body=_read(name), content_type=ctype)

    closing = asyncio.Event()  # the server stops: every feed ends

    async def close_feeds(_app: web.Application) -> None:
        closing.set()

    app.on_shutdown.append(close_feeds)

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        last = ""
        quiet_since = time.monotonic()
        try:
            while not closing.is_set():
                text = json.dumps(await cluster_snapshot(server, node), sort_keys=True)
                if text != last:
                    await resp.write(f"event: conferences\ndata: {text}\n\n".encode())
                    last = text
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE:
                    await resp.write(b": keepalive\n\n")
                    quiet_since = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closing.wait(), interval)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    app.router.add_get("/phone", page, allow_head=False)
    app.router.add_get("/dashboard", page, allow_head=False)
    app.router.add_get("/static/{name}", static, allow_head=False)
    app.router.add_get("/v1/Events", events, allow_head=False)
