"""``Retry-After`` in both of its forms (seconds, or an HTTP date), capped at what the
caller honours, so no value a server sends can close a gate for ever."""

from __future__ import annotations

import math
from email.utils import parsedate_to_datetime


def retry_after_seconds(value: str | None, *, now: float, cap: float) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP-date), within
    ``[0, cap]``; None when absent or not a finite, valid value."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = min(cap, float(value))  # a very long number is inf: capped too
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(cap, max(0.0, seconds))
