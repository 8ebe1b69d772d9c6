"""Reconnect delays: exponential backoff with jitter, and HTTP Retry-After."""

from __future__ import annotations

import email.utils
import random
import time


class Backoff:
    """Delay before attempt ``n`` (``n`` failures in a row).

    ``ceiling(n) = min(cap, base * factor ** n)``; the delay is drawn
    uniformly from ``[ceiling / 2, ceiling]`` ("equal jitter"): relays never
    see a thundering herd after a restart, and a node never retries faster
    than half the schedule.  ``reset()`` after a connection stayed up.
    """

    def __init__(self, base: float = 0.5, cap: float = 30.0, factor: float = 2.0, rng=None):
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("backoff needs 0 < base <= cap and factor >= 1")
        self.base, self.cap, self.factor = float(base), float(cap), float(factor)
        self.failures = 0
        self.rng = rng or random.Random()

    def ceiling(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, 64)
        return min(self.cap, self.base * self.factor ** exponent)

    def next(self) -> float:
        """Record a failure and return how long to wait before the next attempt."""
        self.failures += 1
        top = self.ceiling(self.failures)
        return top / 2 + self.rng.random() * top / 2

    def reset(self) -> None:
        self.failures = 0


def retry_after(value, now: float | None = None, default: float = 60.0, cap: float = 900.0) -> float:
    """Seconds to wait from an HTTP Retry-After header (seconds or a date)."""
    if value is None or str(value).strip() == "":
        return default
    text = str(value).strip()
    if text.isdigit():
        return min(float(text), cap)
    try:
        when = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return default
    return min(max(0.0, when - (time.time() if now is None else now)), cap)
