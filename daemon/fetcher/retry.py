"""When to try again: exponential backoff with full jitter, and the server's Retry-After."""

from __future__ import annotations

import email.utils
import random
import time


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: a uniform draw in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return random.uniform(0.0, min(cap, base * (2**attempt)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
