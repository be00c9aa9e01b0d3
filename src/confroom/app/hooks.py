"""The webhook client: how confroom calls an application's hooks.

Owns request building (JSON body for POST, query string for GET, basic auth, relative URL
resolution against the app's call-hook URL), `Jambonz-Signature` signing, timeouts, the cap on
response bodies (`max_body`: the read stops as soon as an answer passes it), and turning the
response into a verb list. Network and HTTP problems never raise: they come back as a
`HookResult` with `ok=False` and a failure `kind` (see `FAILURE_KINDS`), are logged with the hook
URL, and leave no reference cycle behind (`confroom.memory.forget_traceback`). `HookStats`
counts calls, their latency and failures by kind for the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import aiohttp

from confroom.config import DEFAULT_WEBHOOK_MAX_BODY, Hook
from confroom.histogram import Histogram
from confroom.httpbody import BodyTooLarge, read_body
from confroom.memory import forget_traceback

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Jambonz-Signature"
DEFAULT_TIMEOUT = 10.0

# why a hook failed (HookResult.kind, and the label of the failure metric)
FAILURE_KINDS: Final = ("timeout", "connection", "http_status", "bad_response", "too_large",
                        "bad_url")
# webhook latency buckets, seconds
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class HookResult:
    """What a hook call produced. `verbs` is set (possibly empty) only when `ok`; `kind` (one
    of `FAILURE_KINDS`) only when not."""

    ok: bool
    status: int | None
    verbs: list[dict[str, Any]] | None
    error: str | None
    url: str
    kind: str | None = None


@dataclass
class HookStats:
    """Every hook call's latency (until its answer was read or it failed) and the failures
    by kind."""

    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    failures: Counter[str] = field(default_factory=Counter)


def sign(secret: str, body: bytes, t: int) -> str:
    """The `Jambonz-Signature` header value for `body` sent at unix time `t`."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance: float | None = 300.0,
    now: float | None = None,
) -> bool:
    """Check a `Jambonz-Signature` header against `body` (and, unless `tolerance` is None,
    that its timestamp is within `tolerance` seconds of `now`)."""
    t_str: str | None = None
    sigs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            t_str = value
        elif key == "v1":
            sigs.append(value)
    if t_str is None or not sigs:
        return False
    try:
        t = int(t_str)
    except ValueError:
        return False
    if tolerance is not None:
        current = time.time() if now is None else now
        if abs(current - t) > tolerance:
            return False
    expected = sign(secret, body, t).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, s) for s in sigs)


def resolve_url(url: str, base_url: str | None) -> str | None:
    """An absolute http(s) URL for `url`: as given when absolute, else joined onto
    `base_url`. None when it cannot be made absolute."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return url
    if scheme or not base_url:
        return None
    joined = urljoin(base_url, url)
    return joined if urlsplit(joined).scheme.lower() in ("http", "https") else None


def query_fields(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The body as query-string pairs: strings as they are, everything else JSON-encoded."""
    out: list[tuple[str, str]] = []
    for key, value in body.items():
        if value is None:
            continue
        if isinstance(value, str):
            out.append((key, value))
        else:
            out.append((key, json.dumps(value, separators=(",", ":"))))
    return out


def _single_verb(obj: Mapping[str, Any]) -> bool:
    if isinstance(obj.get("verb"), str):
        return True
    return len(obj) == 1 and isinstance(next(iter(obj.values())), dict)


def parse_response(text: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Turn a 2xx response body into (verbs, None) or (None, error)."""
    if not text.strip():
        return [], None
    try:
        data = json.loads(text)
    except ValueError as e:
        return None, f"response is not valid JSON ({e})"
    if isinstance(data, list):
        for i, item in enumerate(data, 1):
            if not isinstance(item, dict):
                kind = type(item).__name__
                return None, f"response array item #{i} is not a JSON object ({kind})"
        return data, None
    if isinstance(data, dict):
        if _single_verb(data):
            return [data], None
        return None, "response is a JSON object that is not a verb (expected an array of verbs)"
    return None, f"response is JSON {type(data).__name__}, expected an array of verbs"


class WebhookClient:
    """Calls hooks over one reused aiohttp session (created on first use, in the running loop)."""

    def __init__(
        self, timeout: float = DEFAULT_TIMEOUT, max_body: int = DEFAULT_WEBHOOK_MAX_BODY,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_body = max_body  # bytes of an answer read at most
        self.ssl_context = ssl_context  # https: None = aiohttp's default (system CA store)
        self.stats = HookStats()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def http_session(self) -> aiohttp.ClientSession:
        """The shared aiohttp session (also used for audio downloads), created on first use."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self.ssl_context or True))
            self._loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        self._loop = None

    async def call(
        self,
        hook: Hook,
        body: Mapping[str, Any],
        *,
        base_url: str | None,
        secret: str | None,
    ) -> HookResult:
        """Call `hook` with `body`; never raises for network or HTTP problems."""
        url = resolve_url(hook.url, base_url)
        if url is None:
            return self._fail(
                hook.url, None, "URL is not an absolute http(s) URL and there is no base URL",
                "bad_url",
            )
        t0 = time.monotonic()
        result = await self._request(hook, body, url, secret)
        self.stats.latency.observe(time.monotonic() - t0)
        return result

    async def _request(
        self, hook: Hook, body: Mapping[str, Any], url: str, secret: str | None
    ) -> HookResult:
        method = hook.method.upper()
        headers: dict[str, str] = {}
        data: bytes | None = None
        if method == "GET":
            parts = urlsplit(url)
            pairs = parse_qsl(parts.query, keep_blank_values=True) + query_fields(body)
            url = urlunsplit(parts._replace(query=urlencode(pairs)))
            signed = b""
        else:
            method = "POST"
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
            signed = data
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, signed, int(time.time()))
        if hook.username is not None:
            creds = f"{hook.username}:{hook.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(creds).decode("ascii")
        status: int | None = None
        try:
            session = self.http_session()
            async with session.request(method, url, data=data, headers=headers) as resp:
                status = resp.status
                if not 200 <= status < 300:  # the body is not needed: not read
                    return self._fail(url, status, f"HTTP status {status}", "http_status")
                try:
                    raw = await read_body(resp, self.max_body)
                except BodyTooLarge:
                    resp.close()  # drop the connection: the rest is never read
                    raise
        except BodyTooLarge as e:
            forget_traceback(e)
            return self._fail(url, status, str(e), "too_large")
        except TimeoutError as e:
            forget_traceback(e)
            return self._fail(url, None, f"timed out after {self.timeout:g} s", "timeout")
        except aiohttp.ClientError as e:
            forget_traceback(e)
            return self._fail(url, None, f"connection error: {e or type(e).__name__}",
                              "connection")
        except (OSError, ValueError) as e:
            forget_traceback(e)
            return self._fail(url, None, f"request error: {e or type(e).__name__}",
                              "connection")
        verbs, error = parse_response(raw.decode("utf-8", errors="replace"))
        if verbs is None:
            return self._fail(url, status, error or "bad response", "bad_response")
        return HookResult(ok=True, status=status, verbs=verbs, error=None, url=url)

    def _fail(self, url: str, status: int | None, error: str, kind: str) -> HookResult:
        self.stats.failures[kind] += 1
        logger.warning("hook %s failed: %s", url, error)
        return HookResult(ok=False, status=status, verbs=None, error=error, url=url, kind=kind)
