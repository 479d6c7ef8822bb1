"""One token request, start to end: limit, read, authenticate, limit, decide, mint, count.

The per-address limit applies before anything else, the request's body and the caller's
credentials included, so junk bodies and key guessing are throttled too; the per-caller
limit applies after authentication. Every refusal is counted by reason; every answer,
refusal or not, tells the caller how many requests it has left.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry import metrics, trace

from avatar_shared import semconv
from avatar_shared.telemetry import tally
from avatar_shared.web.auth import Authenticator
from avatar_shared.web.errors import ApiError
from avatar_shared.web.limits import REMAINING_HEADER, RequestLimits
from avatar_shared.web.policy import Policy
from avatar_token.minting import Minter
from avatar_token.sessions import Session, SessionRequest, decide


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
        limits: RequestLimits,
        *,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._policy = policy
        self._auth = authenticator
        self._minter = minter
        self._limits = limits
        meter = metrics.get_meter("avatar_token", meter_provider=meter_provider)
        self._minted = tally(meter, semconv.METRIC_TOKENS_MINTED, "LiveKit tokens minted")
        self._refused = tally(
            meter, semconv.METRIC_TOKENS_REFUSED, "Token requests refused, by reason"
        )

    async def issue(
        self,
        headers: Any,
        client_ip: str,
        read_request: Callable[[], Awaitable[SessionRequest]],
    ) -> Issued:
        """``read_request`` reads and validates the request (ApiError if it cannot); it
        runs once the caller's address is within its limit."""
        span = trace.get_current_span()
        remaining = 0
        try:
            remaining = self._limits.check_address(client_ip)
            request = await read_request()
            span.set_attribute(semconv.AVATAR_ID, request.avatar_id)
            principal = await self._auth.authenticate(headers)
            span.set_attribute(semconv.PRINCIPAL_KIND, principal.kind)
            remaining = self._limits.check_caller(principal, remaining)
            session = decide(self._policy, principal, request)
            token, expires_at = self._minter.mint(session)
        except ApiError as exc:
            exc.headers.setdefault(REMAINING_HEADER, str(remaining))
            self._refuse(exc.body.error)
            raise
        self._minted.add(1, {semconv.PRINCIPAL_KIND: principal.kind})
        return Issued(session, token, expires_at, remaining)

    def _refuse(self, reason: str) -> None:
        self._refused.add(1, {semconv.REASON: reason})
        trace.get_current_span().set_attribute(semconv.OUTCOME, "refused")
