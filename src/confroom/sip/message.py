"""SIP message model (RFC 3261): parser, serialiser, header multimap and header helpers.

Owns `Request`/`Response`, `Headers`, the Via / URI / name-addr value parsers,
`make_response`, the stream (TCP) framer and branch/tag generation. Sans-IO.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "REASON_PHRASES",
    "Headers",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipUri",
    "StreamFramer",
    "Via",
    "make_response",
    "new_branch",
    "new_tag",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "set_owner_mark",
]


class SipParseError(ValueError):
    """A malformed SIP message or header value; `reason` is fit for a 400 reason phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- names

_COMPACT: dict[str, str] = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "u": "Allow-Events",
}

_SPECIAL: dict[str, str] = {
    n.lower(): n
    for n in (
        "Call-ID",
        "CSeq",
        "WWW-Authenticate",
        "MIME-Version",
        "RSeq",
        "RAck",
        "SIP-ETag",
        "SIP-If-Match",
        "Min-SE",
        "Content-ID",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
    )
}

# Header names whose comma-separated lines are split into separate values by get_all().
_LIST_HEADERS = frozenset(
    {"Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Accept"}
)

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")

_CANON_CACHE: dict[str, str] = {}
_VALID_NAME_CACHE: dict[str, str] = {}
_CACHE_LIMIT = 4096


def _canonical_name(name: str) -> str:
    """Canonical spelling of a header name (no validation)."""
    canon = _CANON_CACHE.get(name)
    if canon is not None:
        return canon
    low = name.strip().lower()
    canon = (
        _COMPACT.get(low)
        or _SPECIAL.get(low)
        or "-".join(part.capitalize() for part in low.split("-"))
    )
    if len(_CANON_CACHE) < _CACHE_LIMIT:
        _CANON_CACHE[name] = canon
    return canon


def _parse_header_name(raw: str) -> str:
    """Validate a header name read off the wire and return its canonical form."""
    canon = _VALID_NAME_CACHE.get(raw)
    if canon is not None:
        return canon
    name = raw.strip(" \t")
    if not name or _TOKEN_RE.fullmatch(name) is None:
        raise SipParseError("Invalid header name")
    canon = _canonical_name(name)
    if len(_VALID_NAME_CACHE) < _CACHE_LIMIT:
        _VALID_NAME_CACHE[raw] = canon
    return canon


def _is_token(s: str) -> bool:
    return bool(s) and _TOKEN_CHARS.issuperset(s)


