"""`CallSession`: runs an application's verb list for one call.

Owns fetching the first verb list (verb file or call hook), running verbs in order with
actionHook results replacing the rest of the list, failure handling (decline an unanswered
call, hang up an answered one), stopping on BYE/kill, hook plumbing for the verbs
(`call_hook`, `to_hook`) and the application's call-status hook (`notify_call_status`).
The verbs themselves live in `confroom.app.verbs_impl`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from confroom.app import verbs_impl
from confroom.app.control import CallControl, CallInfo
from confroom.app.hooks import HookResult, WebhookClient
from confroom.app.payload import call_fields, session_new_body
from confroom.app.verbs import VerbError, parse_verb_list
from confroom.app.wsclient import (
    CommandHandler,
    WsClient,
    WsRequestor,
    is_ws_hook,
    is_ws_url,
)
from confroom.app.wsproto import Command
from confroom.config import AppConfig, Config, Hook
from confroom.media.sources import Source

logger = logging.getLogger(__name__)

T = TypeVar("T")

HOOK_FAILED = (480, "Temporarily Unavailable")
INVALID_VERBS = (500, "Server Internal Error")


class SessionAbort(Exception):
    """Stop running verbs: decline an unanswered call with `status`, hang up an answered one.
    The cause has already been logged."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def to_hook(value: Any) -> Hook:
    """A hook attribute of a verb (URL string or {url, method, username, password} or
    {url, method, basicAuth: {username, password}}) as a `Hook`."""
    hook = Hook.parse(value, "hook")
    if isinstance(value, Mapping) and hook.username is None:
        auth = value.get("basicAuth")
        if isinstance(auth, Mapping) and auth.get("username") is not None:
            pw = auth.get("password")
            return Hook(
                url=hook.url,
                method=hook.method,
                username=str(auth["username"]),
                password=str(pw) if pw is not None else None,
            )
    return hook


def _base_url(app: AppConfig) -> str | None:
    return app.call_hook.url if app.call_hook is not None else None


def notify_call_status(
    hooks: WebhookClient, app: AppConfig, info: CallInfo
) -> Coroutine[Any, Any, HookResult | None]:
    """POST the call fields to the app's call-status hook (None when it has none).

    The body is taken now, when the status changes, so that a spawned notification reports
    the status it was created for even if the call moves on before it runs."""
    hook = app.call_status_hook
    body = call_fields(info)

    async def send() -> HookResult | None:
        if hook is None:
            return None
        return await hooks.call(hook, body, base_url=_base_url(app), secret=app.webhook_secret)

    return send()


