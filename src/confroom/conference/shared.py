"""`SharedState`: what the conference service asks of a cluster's shared registry.

The in-memory `ConferenceRegistry` (conference/model.py) is the whole registry of a single
node: admission is decided synchronously there. With `[cluster] redis` set, the service also
has a `SharedState` (implemented on Redis in `confroom.cluster`; nothing here imports Redis):
it decides admission atomically for the whole cluster (start / join / full / wait), keeps the
cluster-wide member count, ends a conference everywhere, and carries each conference's status
events, in order, to the one node that delivers them. The local registry then holds this
node's part of each conference (its local members), under the cluster's `conference_sid`.

All calls return at once; the Redis work of one conference runs in order (a per-conference
queue), so a `leave` is counted before the event that reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from confroom.conference.model import Conference, Member


class SharedStateError(Exception):
    """The shared registry cannot be reached (or answered nonsense): the caller gets a clear
    failure instead of waiting."""


@dataclass(frozen=True)
class Entry:
    """The cluster's answer to a caller entering conference (account, name)."""

    outcome: str  # "start" | "join" | "full" | "wait"
    sid: str = ""
    started_at: float = 0.0
    owner: str = ""  # the node delivering the conference's status events
    # what the starting member's verb set for everyone: statusHook, statusEvents,
    # maxParticipants and the name of its app
    meta: Mapping[str, Any] = field(default_factory=dict)


class ClusterControl(Protocol):
    """The REST API's view of the cluster: any call and any conference, on any node."""

    async def update_call(self, account: str, call_sid: str, body: Any,
                          ) -> tuple[int, dict[str, Any]] | None:
        """Carry out a call-update on the node that has the call: (HTTP status, JSON body),
        or None when no node has it in a conference."""
        ...

    async def conference_names(self, account: str) -> list[str]:
        ...

    async def conference_detail(self, account: str, name: str) -> dict[str, Any] | None:
        """The whole conference (members on every node), or None."""
        ...

    async def end_conference(self, account: str, name: str) -> dict[str, Any] | None:
        """End it on every node: the REST summary, or None when it is not in progress."""
        ...

    async def live_conferences(self) -> list[dict[str, Any]]:
        """Every live conference of every node, each participant with its node (the
        dashboard's feed: `conference.control.live_conferences`, merged)."""
        ...


class SharedState(ClusterControl, Protocol):
    async def enter(self, account: str, name: str, member: Member, *, start: bool,
                    limit: int | None, meta: Mapping[str, Any], new: Conference,
                    start_event: dict[str, Any] | None) -> Entry:
        """Admit `member` cluster-wide (atomically), or say why not; when it starts the
        conference, it is `new` (its sid) and `start_event` is reported in the same step.
        Raises SharedStateError."""
        ...

    async def is_started(self, account: str, name: str) -> bool:
        """Whether the conference exists now (a waiter's periodic re-check)."""
        ...

    def leave(self, conf: Conference, member: Member, then: Callable[[int], None],
              event: dict[str, Any] | None) -> None:
        """Take `member` out and queue its leave `event` (if any) with the new count, in one
        step; `then(remaining)` runs with the cluster-wide count left (0: the shared state of
        the conference is gone; -1: unknown, Redis failed)."""
        ...

    def end(self, conf: Conference, then: Callable[[list[dict[str, Any]] | None], None]) -> None:
        """End the conference everywhere; `then(fields)` gets the call fields of the members
        it still had on other nodes, or None when it had already ended."""
        ...

    def emit(self, conf: Conference, body: dict[str, Any], members: int | None) -> None:
        """Queue a status event for the delivering node (`members` None: the cluster count)."""
        ...

    def dtmf(self, conf: Conference, digit: str, speak_only_to: str | None) -> None:
        """A member pressed `digit` with distributeDtmf: pass it to the other nodes' members
        (those in the `speak_only_to` tag group only, when set)."""
        ...

    def local_changed(self, conf: Conference) -> None:
        """This node's part of `conf` was created or retired (node-to-node legs follow)."""
        ...
