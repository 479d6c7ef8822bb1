"""One token request, start to end: limit, authenticate, limit, decide, mint, count.

The per-IP limit applies before authentication, so guessing API keys is throttled too;
the per-caller limit applies after it. Every refusal is counted by reason; every answer,
refusal or not, tells the caller how many requests it has left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry import metrics, trace

from avatar_shared import semconv
from avatar_shared.telemetry import tally
from avatar_shared.web.auth import Authenticator
from avatar_shared.web.errors import ApiError
from avatar_shared.web.policy import Policy
from avatar_shared.web.ratelimit import RateLimiter
from avatar_token.minting import Minter
from avatar_token.sessions import Session, SessionRequest, decide

REMAINING_HEADER = "X-RateLimit-Remaining"


@dataclass(frozen=True)
class Issued:
    session: Session
    token: str
    expires_at: datetime
    remaining: int


class TokenIssuer:
    def __init__(
        self,
        policy: Policy,
        authenticator: Authenticator,
        minter: Minter,
        *,
        per_ip: RateLimiter,
        per_principal: RateLimiter,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._policy = policy
        self._auth = authenticator
        self._minter = minter
        self._per_ip = per_ip
        self._per_principal = per_principal
        meter = metrics.get_meter("avatar_token", meter_provider=meter_provider)
        self._minted = tally(meter, semconv.METRIC_TOKENS_MINTED, "LiveKit tokens minted")
        self._refused = tally(
            meter, semconv.METRIC_TOKENS_REFUSED, "Token requests refused, by reason"
        )

    async def issue(self, headers: Any, client_ip: str, request: SessionRequest) -> Issued:
        span = trace.get_current_span()
        span.set_attribute(semconv.AVATAR_ID, request.avatar_id)
        remaining = 0
        try:
            remaining = self._limit(self._per_ip, f"ip:{client_ip}")
            principal = await self._auth.authenticate(headers)
            span.set_attribute(semconv.PRINCIPAL_KIND, principal.kind)
            if principal.kind != "anonymous":  # anonymous callers share their IP's bucket
                key = f"{principal.kind}:{principal.id}"
                remaining = min(remaining, self._limit(self._per_principal, key))
            session = decide(self._policy, principal, request)
            token, expires_at = self._minter.mint(session)
        except ApiError as exc:
            exc.headers.setdefault(REMAINING_HEADER, str(remaining))
            self._refuse(exc.body.error)
            raise
        self._minted.add(1, {semconv.PRINCIPAL_KIND: principal.kind})
        return Issued(session, token, expires_at, remaining)

    @staticmethod
    def _limit(limiter: RateLimiter, key: str) -> int:
        verdict = limiter.hit(key)
        if verdict.allowed:
            return verdict.remaining
        raise ApiError(
            429,
            "rate_limited",
            "too many token requests; retry later",
            headers={
                "Retry-After": str(max(1, math.ceil(verdict.retry_after))),
                REMAINING_HEADER: "0",
            },
        )

    def _refuse(self, reason: str) -> None:
        self._refused.add(1, {semconv.REASON: reason})
        trace.get_current_span().set_attribute(semconv.OUTCOME, "refused")
