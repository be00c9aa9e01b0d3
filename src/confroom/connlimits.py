"""Sans-IO bookkeeping of a listener's connections: caps, deadlines and a refusal summary.

`ConnectionTable` is fed events (a connection opened, bytes received or sent, a message
completed, a connection closed) and the current time, and answers two questions: may this new
connection stay (`opened` returns None, or the reason it must be closed at once), and which
connections have outlived their deadlines (`sweep`). The adapters (SIP over TCP in
`confroom.sip.transport`, the REST API in `confroom.api.app`) own the sockets, call `sweep` from
one periodic loop timer and close what it names; nothing here touches a socket or a clock.

Rules, for a connection with limits `Limits`:
- opening one beyond `max_per_source` from one address is refused; beyond `max_total`, the
  connection that has waited longest for a complete message is dropped to make room
  (`take_evicted`), and only when none is waiting is the new one refused (connections we open
  ourselves, `inbound=False`, count but are never refused);
- an inbound connection must deliver its first complete message within `message_timeout` of
  being accepted, and every message must be complete within `message_timeout` of its first
  byte (slow-loris);
- a connection with no bytes either way for `idle_timeout` is closed, unless it is held:
  `hold(key)` / `release(key)` count users of a key (the server holds a SIP peer's connection
  while a call uses it; the API holds a connection while a request is being handled). Holds
  are counted per key, independent of whether a connection with that key exists right now.

Refusals and timeouts are not logged per connection: `summary(now)` gives one line per
`summary_interval` saying what happened since the last line (None when nothing did).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

REFUSED_TOTAL = "total cap"
REFUSED_PER_SOURCE = "per-source cap"
CLOSED_SLOW = "slow"
CLOSED_IDLE = "idle"
CLOSED_EVICTED = "evicted"


@dataclass(frozen=True)
class Limits:
    max_total: int
    max_per_source: int
    message_timeout: float  # accept -> first complete message; first byte -> message complete
    idle_timeout: float  # no bytes either way (0 = never)

    @property
    def sweep_interval(self) -> float:
        """How often the adapter calls `sweep`: a quarter of the shortest timeout, 0.1-1 s."""
        timeouts = [t for t in (self.message_timeout, self.idle_timeout) if t > 0]
        return max(0.1, min([1.0, *(t / 4 for t in timeouts)]))


def default_caps(fd_limit: int) -> tuple[int, int, int, int]:
    """(SIP TCP total, SIP TCP per source, HTTP total, HTTP per source) for a descriptor limit.

    SIP TCP may take a quarter of the descriptors and the API a sixteenth; the rest stays for
    RTP sockets (one per call), webhooks, files and the SIP UDP socket."""
    sip_total = max(16, min(fd_limit // 4, 10000))
    sip_per_source = max(4, min(sip_total // 8, 100))
    http_total = max(8, min(fd_limit // 16, 1000))
    http_per_source = max(4, min(http_total // 4, 32))
    return sip_total, sip_per_source, http_total, http_per_source


@dataclass
class _Conn:
    source: str
    opened_at: float
    last_activity: float
    message_started: float | None  # first byte of an incomplete message
    delivered: bool  # a complete message has arrived (or we opened the connection)


class ConnectionTable(Generic[K]):
    """Connections of one listener: see the module docstring."""

    def __init__(self, limits: Limits, name: str, summary_interval: float = 10.0) -> None:
        self.limits = limits
        self.name = name
        self.summary_interval = summary_interval
        self._conns: dict[K, _Conn] = {}
        self._per_source: Counter[str] = Counter()
        self._holds: Counter[K] = Counter()
        self._refused: Counter[str] = Counter()  # reason -> count since the last summary
        self._refused_sources: Counter[str] = Counter()
        self._closed: Counter[str] = Counter()  # slow | idle | evicted -> count since summary
        # inbound connections waiting for a complete message, longest-waiting first
        self._waiting: dict[K, None] = {}
        self._evicted: list[K] = []
        self._last_summary: float | None = None
        self.total_refused = 0
        self.total_timed_out = 0

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, key: object) -> bool:
        return key in self._conns

    def from_source(self, source: str) -> int:
        return self._per_source[source]

    # ---- events ---------------------------------------------------------------------------

    def opened(self, key: K, source: str, now: float, *, inbound: bool = True) -> str | None:
        """A connection was established. None: keep it (see `take_evicted`); else why it must
        be closed now."""
        if inbound:
            reason = None
            if self._per_source[source] >= self.limits.max_per_source:
                reason = REFUSED_PER_SOURCE
            elif len(self._conns) >= self.limits.max_total and not self._evict_one():
                reason = REFUSED_TOTAL
            if reason is not None:
                self._refused[reason] += 1
                self._refused_sources[source] += 1
                self.total_refused += 1
                self._summary_due(now)
                return reason
        old = self._conns.get(key)
        if old is not None:
            self._forget(key, old)
        self._conns[key] = _Conn(source, now, now, None, not inbound)
        self._per_source[source] += 1
        if inbound:
            self._waiting[key] = None
        if self._evicted:
            self._summary_due(now)
        return None

    def take_evicted(self) -> list[K]:
        """Connections dropped to make room for new ones since the last call: the adapter
        closes them. At the total cap a new connection is admitted in place of the one that
        has waited longest for a complete message (never delivered one, or is in the middle
        of one), so slow or silent clients cannot lock everyone out; only when every
        connection is busy or idle is the new one refused."""
        out, self._evicted = self._evicted, []
        return out

    def received(self, key: K, now: float, *, completed: int = 0, partial: bool) -> None:
        """Bytes arrived: `completed` messages were completed by them, and after them a
        message is (`partial`) or is not incomplete."""
        c = self._conns.get(key)
        if c is None:
            return
        c.last_activity = now
        if completed:
            c.delivered = True
            c.message_started = None
        if partial:
            if c.message_started is None:
                c.message_started = now
        else:
            c.message_started = None
        if c.message_started is not None or not c.delivered:
            if key not in self._waiting:
                self._waiting[key] = None
        else:
            self._waiting.pop(key, None)

    def sent(self, key: K, now: float) -> None:
        c = self._conns.get(key)
        if c is not None:
            c.last_activity = now

    def closed(self, key: K) -> None:
        c = self._conns.get(key)
        if c is not None:
            self._forget(key, c)

    def hold(self, key: K) -> None:
        self._holds[key] += 1

    def release(self, key: K, now: float | None = None) -> None:
        """Drop one hold; with `now`, the idle time counts from now (a handled request)."""
        n = self._holds[key] - 1
        if n > 0:
            self._holds[key] = n
        else:
            del self._holds[key]
        c = self._conns.get(key)
        if c is not None and now is not None:
            c.last_activity = now

    def held(self, key: K) -> bool:
        return self._holds[key] > 0

    # ---- time -----------------------------------------------------------------------------

    def sweep(self, now: float) -> list[tuple[K, str]]:
        """Connections past a deadline, with why (`slow` or `idle`); they are forgotten here
        and the adapter must close them."""
        lim = self.limits
        out: list[tuple[K, str]] = []
        for key, c in self._conns.items():
            if lim.message_timeout > 0:
                started = c.message_started
                if started is None and not c.delivered:
                    started = c.opened_at
                if started is not None and now - started >= lim.message_timeout:
                    out.append((key, CLOSED_SLOW))
                    continue
            if (lim.idle_timeout > 0 and c.message_started is None
                    and now - c.last_activity >= lim.idle_timeout and not self.held(key)):
                out.append((key, CLOSED_IDLE))
        for key, why in out:
            self._forget(key, self._conns[key])
            self._closed[why] += 1
            self.total_timed_out += 1
        if out:
            self._summary_due(now)
        return out

    def summary(self, now: float) -> str | None:
        """One line on refusals and timeouts since the last line, at most once per interval."""
        if not self._refused and not self._closed:
            return None
        if self._last_summary is not None and now - self._last_summary < self.summary_interval:
            return None
        lim = self.limits
        parts: list[str] = []
        if self._refused:
            top = ", ".join(f"{s} x{n}" for s, n in self._refused_sources.most_common(3))
            caps = {REFUSED_TOTAL: lim.max_total, REFUSED_PER_SOURCE: lim.max_per_source}
            detail = "; ".join(f"{n} over the {why} ({caps[why]})"
                               for why, n in sorted(self._refused.items()))
            parts.append(f"refused {sum(self._refused.values())} connection(s): {detail}; "
                         f"top sources: {top}")
        if self._closed[CLOSED_SLOW]:
            parts.append(f"closed {self._closed[CLOSED_SLOW]} slow (no complete message within "
                         f"{lim.message_timeout:g}s)")
        if self._closed[CLOSED_IDLE]:
            parts.append(f"closed {self._closed[CLOSED_IDLE]} idle ({lim.idle_timeout:g}s)")
        if self._closed[CLOSED_EVICTED]:
            parts.append(f"closed {self._closed[CLOSED_EVICTED]} waiting for a message to "
                         f"admit new ones (total cap {lim.max_total})")
        self._refused.clear()
        self._refused_sources.clear()
        self._closed.clear()
        self._last_summary = now
        return f"{self.name}: " + "; ".join(parts) + f" (open now: {len(self._conns)})"

    # ---- internals ------------------------------------------------------------------------

    def _summary_due(self, now: float) -> None:
        # the first event after a quiet spell is reported at the next summary call
        if self._last_summary is None:
            self._last_summary = now - self.summary_interval

    def _evict_one(self) -> bool:
        for key in self._waiting:
            if not self.held(key):
                self._forget(key, self._conns[key])
                self._evicted.append(key)
                self._closed[CLOSED_EVICTED] += 1
                return True
        return False

    def _forget(self, key: K, c: _Conn) -> None:
        del self._conns[key]
        self._waiting.pop(key, None)
        n = self._per_source[c.source] - 1
        if n > 0:
            self._per_source[c.source] = n
        else:
            del self._per_source[c.source]
