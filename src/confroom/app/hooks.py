"""The webhook client: how confroom calls an application's hooks.

Owns request building (JSON body for POST, query string for GET, basic auth, relative URL
resolution against the app's call-hook URL), `Jambonz-Signature` signing, timeouts, and turning
the response into a verb list. Network and HTTP problems never raise: they come back as a
`HookResult` with `ok=False` and are logged with the hook URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import aiohttp

from confroom.config import Hook

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Jambonz-Signature"
DEFAULT_TIMEOUT = 10.0


@dataclass
class HookResult:
    """What a hook call produced. `verbs` is set (possibly empty) only when `ok`."""

    ok: bool
    status: int | None
    verbs: list[dict[str, Any]] | None
    error: str | None
    url: str


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

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def http_session(self) -> aiohttp.ClientSession:
        """The shared aiohttp session (also used for audio downloads), created on first use."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
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
                hook.url, None, "URL is not an absolute http(s) URL and there is no base URL"
            )
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
        try:
            session = self.http_session()
            async with session.request(method, url, data=data, headers=headers) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            return self._fail(url, None, f"timed out after {self.timeout:g} s")
        except aiohttp.ClientError as e:
            return self._fail(url, None, f"connection error: {e or type(e).__name__}")
        except (OSError, ValueError) as e:
            return self._fail(url, None, f"request error: {e or type(e).__name__}")
        if not 200 <= status < 300:
            return self._fail(url, status, f"HTTP status {status}")
        verbs, error = parse_response(raw.decode("utf-8", errors="replace"))
        if verbs is None:
            return self._fail(url, status, error or "bad response")
        return HookResult(ok=True, status=status, verbs=verbs, error=None, url=url)

    @staticmethod
    def _fail(url: str, status: int | None, error: str) -> HookResult:
        logger.warning("hook %s failed: %s", url, error)
        return HookResult(ok=False, status=status, verbs=None, error=error, url=url)
