"""`DigitCollector`: the DTMF half of the `gather` verb as a sans-IO state machine.

It is fed digits and the time (`feed`, `poll`) and answers either "done" (an `Outcome` with
the jambonz `reason` and the digits) or nothing yet, with the time it next needs to be polled
(`deadline`). No clock, no asyncio: `confroom.app.gather` drives it.

Rules (jambonz-feature-server's gather task is the reference):
- the overall `timeout` (seconds, default 15, 0 = none) runs from `start_timer()` (when the
  prompt has finished, or at once without a prompt) or from the first digit if that comes
  first; on expiry the gather ends with `dtmfDetected` if at least `minDigits` were collected,
  else `timeout`;
- `finishOnKey` ends it at once (the key is not part of the digits);
- `numDigits` / `maxDigits` digits end it at once;
- with `interDigitTimeout`, once at least `minDigits` digits are in, silence for that long ends
  it (and replaces the overall timeout).
`minDigits` defaults to 1 (jambonz leaves it unset, which makes a timeout never report the
digits collected so far).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT_S = 15.0
DTMF_SYMBOLS = frozenset("0123456789*#ABCD")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        return None
    return n if n == n and n not in (float("inf"), float("-inf")) and n >= 0 else None


def _count(value: Any) -> int | None:
    n = _number(value)
    return int(n) if n is not None and n >= 1 else None


@dataclass(frozen=True)
class DigitOptions:
    """The digit attributes of a `gather` verb, parsed."""

    num_digits: int | None = None
    min_digits: int = 1
    max_digits: int | None = None
    finish_on_key: str | None = None
    inter_digit_timeout: float = 0.0
    timeout: float = DEFAULT_TIMEOUT_S  # 0 = no overall timeout

    @classmethod
    def from_verb(cls, verb: Mapping[str, Any]) -> DigitOptions:
        timeout = _number(verb.get("timeout"))
        key = verb.get("finishOnKey")
        key = key.strip().upper()[:1] if isinstance(key, str) else ""
        num = _count(verb.get("numDigits"))
        return cls(
            num_digits=num,
            min_digits=_count(verb.get("minDigits")) or 1,
            max_digits=_count(verb.get("maxDigits")),
            finish_on_key=key if key in DTMF_SYMBOLS else None,
            inter_digit_timeout=_number(verb.get("interDigitTimeout")) or 0.0,
            timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
        )


@dataclass(frozen=True)
class Outcome:
    """How a gather ended: jambonz `reason` (dtmfDetected | timeout), the digits, and which
    rule ended it (`detail`: terminator | num-digits | inter-digit-timeout | timeout)."""

    reason: str
    digits: str
    detail: str


class DigitCollector:
    """See the module docstring."""

    def __init__(self, options: DigitOptions) -> None:
        self.options = options
        self.digits = ""
        self.outcome: Outcome | None = None
        self._timeout_at: float | None = None
        self._inter_digit_at: float | None = None

    @property
    def deadline(self) -> float | None:
        """When `poll` must next be called (None: no timer runs)."""
        if self.outcome is not None:
            return None
        return self._inter_digit_at if self._inter_digit_at is not None else self._timeout_at

    def start_timer(self, now: float) -> None:
        """Start (or restart) the overall timeout: listening starts now."""
        if self.outcome is None and self._inter_digit_at is None and self.options.timeout > 0:
            self._timeout_at = now + self.options.timeout

    def _finish(self, reason: str, detail: str) -> Outcome:
        self.outcome = Outcome(reason, self.digits, detail)
        self._timeout_at = self._inter_digit_at = None
        return self.outcome

    def feed(self, digit: str, now: float) -> Outcome | None:
        """One digit from the caller; the outcome if this digit ends the gather."""
        if self.outcome is not None:
            return self.outcome
        opts = self.options
        digit = digit.upper()
        if self._timeout_at is None:
            self.start_timer(now)
        self._inter_digit_at = None
        if opts.finish_on_key is not None and digit == opts.finish_on_key:
            return self._finish("dtmfDetected", "terminator")
        self.digits += digit
        n = len(self.digits)
        if n in (opts.num_digits, opts.max_digits):
            return self._finish("dtmfDetected", "num-digits")
        if opts.inter_digit_timeout > 0 and n >= opts.min_digits:
            self._inter_digit_at = now + opts.inter_digit_timeout
            self._timeout_at = None
        return None

    def poll(self, now: float) -> Outcome | None:
        """The outcome if a timer has expired by `now`."""
        if self.outcome is not None:
            return self.outcome
        if self._inter_digit_at is not None and now >= self._inter_digit_at:
            return self._finish("dtmfDetected", "inter-digit-timeout")
        if self._timeout_at is not None and now >= self._timeout_at:
            if self.digits and len(self.digits) >= self.options.min_digits:
                return self._finish("dtmfDetected", "timeout")
            return self._finish("timeout", "timeout")
        return None

    def stop_timer(self) -> None:
        """Suspend the overall timeout (speech is being recognised); `start_timer` resumes."""
        self._timeout_at = None