def _split_outside(value: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes and <...>; pieces are not stripped."""
    if sep not in value:
        return [value]
    if '"' not in value and "<" not in value:
        return value.split(sep)
    out: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == sep and not in_angle:
            out.append(value[start:i])
            start = i + 1
        i += 1
    out.append(value[start:])
    return out


def _split_list(value: str) -> list[str]:
    """Split a list header line on top-level commas, dropping empty elements."""
    return [p for p in (s.strip(" \t") for s in _split_outside(value, ",")) if p]


# --------------------------------------------------------------------------- Headers


class Headers:
    """Ordered multimap. Names are case-insensitive; compact forms expand to canonical names
    (v Via, f From, t To, i Call-ID, m Contact, l Content-Length, c Content-Type, k Supported,
    s Subject, e Content-Encoding, o Event, r Refer-To, b Referred-By, x Session-Expires,
    u Allow-Events); other names are canonicalised to the usual capitalisation (Call-ID, CSeq,
    WWW-Authenticate, ... ; unknown names: Title-Case-Per-Dash)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]]) -> Headers:
        """Wrap already-canonical, already-validated items without copying."""
        h = cls.__new__(cls)
        h._items = items
        return h

    @staticmethod
    def _check_value(value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("header value must not contain CR or LF")
        return value

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of `name` (for list headers: the first comma-separated element)."""
        canon = _canonical_name(name)
        for n, v in self._items:
            if n == canon:
                if canon in _LIST_HEADERS and "," in v:
                    parts = _split_list(v)
                    return parts[0] if parts else v
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """All values in order; list headers' comma-joined lines are split."""
        canon = _canonical_name(name)
        split = canon in _LIST_HEADERS
        out: list[str] = []
        for n, v in self._items:
            if n == canon:
                if split and "," in v:
                    out.extend(_split_list(v))
                else:
                    out.append(v)
        return out

    def add(self, name: str, value: str) -> None:
        self._items.append((_canonical_name(name), self._check_value(value)))

    def set(self, name: str, value: str) -> None:
        """Replace all values of `name` by one, at the position of the first (else appended)."""
        canon = _canonical_name(name)
        self._check_value(value)
        out: list[tuple[str, str]] = []
        placed = False
        for item in self._items:
            if item[0] == canon:
                if not placed:
                    out.append((canon, value))
                    placed = True
            else:
                out.append(item)
        if not placed:
            out.append((canon, value))
        self._items = out

    def remove(self, name: str) -> None:
        canon = _canonical_name(name)
        self._items = [item for item in self._items if item[0] != canon]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        canon = _canonical_name(name)
        return any(n == canon for n, _ in self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        return Headers._trusted(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# --------------------------------------------------------------------------- host/port


def _parse_port(text: str) -> int:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 5:
        raise SipParseError("Invalid port")
    port = int(text)
    if port > 65535:
        raise SipParseError("Invalid port")
    return port


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 3:
            raise SipParseError("Invalid host")
        host = text[: end + 1]
        inner = host[1:-1]
        if not all(c in "0123456789abcdefABCDEF:." for c in inner):
            raise SipParseError("Invalid host")
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipParseError("Invalid host")
        return host, _parse_port(rest[1:])
    host, sep, port_text = text.partition(":")
    if not host or not _HOST_CHARS.issuperset(host):
        raise SipParseError("Invalid host")
    return host, (_parse_port(port_text) if sep else None)


def _format_hostport(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# --------------------------------------------------------------------------- Via


@dataclass
class Via:
    """One Via header value."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        return (
            f"SIP/2.0/{self.transport} {_format_hostport(self.host, self.port)}"
            f"{_format_params(self.params)}"
        )


def parse_via(value: str) -> Via:
    """Parse one Via value ("SIP/2.0/UDP host:port;branch=..."); raises SipParseError."""
    parts = value.split(";")
    pieces = parts[0].split("/")
    if len(pieces) != 3:
        raise SipParseError("Invalid Via")
    if not _is_token(pieces[0].strip(" \t")) or not _is_token(pieces[1].strip(" \t")):
        raise SipParseError("Invalid Via")
    rest = pieces[2].split(None, 1)
    if len(rest) != 2 or not _is_token(rest[0]):
        raise SipParseError("Invalid Via")
    sent_by = rest[1].replace(" ", "").replace("\t", "")
    try:
        host, port = _parse_hostport(sent_by)
    except SipParseError:
        raise SipParseError("Invalid Via sent-by") from None
    params: dict[str, str | None] = {}
    for raw in parts[1:]:
        name, eq, val = raw.partition("=")
        name = name.strip(" \t").lower()
        if not _is_token(name):
            raise SipParseError("Invalid Via parameter")
        if eq:
            val = val.strip(" \t")
            if not val:
                raise SipParseError("Invalid Via parameter")
            params[name] = val
        else:
            params[name] = None
    return Via(rest[0].upper(), host, port, params)


# --------------------------------------------------------------------------- URIs


@dataclass
class SipUri:
    """A sip:/sips: URI (user part kept %-escaped as received), a tel: URI (number in
    `user`, host ""), or any other absolute URI (opaque part in `host`, user None)."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    password: str | None = None

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user or ''}{_format_params(self.params)}"
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.host}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":")
                out.append(self.password)
            out.append("@")
        out.append(_format_hostport(self.host, self.port))
        out.append(_format_params(self.params))
        if self.headers:
            out.append("?")
            out.append("&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)


def _parse_uri_params(pieces: list[str]) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for raw in pieces:
        if not raw:
            continue
        name, eq, val = raw.partition("=")
        if not name:
            raise SipParseError("Invalid URI parameter")
        params[name.lower()] = val if eq else None
    return params


def parse_uri(value: str) -> SipUri:
    """Parse a SIP/SIPS/tel (or other absolute) URI; raises SipParseError."""
    text = value.strip(" \t")
    m = _SCHEME_RE.match(text)
    if m is None:
        raise SipParseError("Invalid URI")
    scheme = text[: m.end() - 1].lower()
    rest = text[m.end() :]
    if not rest or any(c in rest for c in ' \t<>"'):
        raise SipParseError("Invalid URI")
    if scheme == "tel":
        number, *pieces = rest.split(";")
        if not number:
            raise SipParseError("Invalid URI")
        return SipUri("tel", number, "", None, _parse_uri_params(pieces))
    if scheme not in ("sip", "sips"):
        return SipUri(scheme, None, rest)
    user: str | None = None
    password: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if not user:
            raise SipParseError("Invalid URI user")
        if colon:
            password = pw
    rest, qmark, header_text = rest.partition("?")
    hostport, *pieces = rest.split(";")
    host, port = _parse_hostport(hostport)
    headers: dict[str, str] = {}
    if qmark:
        for item in header_text.split("&"):
            if item:
                k, _, v = item.partition("=")
                headers[k] = v
    return SipUri(scheme, user, host, port, _parse_uri_params(pieces), headers, password)


# --------------------------------------------------------------------------- name-addr


def _quote(display: str) -> str:
    return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class NameAddr:
    """A From/To/Contact/Route style value: optional display name, URI, header params."""

    display: str | None
    uri: SipUri
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        prefix = f"{_quote(self.display)} " if self.display else ""
        return f"{prefix}<{self.uri}>{_format_params(self.params)}"


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    """Unescape the quoted string starting at s[i] == '"'; return (text, index after it)."""
    buf: list[str] = []
    j = i + 1
    n = len(s)
    while j < n:
        ch = s[j]
        if ch == "\\":
            if j + 1 >= n:
                break
            buf.append(s[j + 1])
            j += 2
        elif ch == '"':
            return "".join(buf), j + 1
        else:
            buf.append(ch)
            j += 1
    raise SipParseError("Unterminated quoted string")


def _parse_header_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for raw in _split_outside(text, ";"):
        name, eq, val = raw.partition("=")
        name = name.strip(" \t").lower()
        if not _is_token(name):
            raise SipParseError("Invalid header parameter")
        if eq:
            val = val.strip(" \t")
            if not val:
                raise SipParseError("Invalid header parameter")
            if val[0] == '"':
                _, end = _read_quoted(val, 0)
                if end != len(val):
                    raise SipParseError("Invalid header parameter")
            params[name] = val
        else:
            params[name] = None
    return params


def parse_name_addr(value: str) -> NameAddr:
    """Parse `"Display" <uri>;p`, `Display <uri>;p` or `uri;p` (params after a bare URI
    belong to the header, RFC 3261 20.10); raises SipParseError."""
    s = value.strip(" \t")
    if not s:
        raise SipParseError("Empty address")
    display: str | None = None
    if s[0] == '"':
        display, end = _read_quoted(s, 0)
        s = s[end:].lstrip(" \t")
        if not s.startswith("<"):
            raise SipParseError("Invalid address")
        lt = 0
    else:
        lt = s.find("<")
        if lt > 0:
            words = s[:lt].split()
            if not all(_is_token(w) for w in words):
                raise SipParseError("Invalid display name")
            display = " ".join(words) or None
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError("Invalid address")
        uri = _parse_uri_strict(s[lt + 1 : gt])
        tail = s[gt + 1 :].strip(" \t")
        if not tail:
            return NameAddr(display, uri, {})
        if tail[0] != ";":
            raise SipParseError("Invalid address")
        return NameAddr(display, uri, _parse_header_params(tail[1:]))
    uri_text, semi, tail = s.partition(";")
    if any(c in uri_text for c in ",?>"):
        raise SipParseError("Invalid address")
    uri = parse_uri(uri_text)
    return NameAddr(None, uri, _parse_header_params(tail) if semi else {})


def _parse_uri_strict(text: str) -> SipUri:
    """parse_uri without tolerance for whitespace around the URI (as inside <...>)."""
    if text != text.strip(" \t"):
        raise SipParseError("Invalid URI")
    return parse_uri(text)


# --------------------------------------------------------------------------- messages

_T = TypeVar("_T")


def _parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError("Invalid CSeq")
    num, method = parts
    if not num.isascii() or not num.isdigit() or len(num) > 10:
        raise SipParseError("Invalid CSeq")
    n = int(num)
    if n > 2**31 - 1:
        raise SipParseError("Invalid CSeq")
    if not _is_token(method):
        raise SipParseError("Invalid CSeq")
    return n, method


class _MessageMixin:
    """Read-only conveniences shared by Request and Response (parsed lazily, cached)."""

    headers: Headers
    _cache: dict[str, tuple[str, object]]

    def _cached(self, key: str, raw: str, fn: Callable[[str], _T]) -> _T:
        hit = self._cache.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1]  # type: ignore[return-value]
        val = fn(raw)
        self._cache[key] = (raw, val)
        return val

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"Missing {name}")
        return value

    @property
    def call_id(self) -> str:
        return self._required("Call-ID").strip()

    @property
    def cseq(self) -> tuple[int, str]:
        return self._cached("cseq", self._required("CSeq"), _parse_cseq)

    @property
    def from_addr(self) -> NameAddr:
        return self._cached("from", self._required("From"), parse_name_addr)

    @property
    def to_addr(self) -> NameAddr:
        return self._cached("to", self._required("To"), parse_name_addr)

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.tag

    @property
    def top_via(self) -> Via:
        return self._cached("via", self._required("Via"), parse_via)

    @property
    def vias(self) -> list[Via]:
        values = self.headers.get_all("Via")
        return self._cached("vias", "\n".join(values), lambda _: [parse_via(v) for v in values])

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip(" \t").lower() or None


