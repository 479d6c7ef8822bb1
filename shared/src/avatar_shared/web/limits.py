"""The request limits of the HTTP services: per client address, then per caller.

The address limit is checked first, before the request body is read or the caller
authenticated, so guessing credentials and sending junk cost the sender's own budget.
The caller limit follows authentication; anonymous callers have only their address's.
Every answer, refusals included, carries ``X-RateLimit-Remaining``: the smaller of the
two budgets left.
"""

from __future__ import annotations

import math

from avatar_shared.ratelimit import RateLimiter
from avatar_shared.web.clientip import rate_key
from avatar_shared.web.errors import ApiError
from avatar_shared.web.principal import Principal

REMAINING_HEADER = "X-RateLimit-Remaining"


def rate_limited(retry_after: float, what: str) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        f"too many {what}; retry later",
        headers={"Retry-After": str(max(1, math.ceil(retry_after))), REMAINING_HEADER: "0"},
    )


class RequestLimits:
    def __init__(self, per_ip: RateLimiter, per_principal: RateLimiter, *, what: str) -> None:
        """``what`` names the requests in the 429 message ("token requests")."""
        self._per_ip = per_ip
        self._per_principal = per_principal
        self._what = what

    def check_address(self, client_ip: str) -> int:
        """Charge the address's bucket; the requests it has left, or a 429 ApiError."""
        return self._take(self._per_ip, rate_key(client_ip))

    def check_caller(self, principal: Principal, remaining: int) -> int:
        """Charge an authenticated caller's bucket; the smaller budget left, or a 429."""
        if principal.kind == "anonymous":  # anonymous callers share their address's bucket
            return remaining
        return min(remaining, self._take(self._per_principal, f"{principal.kind}:{principal.id}"))

    def _take(self, limiter: RateLimiter, key: str) -> int:
        verdict = limiter.hit(key)
        if not verdict.allowed:
            raise rate_limited(verdict.retry_after, self._what)
        return verdict.remaining
