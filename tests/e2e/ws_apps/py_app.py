"""A jambonz WebSocket app written with the unmodified `jambonz-python-sdk` (its websocket
endpoint), run by the e2e tests as a separate process.

    python py_app.py PORT SPEC_JSON

SPEC_JSON: {"verbs": {from_user or "*": [verbs]}, "hooks": {hook path: [verbs]}, "no_ack": bool,
"tls": {"cert": PEM path, "key": PEM path}}. With "tls", PORT serves wss:// (a TLS site added to
the SDK's own aiohttp runner; the SDK's plain site gets a free port). Each session gets the verb
list of its caller (built with the SDK's verb methods); each verb:hook with a path in "hooks" is
answered with those verbs. It prints one JSON line per event to stdout ({"ev": "session",
"from", "call_sid"}, {"ev": "hook", "hook", "data"}, {"ev": "call:status", ...}), and reads
commands from stdin, one JSON line each: {"call_sid", "command", "data"} ->
session.inject_command(command, data)."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from typing import Any

from aiohttp import web
from jambonz_sdk.websocket import create_endpoint
from jambonz_sdk.websocket.session import Session


def out(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def build(session: Session, verbs: list[dict[str, Any]]) -> None:
    for verb in verbs:
        body = {k: v for k, v in verb.items() if k != "verb"}
        getattr(session, verb["verb"])(body)


async def main() -> None:
    port = int(sys.argv[1])
    spec = json.loads(sys.argv[2])
    sessions: dict[str, Session] = {}
    tls = spec.get("tls")
    make_service, runner = await create_endpoint(host="127.0.0.1", port=0 if tls else port)
    if tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls["cert"], tls["key"])
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    svc = make_service(path="/")

    async def on_session(session: Session) -> None:
        sessions[session.call_sid] = session
        out({"ev": "session", "from": session.from_, "call_sid": session.call_sid})

        async def on_hook(hook: str, data: dict[str, Any]) -> None:
            out({"ev": "hook", "hook": hook, "call_sid": session.call_sid, "data": data})
            build(session, spec.get("hooks", {}).get(hook, []))
            await session.reply()

        async def on_status(data: dict[str, Any]) -> None:
            out({"ev": "call:status", "call_sid": session.call_sid,
                 "call_status": data.get("call_status")})

        session.on("verb:hook", on_hook)
        session.on("call:status", on_status)
        if spec.get("no_ack"):
            return
        verbs = spec["verbs"]
        build(session, verbs.get(session.from_, verbs.get("*", [])))
        await session.send()

    svc.on("session:new", on_session)
    out({"ev": "ready", "port": port})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        session = sessions[cmd["call_sid"]]
        await session.inject_command(cmd["command"], cmd.get("data"))
        out({"ev": "sent", "command": cmd["command"], "call_sid": cmd["call_sid"]})
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
