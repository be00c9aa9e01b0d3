"""`RateLimitedWarning`: a warning that an outsider can trigger at will (malformed SIP, bad
HTTP requests, refused tokens) is written at most once per interval, with the number left out
since; so a flood of bad input costs a line every few seconds, not one per packet."""

from __future__ import annotations

import logging

__all__ = ["RateLimitedWarning"]


class RateLimitedWarning:
    """Log a warning at most once per `interval` seconds, counting the ones left out."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, now: float, msg: str, *args: object) -> None:
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += f" ({self._suppressed} similar in the last {self.interval:g}s not logged)"
        self._suppressed = 0
        self._last = now
        self.logger.warning(msg, *args)
