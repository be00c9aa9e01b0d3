"""Admission control for new calls, sans-IO: admit an INVITE, or shed it with a reason and a
Retry-After.

`Admission` owns the decision and nothing else: it is fed the node's measurements
(`Headroom`: media clock lateness and tick duration, process CPU, free RTP ports, file
descriptors) with `update()`, the calls in setup with `setup_started()` / `setup_done()`, and
the time with every call; `decide(source, now)` answers `Admit` or `Shed(reason,
retry_after)`. It owns the per-source token buckets (new INVITEs per second from one IP
address) and the per-source and total caps on calls in setup. Overload (clock late, CPU
high) has hysteresis: once seen in `overload_samples` consecutive samples, new calls are shed
until the node has been below the lower thresholds for `recover_after` seconds.

`ShedLog` counts what was shed (by reason and by source) and produces one summary line per
interval, so that an attack writes a line every few seconds instead of one per call.

Nothing here reads a clock or a socket: the server samples and passes `now`.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Admission",
    "AdmissionLimits",
    "Admit",
    "Headroom",
    "Shed",
    "ShedLog",
    "TokenBucket",
]

# Shed reasons (also the keys of Server.rejected, so the metrics show them by name).
DRAINING: Final = "draining"
CLOCK_LATE: Final = "overload: media clock late"
CPU: Final = "overload: cpu"
NO_PORTS: Final = "no RTP port"
NO_FDS: Final = "no file descriptors"
SETUP_FULL: Final = "too many calls in setup"
RATE: Final = "call rate"
SOURCE_RATE: Final = "source rate"
SOURCE_SETUP: Final = "source calls in setup"


class TokenBucket:
    """`rate` tokens per second, at most `burst` banked; time is passed in."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token will be there (0 when one is)."""
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        if self.rate <= 0:
            return math.inf
        return (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


@dataclass(frozen=True)
class AdmissionLimits:
    """The thresholds (config `[limits]`; see README, Configuration)."""

    max_calls_in_setup: int = 60  # whole node: INVITEs not yet answered or ended
    max_call_rate: float = 100.0  # new calls admitted per second, whole node
    call_burst: float = 50.0
    source_rate: float = 20.0  # new INVITEs per second from one IP address
    source_burst: float = 40.0
    source_max_in_setup: int = 30  # calls in setup from one IP address
    max_clock_lateness: float = 0.05  # s: a media tick this late means overload
    max_tick_share: float = 0.6  # tick duration / 20 ms above this means overload
    max_cpu: float = 0.9  # process CPU (1.0 = one core) above this means overload
    min_free_ports: int = 2  # RTP ports kept free
    min_free_fds: int = 64  # file descriptors kept free
    overload_samples: int = 2  # consecutive hot samples before overload shedding starts
    recover_after: float = 2.0  # s below the thresholds before overload shedding stops
    retry_after: int = 5  # s, Retry-After of overload / resource sheds
    drain_retry_after: int = 30  # s, Retry-After while draining
    max_sources: int = 10000  # per-source state kept (least recently seen dropped)
    # Addresses or networks (CIDR) of trunks, SBCs or a SIP front door: every call of theirs
    # comes from them, so the per-source limits do not apply (the node-wide ones still do).
    trusted_sources: tuple[str, ...] = ()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """`trusted_sources` as networks (a plain address is a /32 or /128). ValueError names the
    entry that is neither."""
    nets: list[Network] = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address or network (CIDR)") from None
    return tuple(nets)


@dataclass(frozen=True)
class Headroom:
    """The node's measurements, sampled by the server."""

    clock_lateness: float = 0.0  # s, worst media-tick lateness since the last sample
    tick_duration: float = 0.0  # s, worst media-tick duration since the last sample
    cpu: float = 0.0  # process CPU seconds per second since the last sample
    free_ports: int = 1 << 30
    open_fds: int = 0
    fd_limit: int = 1 << 30


@dataclass(frozen=True)
class Admit:
    pass


@dataclass(frozen=True)
class Shed:
    reason: str
    retry_after: int  # seconds, for the Retry-After header


ADMIT: Final = Admit()


class Admission:
    """Decides whether a new call is admitted; see the module docstring."""

    def __init__(self, limits: AdmissionLimits, now: float, period: float = 0.02) -> None:
        self.limits = limits
        self.period = period
        self.draining = False
        self.headroom = Headroom()
        self.in_setup = 0
        self._source_setup: Counter[str] = Counter()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._rate = TokenBucket(limits.max_call_rate, limits.call_burst, now)
        self._overload: str | None = None  # reason while in overload
        self._calm_since: float | None = None
        self._hot = 0  # consecutive samples over a threshold
        self._trusted_nets = parse_networks(limits.trusted_sources)
        self._trusted: dict[str, bool] = {}  # source -> in a trusted network (bounded cache)

    # ---- inputs ---------------------------------------------------------------------------

    def update(self, headroom: Headroom, now: float) -> None:
        """New measurements; enters or leaves the overload state."""
        self.headroom = headroom
        lim = self.limits
        hot: str | None = None
        if (headroom.clock_lateness > lim.max_clock_lateness
                or headroom.tick_duration > lim.max_tick_share * self.period):
            hot = CLOCK_LATE
        elif headroom.cpu > lim.max_cpu:
            hot = CPU
        if hot is not None:
            # one hot sample may be the machine, not us (a preempted process, a collection):
            # shed only when it lasts
            self._hot += 1
            if self._hot >= lim.overload_samples or self._overload is not None:
                self._overload = hot
            self._calm_since = None
            return
        self._hot = 0
        if self._overload is None:
            return
        # below the upper thresholds: leave overload once clearly calm for a while
        calm = (headroom.clock_lateness <= lim.max_clock_lateness / 2
                and headroom.cpu <= lim.max_cpu * 0.8)
        if not calm:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        elif now - self._calm_since >= lim.recover_after:
            self._overload = None
            self._calm_since = None

    def setup_started(self, source: str) -> None:
        """An admitted call is being set up (until `setup_done`)."""
        self.in_setup += 1
        self._source_setup[source] += 1

    def setup_done(self, source: str) -> None:
        """An admitted call was answered or ended."""
        self.in_setup = max(0, self.in_setup - 1)
        n = self._source_setup[source] - 1
        if n > 0:
            self._source_setup[source] = n
        else:
            del self._source_setup[source]

    # ---- the decision ---------------------------------------------------------------------

    @property
    def overloaded(self) -> str | None:
        """The overload reason while in overload, else None."""
        return self._overload

    def decide(self, source: str, now: float) -> Admit | Shed:
        """Admit or shed a new INVITE from IP address `source`. An admitted call must be
        reported with `setup_started` (and later `setup_done`)."""
        lim = self.limits
        if self.draining:
            return Shed(DRAINING, lim.drain_retry_after)
        if not self.trusted(source):
            bucket = self._bucket(source, now)
            if not bucket.take(now):  # one address beyond its rate: it alone waits
                return Shed(SOURCE_RATE, max(1, math.ceil(bucket.wait_time(now))))
            if self._source_setup.get(source, 0) >= lim.source_max_in_setup:
                return Shed(SOURCE_SETUP, lim.retry_after)
        if self._overload is not None:
            return Shed(self._overload, lim.retry_after)
        h = self.headroom
        if h.free_ports < lim.min_free_ports:
            return Shed(NO_PORTS, lim.retry_after)
        if h.fd_limit - h.open_fds < lim.min_free_fds:
            return Shed(NO_FDS, lim.retry_after)
        if self.in_setup >= lim.max_calls_in_setup:
            return Shed(SETUP_FULL, lim.retry_after)
        if not self._rate.take(now):
            return Shed(RATE, max(1, math.ceil(self._rate.wait_time(now))))
        return ADMIT

    def trusted(self, source: str) -> bool:
        """Is `source` in `trusted_sources` (exempt from the per-source limits)?"""
        if not self._trusted_nets:
            return False
        known = self._trusted.get(source)
        if known is None:
            try:
                addr = ipaddress.ip_address(source)
            except ValueError:
                known = False
            else:
                known = any(addr in net for net in self._trusted_nets)
            if len(self._trusted) >= self.limits.max_sources:
                self._trusted.clear()
            self._trusted[source] = known
        return known

    def _bucket(self, source: str, now: float) -> TokenBucket:
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            lim = self.limits
            bucket = TokenBucket(lim.source_rate, lim.source_burst, now)
            buckets[source] = bucket
            if len(buckets) > lim.max_sources:
                buckets.popitem(last=False)  # the least recently seen address
        else:
            buckets.move_to_end(source)
        return bucket

    def __len__(self) -> int:
        """Sources with state (for tests: bounded by max_sources)."""
        return len(self._buckets)


class ShedLog:
    """What was shed, summarised in one line per `interval` seconds."""

    def __init__(self, interval: float, now: float, top: int = 3) -> None:
        self.interval = interval
        self.top = top
        self._since = now
        self._reasons: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()

    def record(self, reason: str, source: str) -> None:
        self._reasons[reason] += 1
        self._sources[source] += 1

    def summary(self, now: float, force: bool = False) -> str | None:
        """The summary line when an interval has passed (or `force`) and something was shed,
        else None (the counts restart either way once the interval is over)."""
        if now - self._since < self.interval and not force:
            return None
        seconds = now - self._since
        self._since = now
        if not self._reasons:
            return None
        total = sum(self._reasons.values())
        reasons = ", ".join(f"{r}={n}" for r, n in self._reasons.most_common())
        sources = ", ".join(f"{s}={n}" for s, n in self._sources.most_common(self.top))
        more = len(self._sources) - min(self.top, len(self._sources))
        if more:
            sources += f" (+{more} more)"
        self._reasons.clear()
        self._sources.clear()
        return (f"shed {total} new call(s) in the last {seconds:.0f}s with 503: {reasons}; "
                f"top sources: {sources}")
