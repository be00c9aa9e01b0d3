"""Outbound call policy (sans-IO): where a target may go, and how many calls may be placed.

`route()` turns a jambonz target (`{type: phone, number}` or `{type: sip, sipUri}`) into a
`Route` (Request-URI, next hop, digest credentials) or refuses it with `Refused`: a `phone`
number goes to the configured trunk whose prefix matches (longest prefix first; or the one
the target names in `trunk`), a `sip` URI only to a host in `[outbound] allowed_domains` or to
a trunk's host. Nothing else is ever reachable, whatever an app asks for; a target's `auth`
only supplies the credentials to answer that destination's challenge.

`OutboundLimiter` holds every outbound call to `max_concurrent_calls` per account and to
`calls_per_second` (a token bucket, burst = max(1, rate)) for the whole server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from confroom.config import Config, Trunk
from confroom.sip.digest import Credentials
from confroom.sip.message import SipParseError, parse_uri

__all__ = ["LimitExceeded", "OutboundLimiter", "Refused", "Route", "route"]


class Refused(ValueError):
    """A target that may not be called (or is malformed); the message says why."""


class LimitExceeded(Exception):
    """The per-account concurrency cap or the call rate is exhausted; the message says which."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Route:
    uri: str  # the Request-URI
    host: str  # the next hop (resolved by the adapter)
    port: int
    transport: str
    credentials: Credentials | None
    trunk: str | None  # the trunk's name, None for an allowed SIP domain
    to_user: str  # the user part called (number or SIP user)


def _digits(number: str) -> bool:
    body = number[1:] if number.startswith("+") else number
    return bool(body) and all(ch in "0123456789*#" for ch in body) and len(number) <= 32


def _trunk_for(trunks: tuple[Trunk, ...], number: str) -> Trunk | None:
    best: Trunk | None = None
    best_len = -1
    for t in trunks:
        if not t.prefixes:
            if best_len < 0:
                best, best_len = t, 0
            continue
        for p in t.prefixes:
            if number.startswith(p) and len(p) > best_len:
                best, best_len = t, len(p)
    return best


def _trunk_route(t: Trunk, user: str) -> Route:
    creds = Credentials(t.username, t.password) if t.username and t.password else None
    port = t.port or (5061 if t.transport == "tls" else 5060)
    scheme = "sips" if t.transport == "tls" else "sip"
    host = f"[{t.host}]" if ":" in t.host else t.host
    hostport = f"{host}:{t.port}" if t.port else host
    params = f";transport={t.transport}" if t.transport == "tcp" else ""
    return Route(f"{scheme}:{user}@{hostport}{params}", t.host, port, t.transport, creds,
                 t.name, user)


def route(cfg: Config, target: Mapping[str, Any]) -> Route:
    """Where `target` goes, or `Refused`."""
    rt = _route(cfg, target)
    auth = target.get("auth")
    if isinstance(auth, Mapping) and auth.get("username") and auth.get("password"):
        # jambonz's per-target digest credentials (for a challenge from that target)
        rt = replace(rt, credentials=Credentials(str(auth["username"]), str(auth["password"])))
    return rt


def _route(cfg: Config, target: Mapping[str, Any]) -> Route:
    kind = target.get("type")
    if kind == "phone":
        number = str(target.get("number") or "").strip()
        if not _digits(number):
            raise Refused(f"phone target: {number!r} is not a phone number")
        named = target.get("trunk")
        if named:
            trunk = next((t for t in cfg.trunks if t.name == named), None)
            if trunk is None:
                raise Refused(f"phone target {number}: no outbound trunk named {named!r}")
        else:
            trunk = _trunk_for(cfg.trunks, number)
        if trunk is None:
            raise Refused(f"phone target {number}: no outbound trunk matches this number "
                          "(configure [[trunks]])")
        user = trunk.prepend + number[trunk.strip:]
        return _trunk_route(trunk, user)
    if kind == "sip":
        text = str(target.get("sipUri") or "").strip()
        try:
            uri = parse_uri(text)
        except SipParseError as e:
            raise Refused(f"sip target {text!r}: not a SIP URI ({e.reason})") from None
        if uri.scheme not in ("sip", "sips") or not uri.host:
            raise Refused(f"sip target {text!r}: not a sip: or sips: URI")
        host = uri.host.strip("[]").lower()
        transport = str(uri.params.get("transport") or
                        ("tls" if uri.scheme == "sips" else "udp")).lower()
        if transport not in ("udp", "tcp"):
            raise Refused(f"sip target {text!r}: transport {transport!r} is not supported for "
                          "outbound calls (udp, tcp)")
        port = uri.port or (5061 if transport == "tls" else 5060)
        allowed = cfg.outbound_allowed_domains
        if host in allowed or f"{host}:{port}" in allowed:
            clean = parse_uri(text)
            clean.headers.clear()  # no ?headers smuggled into the INVITE
            return Route(str(clean), host, port, transport, None, None, uri.user or "")
        for t in cfg.trunks:
            if t.host.lower() == host and (uri.port is None or t.port in (None, uri.port)):
                return _trunk_route(t, uri.user or "")
        raise Refused(f"sip target {text!r}: {host} is not an allowed outbound domain "
                      "(see [outbound] allowed_domains) nor a trunk")
    raise Refused(f"target type {kind!r}: confroom calls 'phone' (via a trunk) and 'sip' "
                  "targets")


class OutboundLimiter:
    """Concurrency per account and a server-wide call rate (see the module docstring)."""

    def __init__(self, max_concurrent: int, calls_per_second: float) -> None:
        self.max_concurrent = max_concurrent
        self.rate = calls_per_second
        self.burst = max(1.0, calls_per_second)
        self._tokens = self.burst
        self._at: float | None = None
        self.active: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # by reason ("concurrency", "rate")

    def acquire(self, account_sid: str, now: float) -> None:
        """Count one new outbound call of `account_sid`, or raise LimitExceeded."""
        if self.active[account_sid] >= self.max_concurrent:
            self.refused["concurrency"] += 1
            raise LimitExceeded(
                f"account {account_sid} already has {self.active[account_sid]} outbound "
                f"call(s) in progress, the maximum ([outbound] max_concurrent_calls = "
                f"{self.max_concurrent})", retry_after=5)
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            self.refused["rate"] += 1
            wait = (1.0 - self._tokens) / self.rate
            raise LimitExceeded(
                f"outbound call rate exceeded ([outbound] calls_per_second = {self.rate:g}); "
                f"retry in {wait:.1f} s", retry_after=max(1, int(wait + 0.999)))
        self._tokens -= 1.0
        self.active[account_sid] += 1

    def release(self, account_sid: str) -> None:
        if self.active[account_sid] > 0:
            self.active[account_sid] -= 1
        if self.active[account_sid] == 0:
            del self.active[account_sid]
