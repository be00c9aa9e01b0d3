"""SIP digest authentication, client side (RFC 2617 as used by RFC 3261 22, RFC 8760).

This module owns parsing a `WWW-Authenticate` / `Proxy-Authenticate` challenge and computing the
matching `Authorization` / `Proxy-Authorization` value: algorithms MD5 and SHA-256 (and their
`-sess` variants), with `qop=auth` when the challenge offers it (RFC 2617 compatibility mode
otherwise). `auth-int` alone is refused: nothing here hashes bodies.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

__all__ = ["Challenge", "Credentials", "DigestError", "authorization", "parse_challenge"]

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class DigestError(ValueError):
    """A challenge we cannot answer (not Digest, unknown algorithm, no usable qop)."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"  # upper case: MD5, MD5-SESS, SHA-256, SHA-256-SESS
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def _params(text: str) -> dict[str, str]:
    """`a="x, y", b=z` -> {"a": "x, y", "b": "z"} (names lower-cased)."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        start = i
        while i < n and text[i] not in "=, \t":
            i += 1
        name = text[start:i].strip().lower()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "=":
            if name:
                out[name] = ""
            continue
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            buf: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            i += 1
            value = "".join(buf)
        else:
            start = i
            while i < n and text[i] != ",":
                i += 1
            value = text[start:i].strip()
        if name:
            out[name] = value
    return out


def parse_challenge(value: str) -> Challenge:
    """Parse one `Digest ...` challenge; raises DigestError."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authentication scheme {scheme!r}")
    p = _params(rest)
    if "realm" not in p or "nonce" not in p:
        raise DigestError("digest challenge without realm or nonce")
    algorithm = (p.get("algorithm") or "MD5").upper()
    if algorithm.removesuffix("-SESS") not in _HASHES:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
    if qop and "auth" not in qop:
        raise DigestError(f"unsupported qop {p['qop']!r} (only auth)")
    return Challenge(realm=p["realm"], nonce=p["nonce"], algorithm=algorithm, qop=qop,
                     opaque=p.get("opaque"), stale=p.get("stale", "").lower() == "true")


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(
    challenge: Challenge, creds: Credentials, method: str, uri: str, *, nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The credentials header value answering `challenge` for request `method uri`."""
    base = challenge.algorithm.removesuffix("-SESS")
    hfn = _HASHES[base]

    def h(s: str) -> str:
        return hfn(s.encode("utf-8")).hexdigest()

    cnonce = cnonce or secrets.token_hex(8)
    ha1 = h(f"{creds.username}:{challenge.realm}:{creds.password}")
    if challenge.algorithm.endswith("-SESS"):
        ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    parts = [f"username={_quote(creds.username)}", f"realm={_quote(challenge.realm)}",
             f"nonce={_quote(challenge.nonce)}", f"uri={_quote(uri)}"]
    if "auth" in challenge.qop:
        ncs = f"{nc:08x}"
        resp = h(f"{ha1}:{challenge.nonce}:{ncs}:{cnonce}:auth:{ha2}")
        parts += [f"response={_quote(resp)}", f"algorithm={challenge.algorithm}",
                  f"cnonce={_quote(cnonce)}", "qop=auth", f"nc={ncs}"]
    else:
        resp = h(f"{ha1}:{challenge.nonce}:{ha2}")
        parts += [f"response={_quote(resp)}", f"algorithm={challenge.algorithm}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)
