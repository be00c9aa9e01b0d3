"""The jambonz WebSocket API (`ws.jambonz.org`) for one call, sans-IO.

Owns the message envelope (`type`, `msgid`, `call_sid`, `hook`, `data`), which types wait for an
`ack`, the ack deadlines, the outgoing queue (kept while the socket is down, and held behind a
`session:reconnect` until that is acked), the reconnect backoff and its bound, and the checks on
every frame from the app (size, binary, JSON, envelope), which turn bad input into a `Refused`
event to be answered with `jambonz:error`. It never touches a socket or a clock: the adapter
(`confroom.app.wsclient`) feeds it frames, connection events and the time, and writes the text
frames it hands back.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

SUBPROTOCOL: Final = "ws.jambonz.org"
# message types that wait for an ack (jambonz feature server 0.9.8, ws-requestor.js)
NEEDS_ACK: Final = frozenset({
    "session:new", "session:reconnect", "session:redirect", "session:adulting", "verb:hook",
    "dial:confirm", "queue:status",
})
# commands whose `data` may be missing
DATA_OPTIONAL: Final = frozenset({"llm:tool-output", "tts:flush", "tts:clear"})
DEFAULT_ACK_TIMEOUT: Final = 5.0
DEFAULT_MAX_PAYLOAD: Final = 24 * 1024
DEFAULT_MAX_RECONNECTS: Final = 5


def short_id() -> str:
    """A 22-character URL-safe unique id (a uuid4 in base64), like jambonz's msgid."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect `attempt` (1-based): 0.5, 1, 2, then 2 s more per try
    (jambonz's schedule)."""
    if attempt <= 3:
        return 0.5 * float(2 ** (attempt - 1))
    return 2.0 * (attempt - 2)


@dataclass(eq=False)
class Outgoing:
    """One message to the app. `deadline` is set when an ack-waiting message is written."""

    type: str
    msgid: str
    data: Any
    hook: str | None = None
    deadline: float | None = None

    @property
    def needs_ack(self) -> bool:
        return self.type in NEEDS_ACK


@dataclass(frozen=True)
class Ack:
    """The app answered `message`; `verbs` is its `data` (None when it sent none)."""

    message: Outgoing
    verbs: Any


@dataclass(frozen=True)
class Command:
    """A mid-call command. `call_sid` is the other leg it names (`callSid`), if any."""

    name: str
    data: Any
    call_sid: str | None = None
    queue: bool = False


@dataclass(frozen=True)
class Refused:
    """A frame from the app that was not accepted: answer with `jambonz:error`."""

    details: str
    content: str


@dataclass(frozen=True)
class Expired:
    """No ack for `message` within the ack timeout."""

    message: Outgoing


Event = Ack | Command | Refused


@dataclass
class WsProtocol:
    """The protocol state of one call's socket (see the module docstring).

    States: `connecting` (first connect), `open`, `down` (dropped, reconnecting), `closed`."""

    call_sid: str
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_reconnects: int = DEFAULT_MAX_RECONNECTS
    new_id: Callable[[], str] = short_id
    state: str = "connecting"
    attempts: int = 0  # failed connects since the last good one
    reconnects: int = 0  # successful reconnects after a drop
    session_data: Any = None  # the session:new payload (session:reconnect repeats it)
    _queue: deque[Outgoing] = field(default_factory=deque)
    _pending: dict[str, Outgoing] = field(default_factory=dict)  # msgid -> written, unacked
    _blocker: str | None = None  # msgid of the session:reconnect everything waits behind
    _ever_open: bool = False

    # ---- messages out ----------------------------------------------------------------------

    def message(self, type_: str, data: Any, hook: str | None = None) -> Outgoing:
        """Queue a message to the app (written by the next `take_frames`)."""
        if type_ == "session:new":
            self.session_data = data
        msg = Outgoing(type_, self.new_id(), data, hook)
        if self.state != "closed":
            self._queue.append(msg)
        return msg

    def encode(self, msg: Outgoing) -> str:
        obj: dict[str, Any] = {"type": msg.type, "msgid": msg.msgid, "call_sid": self.call_sid}
        if msg.hook is not None:
            obj["hook"] = msg.hook
        obj["data"] = msg.data
        return json.dumps(obj, separators=(",", ":"))

    def take_frames(self, now: float) -> list[str]:
        """The text frames to write now (none while the socket is down or a reconnect waits
        for its ack); ack deadlines start now."""
        if self.state != "open" or self._blocker is not None:
            return []
        out: list[str] = []
        while self._queue:
            msg = self._queue.popleft()
            if msg.needs_ack:
                msg.deadline = now + self.ack_timeout
                self._pending[msg.msgid] = msg
                if msg.type == "session:reconnect":
                    self._blocker = msg.msgid
                    out.append(self.encode(msg))
                    break
            out.append(self.encode(msg))
        return out

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ---- connection ------------------------------------------------------------------------

    def connected(self) -> None:
        """The socket is open. After a drop, `session:reconnect` (with the `session:new`
        data) goes first, and what was queued or unacked meanwhile follows its ack."""
        was_open = self._ever_open
        self.state = "open"
        self._ever_open = True
        self.attempts = 0
        if was_open:
            self.reconnects += 1
            if self.session_data is not None:
                self._queue.appendleft(
                    Outgoing("session:reconnect", self.new_id(), self.session_data))

    def connect_failed(self) -> float | None:
        """A connect attempt failed: seconds until the next one, or None to give up."""
        self.attempts += 1
        if self.attempts > self.max_reconnects:
            self.state = "closed"
            return None
        return backoff(self.attempts)

    def dropped(self) -> float | None:
        """The open socket went away (not closed by us): seconds until reconnecting, or None
        to give up (then the call should end)."""
        self.state = "down"
        self._blocker = None
        # written but unacked: written again after the reconnect, in their order, first
        unacked = sorted(self._pending.values(), key=_deadline_key)
        self._pending.clear()
        for msg in reversed(unacked):
            msg.deadline = None
            if msg.type != "session:reconnect":
                self._queue.appendleft(msg)
        return self.connect_failed()

    def close(self) -> list[Outgoing]:
        """We are done (the call ended): returns what will never be answered."""
        self.state = "closed"
        lost = list(self._pending.values()) + [m for m in self._queue if m.needs_ack]
        self._pending.clear()
        self._queue.clear()
        return lost

    # ---- frames in -------------------------------------------------------------------------

    def feed_binary(self, size: int) -> Refused:
        return Refused("binary frames are not accepted (JSON text frames only)",
                       f"<{size} bytes of binary>")

    def feed_text(self, text: str) -> Event | None:
        """One text frame from the app: an `Ack`, a `Command`, `Refused`, or None (an ack
        for no message we are waiting on, dropped as jambonz does)."""
        size = len(text.encode("utf-8")) if len(text) * 4 > self.max_payload else len(text)
        if size > self.max_payload:
            return Refused(f"message of {size} bytes is over the {self.max_payload} byte limit",
                           text[:200])
        try:
            obj = json.loads(text)
        except ValueError as e:
            return Refused(f"invalid JSON: {e}", text[:200])
        if not isinstance(obj, dict):
            return Refused("a message must be a JSON object", text[:200])
        kind = obj.get("type")
        if kind == "ack":
            msgid = obj.get("msgid")
            if not isinstance(msgid, str):
                return Refused("ack without a string 'msgid'", text[:200])
            msg = self._pending.pop(msgid, None)
            if msg is None:
                return None
            if self._blocker == msgid:
                self._blocker = None
            return Ack(msg, obj.get("data"))
        if kind == "command":
            name = obj.get("command")
            if not isinstance(name, str) or not name:
                return Refused("command without a 'command' name", text[:200])
            if "data" not in obj and name not in DATA_OPTIONAL:
                return Refused(f"command {name!r} without 'data'", text[:200])
            other = obj.get("callSid")
            if other is not None and not isinstance(other, str):
                return Refused("'callSid' must be a string", text[:200])
            return Command(name, obj.get("data"), other, obj.get("queueCommand") is True)
        return Refused(f"unknown message type {kind!r} (expected 'ack' or 'command')",
                       text[:200])

    # ---- time ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return min(m.deadline for m in self._pending.values() if m.deadline is not None)

    def expire(self, now: float) -> list[Expired]:
        """The messages whose ack deadline passed (they are no longer waited for)."""
        gone = [m for m in self._pending.values() if m.deadline is not None
                and m.deadline <= now]
        for m in gone:
            del self._pending[m.msgid]
            if self._blocker == m.msgid:
                self._blocker = None
        return [Expired(m) for m in gone]


def _deadline_key(m: Outgoing) -> float:
    return m.deadline if m.deadline is not None else 0.0
