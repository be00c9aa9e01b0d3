"""Conference state: members, who started it, when it ends, and the status events it emits.

Plain objects with no I/O. A `Conference` is one lifetime of a named conference (its
`conference_sid`); the `ConferenceRegistry` maps (account_sid, name) to the live one and
decides start / join / wait / full synchronously, so two callers arriving together can never
create two conferences (there is no await between the look-up and the creation).

A member is *admitted* (counted for maxParticipants, keeps the conference alive) as soon as it
is let in, and *mixed* once its enterHook has played (`Member.mixed`).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confroom.app.control import CallInfo
from confroom.config import AppConfig
from confroom.media.session import MediaSession

if TYPE_CHECKING:
    from confroom.app.wsclient import WsRequestor

_member_ids = itertools.count(1)


@dataclass(eq=False)
class Member:
    call_sid: str
    info: CallInfo
    media: MediaSession
    app: AppConfig
    tag: str | None = None
    speak_only_to: str | None = None
    muted: bool = False
    on_hold: bool = False
    end_conference_on_exit: bool = False
    end_conference_duration: float = 0.0
    distribute_dtmf: bool = False
    # A moderator (endConferenceOnExit true, or startConferenceOnEnter explicitly true) is
    # not affected by a conference-wide mute (`conf_mute_status`).
    moderator: bool = False
    beep: bool = False  # beep when this member joins and when it leaves
    hold_hook: Any = None  # the waitHook played while on hold (live control), if any
    joined_at: float = 0.0  # wall clock, set when mixed
    mixed: bool = False
    talking: bool = False
    member_id: int = field(default_factory=lambda: next(_member_ids))
    # Why the member left ("hangup", "kicked", "ended"); set once.
    leave_reason: str | None = None
    on_leave: Callable[[str], None] | None = None
    # Called after live control changed on_hold (the verb starts/stops the hold loop).
    on_change: Callable[[], None] | None = None
    # the socket of the member's WebSocket app, if it has one
    ws: WsRequestor | None = None
    # A node-to-node leg of a cluster (cluster/legs.py), not a caller: its row carries the
    # peer node's local sum in and gets this node's local sum out (see conference/audio.py).
    leg: bool = False


@dataclass(eq=False)
class Conference:
    account_sid: str
    name: str
    started_at: float  # wall clock (time.time())
    # The status hook/events of the member that started the conference apply to all.
    status_hook: Any = None
    status_events: frozenset[str] = frozenset()
    host_app: AppConfig | None = None
    # the starter's WebSocket app socket: its statusHook events go over it
    host_ws: WsRequestor | None = None
    max_participants: int | None = None
    sid: str = field(default_factory=lambda: str(uuid.uuid4()))
    members: dict[str, Member] = field(default_factory=dict)  # call_sid -> member (admitted)
    ended: bool = False
    end_pending: bool = False  # an endConferenceDuration countdown is running
    retired: bool = False  # cluster: this node's part ended, the conference goes on elsewhere
    owner: str = ""  # cluster: the node that delivers the status events ("" single node)

    @property
    def mixed_count(self) -> int:
        return sum(1 for m in self.members.values() if m.mixed)

    def duration(self, now_wall: float) -> int:
        return max(0, int(now_wall - self.started_at))

    def is_full(self, limit: int | None) -> bool:
        """Would one more member exceed `limit` (the joiner's maxParticipants, else ours)?"""
        cap = limit if limit is not None else self.max_participants
        return cap is not None and len(self.members) >= cap

    def wants(self, event: str) -> str | None:
        """The name under which `event` is reported, or None if the app did not ask for it."""
        if event in self.status_events:
            return event
        if event == "stop-talking" and "end-talking" in self.status_events:
            return "end-talking"
        return None


class ConferenceRegistry:
    """The conferences of this node, keyed by (account_sid, name). In memory."""

    def __init__(self) -> None:
        self._live: dict[tuple[str, str], Conference] = {}
        self._start_waiters: dict[tuple[str, str], list[Callable[[Conference | None], None]]] = {}

    def get(self, account_sid: str, name: str) -> Conference | None:
        return self._live.get((account_sid, name))

    def create(self, conf: Conference) -> Conference:
        key = (conf.account_sid, conf.name)
        if key in self._live:
            raise RuntimeError(f"conference {conf.name!r} already exists")
        self._live[key] = conf
        self.started(conf.account_sid, conf.name, conf)
        return conf

    def started(self, account_sid: str, name: str, conf: Conference | None) -> None:
        """That conference started (here, or on another node of the cluster: conf None):
        wake its waiters."""
        for notify in self._start_waiters.pop((account_sid, name), []):
            notify(conf)

    def remove(self, conf: Conference) -> None:
        key = (conf.account_sid, conf.name)
        if self._live.get(key) is conf:
            del self._live[key]

    def on_start(self, account_sid: str, name: str,
                 notify: Callable[[Conference | None], None]) -> (
        Callable[[], None]
    ):
        """Call `notify` once when that conference starts; returns a function to cancel."""
        key = (account_sid, name)
        self._start_waiters.setdefault(key, []).append(notify)

        def cancel() -> None:
            waiters = self._start_waiters.get(key)
            if waiters and notify in waiters:
                waiters.remove(notify)
                if not waiters:
                    del self._start_waiters[key]

        return cancel

    def names(self, account_sid: str | None = None) -> list[str]:
        return sorted(n for (a, n) in self._live if account_sid is None or a == account_sid)

    def all(self) -> list[Conference]:
        return list(self._live.values())
