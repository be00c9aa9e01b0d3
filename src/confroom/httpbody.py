"""Reading HTTP response bodies with a size cap (webhook answers, audio downloads).

`iter_body()` yields an aiohttp response's body in chunks and raises `BodyTooLarge` as soon as
the announced (Content-Length) or received size passes the cap, so an oversized answer costs
at most one chunk beyond the cap, never its whole size. The caller should then close the
response (`resp.close()`) so that the rest is not read either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import aiohttp

__all__ = ["CHUNK", "BodyTooLarge", "iter_body", "read_body"]

CHUNK: Final = 64 * 1024


class BodyTooLarge(Exception):
    """The body is (or announces it is) larger than the cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response larger than {limit} bytes")
        self.limit = limit


async def iter_body(resp: aiohttp.ClientResponse, max_bytes: int) -> AsyncIterator[bytes]:
    """The body of `resp` chunk by chunk; `BodyTooLarge` once it passes `max_bytes`."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise BodyTooLarge(max_bytes)
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(max_bytes)
        yield chunk


async def read_body(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body of `resp`, at most `max_bytes` of it (else `BodyTooLarge`)."""
    return b"".join([chunk async for chunk in iter_body(resp, max_bytes)])