class CallSession:
    """Runs the verb list of one call, start to finish. `run()` never raises."""

    def __init__(
        self,
        call: CallControl,
        hooks: WebhookClient,
        config: Config,
        *,
        http: aiohttp.ClientSession | None = None,
        verbs: Mapping[str, verbs_impl.VerbImpl] = verbs_impl.VERBS,
        ws: WsClient | None = None,
        commands: Callable[[CallSession, Command], Awaitable[str | None]] | None = None,
    ) -> None:
        self.call = call
        self.ws_client = ws  # for ws(s):// call hooks
        self._commands = commands  # carries out a WebSocket app's commands
        self.ws: WsRequestor | None = None  # the call's socket, for a WebSocket app
        self.verbs = verbs  # what runs each verb name (the server adds `conference`)
        self.hooks = hooks
        self.config = config
        self.http = http
        self.app: AppConfig = call.app
        self.killed = False
        self._interrupt = asyncio.Event()
        self._replacement: list[dict[str, Any]] | None = None
        self._appended: list[dict[str, Any]] = []  # queued by live control after the rest
        self._more = asyncio.Event()  # set by replace_verbs (an idle WebSocket app waits on it)
        self.current: dict[str, Any] | None = None
        # set by the conference verb while the call is in (or waiting for) a conference:
        # what the `leave` verb calls
        self.leave_conference: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ state

    @property
    def call_sid(self) -> str:
        return self.call.info.call_sid

    @property
    def done(self) -> bool:
        """No more verbs may run: the call ended or the session was killed."""
        return self.killed or self.call.ended

    @property
    def interrupted(self) -> bool:
        """The current verb was asked to stop (kill, replace_verbs, end of call)."""
        return self._interrupt.is_set() or self.done

    def fields(self, **extra: Any) -> dict[str, Any]:
        """Call fields for a hook body, plus `extra`."""
        body = call_fields(self.call.info)
        body.update(extra)
        return body

    # ------------------------------------------------------------------ control

    def kill(self) -> None:
        """Stop the current verb (playback, pause, hook wait) and run no further verbs."""
        self.killed = True
        self._more.set()
        self._stop_current()

    def replace_verbs(self, verbs: list[dict[str, Any]]) -> None:
        """Stop the current verb and continue with `verbs` (already validated) instead of
        the rest of the list (live call control)."""
        self._replacement = list(verbs)
        self._appended = []
        self._more.set()
        self._stop_current()

    def append_verbs(self, verbs: list[dict[str, Any]]) -> None:
        """Run `verbs` (already validated) after the current list, without interrupting it
        (a WebSocket `redirect` with `queueCommand: true`)."""
        self._appended.extend(verbs)
        self._more.set()

    def redirect_to_hook(self, hook_value: Any) -> None:
        """Fetch a new verb list from `hook_value` (a `session:redirect` over the app's socket
        when it is one, else an HTTP request) and continue with it (live call control)."""
        async def fetch() -> None:
            verbs = await self.call_hook(hook_value, self.fields(), what="redirect",
                                         strict=False)
            if verbs is not None and not self.done:
                self.replace_verbs(verbs)

        task = asyncio.get_running_loop().create_task(fetch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop_current(self) -> None:
        self._interrupt.set()
        self.call.stop_playback()

    # ------------------------------------------------------------------ helpers for verbs

    async def guarded(self, aw: Awaitable[T]) -> T | None:
        """Await `aw` unless the current verb is interrupted first (then cancel it: None)."""
        if self.interrupted:
            if asyncio.iscoroutine(aw):
                aw.close()
            return None
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._interrupt.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait({task})  # let it unwind; never raises
        return None

    async def play(self, source: Source) -> bool:
        """Play to the caller (answering first). False if stopped or the call ended."""
        if self.interrupted:
            return False
        if not self.call.answered:
            await self.call.answer()
            if self.interrupted or not self.call.answered:
                return False
        return await self.call.play(source)

    async def call_hook(
        self,
        hook_value: Any,
        body: Mapping[str, Any],
        *,
        what: str,
        allowed: Collection[str] | None = None,
        strict: bool = True,
    ) -> list[dict[str, Any]] | None:
        """Call a hook and return its (validated, normalised) verb list; [] for none.

        None when the hook failed (logged with its URL) or the session was interrupted.
        An invalid returned verb list is logged naming the verb and attribute; then with
        `strict` SessionAbort(500) is raised, otherwise None is returned."""
        try:
            hook = to_hook(hook_value)
        except ValueError as e:
            logger.error("call_sid=%s: %s: bad hook %r: %s", self.call_sid, what, hook_value, e)
            return None
        ws = self.ws
        if what.startswith("redirect") and is_ws_url(hook.url) and (
                ws is None or not ws.same_server(hook.url)):
            # handover: a redirect to another WebSocket app (or from HTTP to one) opens a new
            # socket there with session:new; the old socket is closed
            logger.info("call_sid=%s: %s to %s: new WebSocket session", self.call_sid, what,
                        hook.url)
            result = await self.guarded(self._open_socket(hook))
            if ws is not None:
                await ws.close()
        elif ws is not None and ws.handles(hook):
            kind = "session:redirect" if what.startswith("redirect") else "verb:hook"
            result = await self.guarded(ws.request(kind, body, ws.hook_name(hook)))
        else:
            result = await self.guarded(
                self.hooks.call(
                    hook, body, base_url=_base_url(self.app), secret=self.app.webhook_secret
                )
            )
        if result is None:
            return None
        if not result.ok:
            logger.error(
                "call_sid=%s: %s %s failed: %s", self.call_sid, what, result.url, result.error
            )
            return None
        try:
            return parse_verb_list(result.verbs, allowed)
        except VerbError as e:
            logger.error(
                "call_sid=%s: %s %s returned an invalid verb list: %s",
                self.call_sid,
                what,
                result.url,
                e,
            )
            if strict:
                raise SessionAbort(*INVALID_VERBS) from e
            return None

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self.ws is not None:
                await self.ws.close()

    async def _run(self) -> None:
        try:
            verbs = await self._first_verbs()
            await self._execute(verbs)
        except SessionAbort as e:
            await self._fail(e.status, e.reason)
        except Exception:
            logger.exception("call_sid=%s: verb runner failed", self.call_sid)
            await self._fail(*INVALID_VERBS)
        else:
            if not self.call.ended:
                try:
                    await self.call.hangup()
                except Exception:
                    logger.exception("call_sid=%s: hangup failed", self.call_sid)

    async def _fail(self, status: int, reason: str) -> None:
        try:
            if self.call.ended:
                return
            if self.call.answered:
                await self.call.hangup()
            else:
                await self.call.decline(status, reason)
        except Exception:
            logger.exception("call_sid=%s: could not end the call", self.call_sid)

    async def _first_verbs(self) -> list[dict[str, Any]]:
        app = self.app
        if app.verbs_file is not None:
            return await self._verbs_from_file(app.verbs_file)
        if app.call_hook is None:
            logger.error("call_sid=%s: app %r has no call hook", self.call_sid, app.name)
            raise SessionAbort(*HOOK_FAILED)
        if is_ws_hook(app.call_hook):
            result = await self.guarded(self._open_socket(app.call_hook))
        else:
            result = await self.guarded(
                self.hooks.call(
                    app.call_hook,
                    session_new_body(self.call.info),
                    base_url=None,
                    secret=app.webhook_secret,
                )
            )
        if result is None:
            return []
        if not result.ok:
            logger.error(
                "call_sid=%s: call hook %s failed: %s", self.call_sid, result.url, result.error
            )
            bad_body = result.status is not None and 200 <= result.status < 300
            raise SessionAbort(*(INVALID_VERBS if bad_body else HOOK_FAILED))
        try:
            return parse_verb_list(result.verbs)
        except VerbError as e:
            logger.error(
                "call_sid=%s: call hook %s returned an invalid verb list: %s",
                self.call_sid,
                result.url,
                e,
            )
            raise SessionAbort(*INVALID_VERBS) from e

    def _open_socket(self, hook: Hook) -> Awaitable[HookResult]:
        """Open the call's socket to its WebSocket app and send `session:new`."""
        client = self.ws_client or WsClient()
        self.ws_client = client
        handler: CommandHandler = self._on_command
        self.ws = WsRequestor(client, hook, self.call_sid, self.app.webhook_secret,
                              handler, lambda why: self.kill(), self._more.set)
        return self.ws.request("session:new", session_new_body(self.call.info))

    async def _on_command(self, cmd: Command) -> str | None:
        if self._commands is None:
            return "this call takes no commands"
        return await self._commands(self, cmd)

    def notify_status(self, body: Mapping[str, Any]) -> bool:
        """Send a `call:status` over the call's socket (True), unless the call has none or its
        status hook is an absolute http(s) URL (False: the caller sends it by HTTP)."""
        ws = self.ws
        if ws is None:
            return False
        hook = self.app.call_status_hook
        if hook is not None and not ws.handles(hook):
            return False
        ws.notify("call:status", dict(body))
        return True

    async def _verbs_from_file(self, path: Path) -> list[dict[str, Any]]:
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except OSError as e:
            logger.error("call_sid=%s: cannot read verb file %s: %s", self.call_sid, path, e)
            raise SessionAbort(*HOOK_FAILED) from e
        try:
            return parse_verb_list(json.loads(text))
        except ValueError as e:  # JSONDecodeError and VerbError
            logger.error("call_sid=%s: verb file %s is invalid: %s", self.call_sid, path, e)
            raise SessionAbort(*INVALID_VERBS) from e

    async def _execute(self, verbs: list[dict[str, Any]]) -> None:
        pending = list(verbs)
        while not self.done:
            if self._appended:
                pending.extend(self._appended)
                self._appended = []
            if not pending:
                # a WebSocket app's call stays up, waiting for commands (jambonz does this)
                if self.ws is None or self.ws.gone:
                    break
                self._more.clear()
                if self._replacement is None and not self._appended:
                    logger.debug("call_sid=%s: verbs done; waiting for commands", self.call_sid)
                    await self._more.wait()
                if self._replacement is not None:
                    pending, self._replacement = self._replacement, None
                continue
            verb = pending.pop(0)
            self._interrupt.clear()
            self.current = verb
            name = verb["verb"]
            impl = self.verbs.get(name)
            try:
                if impl is None:
                    logger.warning(
                        "call_sid=%s: verb '%s' is not implemented yet: skipped",
                        self.call_sid,
                        name,
                    )
                    result = None
                else:
                    logger.debug("call_sid=%s: running %s", self.call_sid, name)
                    result = await impl(self, verb)
            finally:
                self.current = None
            if self._replacement is not None:
                pending, self._replacement = self._replacement, None
            elif result is not None:
                pending = list(result)
