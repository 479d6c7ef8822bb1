"""Token-bucket rate limits keyed by caller, with an injected clock.

A limit ``"30/minute"`` is a bucket of 30 tokens refilled at 30 per minute: bursts up to
the limit, then a steady rate. Buckets live in memory, one set per replica (so a
deployment's effective limit is the per-replica limit times the replicas); at most
``max_keys`` buckets are kept, least recently used first out, so a flood of distinct keys
cannot grow memory without bound.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")


def parse_rate(spec: str) -> tuple[int, float]:
    """``"30/minute"`` -> (30 tokens, 60 seconds)."""
    match = _SPEC.match(spec)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"rate limit {spec!r} must look like '30/minute' (second|minute|hour)")
    return int(match.group(1)), _UNITS[match.group(2)]


def _checked(spec: str) -> str:
    parse_rate(spec)
    return spec


#: A setting that is a rate limit, refused at start unless it looks like ``30/minute``.
Rate = Annotated[str, AfterValidator(_checked)]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    remaining: int
    retry_after: float


class RateLimiter:
    def __init__(
        self,
        spec: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.capacity, period = parse_rate(spec)
        self._rate = self.capacity / period
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def hit(self, key: str) -> Verdict:
        """Take one token from ``key``'s bucket if there is one."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (float(self.capacity), now))
        tokens = min(self.capacity, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        retry_after = 0.0 if allowed else (1.0 - tokens) / self._rate
        return Verdict(allowed, math.floor(tokens), retry_after)