def _serialise(start_line: str, headers: Headers, body: bytes) -> bytes:
    """Start line, headers, Content-Length (overwritten in place, else appended), body."""
    lines = [start_line]
    length = f"Content-Length: {len(body)}"
    for n, v in headers._items:
        if n != "Content-Length":
            lines.append(f"{n}: {v}")
        elif length:
            lines.append(length)
            length = ""
    if length:
        lines.append(length)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8") + body


@dataclass
class Request(_MessageMixin):
    method: str
    uri: str
    headers: Headers
    body: bytes = b""
    _cache: dict[str, tuple[str, object]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def to_bytes(self) -> bytes:
        return _serialise(f"{self.method} {self.uri} SIP/2.0", self.headers, self.body)


@dataclass
class Response(_MessageMixin):
    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    _cache: dict[str, tuple[str, object]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def to_bytes(self) -> bytes:
        return _serialise(f"SIP/2.0 {self.status} {self.reason}", self.headers, self.body)


_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")
_SINGLE = frozenset({"From", "To", "Call-ID", "CSeq", "Content-Length", "Max-Forwards"})


def parse_message(data: bytes) -> Request | Response:
    """Parse one SIP message (a datagram, or a frame from StreamFramer).

    Raises SipParseError (and nothing else) for anything malformed."""
    try:
        return _parse_message(data)
    except SipParseError:
        raise
    except Exception as exc:  # defensive: a parser bug must still look like a bad message
        raise SipParseError("Malformed message") from exc


def _parse_message(data: bytes) -> Request | Response:
    start = 0
    n = len(data)
    while start < n and data[start] in (13, 10):
        start += 1
    if start >= n:
        raise SipParseError("Empty message")
    m = _BLANK_LINE_RE.search(data, start)
    if m is not None:
        head = data[start : m.start()]
        body = data[m.end() :]
    else:
        head = data[start:]
        body = b""
    lines = head.decode("utf-8", "replace").split("\n")
    first = lines[0]
    if first.endswith("\r"):
        first = first[:-1]

    items: list[tuple[str, str]] = []
    for raw in lines[1:]:
        if raw.endswith("\r"):
            raw = raw[:-1]
        if not raw:
            continue
        if "\r" in raw:
            raise SipParseError("Bare CR in header")
        c = raw[0]
        if c == " " or c == "\t":
            if not items:
                raise SipParseError("Continuation line without header")
            cont = raw.strip(" \t")
            if cont:
                name, prev = items[-1]
                items[-1] = (name, f"{prev} {cont}" if prev else cont)
            continue
        name, sep, value = raw.partition(":")
        if not sep:
            raise SipParseError("Malformed header line")
        items.append((_parse_header_name(name), value.strip(" \t")))

    seen: dict[str, str] = {}
    for name, value in items:
        if name in _SINGLE:
            if name in seen:
                raise SipParseError(f"Multiple {name} headers")
            seen[name] = value
        elif name == "Via" and "Via" not in seen:
            seen["Via"] = value

    cl_text = seen.get("Content-Length")
    if cl_text is not None:
        if not cl_text.isascii() or not cl_text.isdigit() or len(cl_text) > 10:
            raise SipParseError("Invalid Content-Length")
        cl = int(cl_text)
        if cl > len(body):
            raise SipParseError("Content-Length larger than body")
        if cl < len(body):
            body = body[:cl]

    msg: Request | Response
    headers = Headers._trusted(items)
    if first[:4].upper() == "SIP/":
        parts = first.split(" ", 2)
        if parts[0].upper() != "SIP/2.0":
            raise SipParseError("Unsupported SIP version")
        if len(parts) < 2:
            raise SipParseError("Malformed Status-Line")
        code = parts[1]
        if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] not in "123456":
            raise SipParseError("Invalid status code")
        msg = Response(int(code), parts[2] if len(parts) == 3 else "", headers, body)
    else:
        parts = first.split(" ")
        if len(parts) != 3 or not all(parts):
            raise SipParseError("Malformed Request-Line")
        method, uri, version = parts
        if not _is_token(method):
            raise SipParseError("Invalid method")
        scheme = _SCHEME_RE.match(uri)
        if scheme is None or scheme.end() == len(uri):
            raise SipParseError("Invalid Request-URI")
        if version.upper() != "SIP/2.0":
            raise SipParseError("Unsupported SIP version")
        msg = Request(method, uri, headers, body)

    for name in _MANDATORY:
        if name not in seen:
            raise SipParseError(f"Missing {name}")
    if not seen["Call-ID"]:
        raise SipParseError("Invalid Call-ID")
    cseq = msg.cseq
    if isinstance(msg, Request) and cseq[1] != msg.method:
        raise SipParseError("CSeq method does not match request method")
    mf = seen.get("Max-Forwards")
    if mf is not None and (not mf.isascii() or not mf.isdigit() or len(mf) > 10 or int(mf) > 255):
        raise SipParseError("Invalid Max-Forwards")
    # Eagerly parse (and cache) what every consumer needs anyway: rejects bad messages early.
    try:
        msg.top_via  # noqa: B018
    except SipParseError:
        raise SipParseError("Invalid Via") from None
    try:
        msg.from_addr  # noqa: B018
    except SipParseError:
        raise SipParseError("Invalid From") from None
    try:
        msg.to_addr  # noqa: B018
    except SipParseError:
        raise SipParseError("Invalid To") from None
    return msg


# --------------------------------------------------------------------------- responses

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """Build a response to `request` per RFC 3261 8.2.6.2.

    Copies Via (all, in order), From, To (adding `;tag=to_tag` if To has none yet), Call-ID,
    CSeq, and Record-Route for 101-299 responses to INVITE; then the extra `headers`; then
    Content-Type when a body is given (`content_type`, default application/sdp, unless the
    extra headers already carry one). Content-Length is left to to_bytes()."""
    req_h = request.headers
    items: list[tuple[str, str]] = [("Via", v) for n, v in req_h._items if n == "Via"]
    if 101 <= status <= 299 and request.method == "INVITE":
        items.extend(("Record-Route", v) for n, v in req_h._items if n == "Record-Route")
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = req_h.get(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None and request.to_tag is None:
            value = f"{value};tag={to_tag}"
        items.append((name, value))
    resp_headers = Headers._trusted(items)
    for name, value in headers:
        resp_headers.add(name, value)
    if body and "Content-Type" not in resp_headers:
        resp_headers.add("Content-Type", content_type or "application/sdp")
    if reason is None:
        reason = REASON_PHRASES.get(status, "Unknown")
    return Response(status, reason, resp_headers, body)


# --------------------------------------------------------------------------- stream framing


def _stream_content_length(block: bytes) -> int:
    values: list[str] = []
    current: str | None = None
    for raw in block.decode("latin-1").split("\n")[1:]:
        if raw.endswith("\r"):
            raw = raw[:-1]
        if raw[:1] in (" ", "\t"):
            if current is not None:
                current = (current + " " + raw.strip(" \t")).strip()
            continue
        if current is not None:
            values.append(current)
            current = None
        name, sep, value = raw.partition(":")
        if sep and name.strip(" \t").lower() in ("content-length", "l"):
            current = value.strip(" \t")
    if current is not None:
        values.append(current)
    if not values:
        raise SipParseError("Missing Content-Length")
    if any(v != values[0] for v in values):
        raise SipParseError("Multiple Content-Length headers")
    text = values[0]
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise SipParseError("Invalid Content-Length")
    return int(text)


class StreamFramer:
    """Splits a stream transport's bytes (TCP) into raw SIP messages using Content-Length."""

    max_header_bytes: int = 65536
    max_body_bytes: int = 1 << 20

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for the end of the header block
        self._pending: tuple[int, int] | None = None  # (header block end, content length)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held (0 between messages)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete message now available (keep-alive CRLFs
        between messages are dropped). Raises SipParseError on an unframeable stream."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            if self._pending is None:
                skip = 0
                while skip < len(buf) and buf[skip] in (13, 10):
                    skip += 1
                if skip:
                    del buf[:skip]
                    self._scan = 0
                if not buf:
                    break
                m = _BLANK_LINE_RE.search(buf, self._scan)
                if m is None:
                    if len(buf) > self.max_header_bytes:
                        raise SipParseError("Header block too long")
                    self._scan = max(0, len(buf) - 3)
                    break
                if m.start() > self.max_header_bytes:
                    raise SipParseError("Header block too long")
                length = _stream_content_length(bytes(buf[: m.start()]))
                if length > self.max_body_bytes:
                    raise SipParseError("Body too large")
                self._pending = (m.end(), length)
            head_end, length = self._pending
            total = head_end + length
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._pending = None
            self._scan = 0
        return out


# --------------------------------------------------------------------------- identifiers


# appended (after a ".") to every branch and tag this process makes: with `--workers`, the
# worker's mark ("w<index>", see `confroom.sip.ownership`), so that a message that reaches
# another worker names its owner; "" in a single process
_owner_suffix = ""


def set_owner_mark(mark: str) -> None:
    """Make every later `new_branch` / `new_tag` end with `.<mark>` ("" for none)."""
    global _owner_suffix
    _owner_suffix = f".{mark}" if mark else ""


def new_branch() -> str:
    """A fresh RFC 3261 branch: magic cookie + 16 random URL-safe characters (+ owner mark)."""
    return "z9hG4bK" + secrets.token_urlsafe(12) + _owner_suffix


def new_tag() -> str:
    """A fresh From/To tag (10 random hex characters, + the owner mark)."""
    return secrets.token_hex(5) + _owner_suffix
