"""The one backoff rule every retry loop here uses."""

from __future__ import annotations

import random


def backoff(attempt: int, *, base: float, cap: float, jitter: float = 0.5) -> float:
    """Seconds to wait before retry ``attempt`` (counted from 0): ``base`` doubling up to
    ``cap``, then lowered by a random share of at most ``jitter`` of itself (0: exact,
    0.5: between half and all of it, 1: "full jitter"), so clients retrying together
    spread out."""
    ceiling = min(cap, base * 2.0**attempt)
    return ceiling * (1 - jitter * random.random())  # noqa: S311 (jitter, not secrets)
