"""One token request, start to end: limit, read, authenticate, limit, decide, admit
(session quotas), mint, count, audit.

The per-address limit applies before anything else, the request's body and the caller's
credentials included, so junk bodies and key guessing are throttled too; the per-caller
limit applies after authentication. Every refusal is counted by reason; every answer,
refusal or not, tells the caller how many requests it has left. Every token issued or
refused becomes an audit event (avatar_shared.audit), the token itself never.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from opentelemetry import metrics, trace

from avatar_shared import semconv
from avatar_shared.audit import AuditSettings, AuditTrail, TokenIssued, TokenRefused
from avatar_shared.telemetry import tally
from avatar_shared.web.auth import Authenticator
from avatar_shared.web.errors import ApiError
from avatar_shared.web.limits import REMAINING_HEADER, RequestLimits
from avatar_shared.web.policy import Policy
from avatar_token.minting import Minter
from avatar_token.sessions import Session, SessionRequest, decide

#: Granularity of a session's ``start_by`` (seconds).
START_BY_STEP = 10


class Admission(Protocol):
    async def admit(self, session: Session) -> None:
        """Take a slot for the session, or raise ApiError (429 past a quota)."""


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
        start_window: float = 120.0,
        admission: Admission | None = None,
        audit: AuditTrail | None = None,
        audit_settings: AuditSettings | None = None,
        clock: Callable[[], float] = time.time,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._policy = policy
        self._start_window = start_window
        self._clock = clock
        self._admission = admission
        self._audit = audit
        self._audit_settings = audit_settings or AuditSettings()
        self._auth = authenticator
        self._minter = minter
        self._limits = limits
        meter = metrics.get_meter("avatar_token", meter_provider=meter_provider)
        self._minted = tally(meter, semconv.METRIC_TOKENS_MINTED, "LiveKit tokens minted")
        self._refused = tally(
            meter, semconv.METRIC_TOKENS_REFUSED, "Token requests refused, by reason"
        )

    def _start_by(self) -> int:
        """The end of the start window, rounded up to :data:`START_BY_STEP` seconds: the
        dispatch metadata, and the room configuration claims built from it once per
        distinct value (:mod:`avatar_token.minting`), change once per step, not per token."""
        end = self._clock() + self._start_window
        return math.ceil(end / START_BY_STEP) * START_BY_STEP

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
        avatar_id: str | None = None
        who: str | None = None
        try:
            remaining = self._limits.check_address(client_ip)
            request = await read_request()
            avatar_id = request.avatar_id
            span.set_attribute(semconv.AVATAR_ID, request.avatar_id)
            principal = await self._auth.authenticate(headers)
            who = principal.ref
            span.set_attribute(semconv.PRINCIPAL_KIND, principal.kind)
            remaining = self._limits.check_caller(principal, remaining)
            session = decide(self._policy, principal, request, start_by=self._start_by())
            if self._admission is not None:
                await self._admission.admit(session)
            token, expires_at = self._minter.mint(session)
        except ApiError as exc:
            exc.headers.setdefault(REMAINING_HEADER, str(remaining))
            self._refuse(exc, who, avatar_id, client_ip)
            raise
        self._minted.add(1, {semconv.PRINCIPAL_KIND: principal.kind})
        if self._audit is not None:
            self._audit.record(
                TokenIssued(
                    principal=session.principal,
                    avatar_id=session.avatar_id,
                    room=session.room,
                    identity=session.identity,
                    name=session.name if self._audit_settings.record_names else None,
                    client_ip=self._address(client_ip),
                    ttl_seconds=session.ttl_seconds,
                )
            )
        return Issued(session, token, expires_at, remaining)

    def _address(self, client_ip: str) -> str | None:
        return client_ip[:64] if self._audit_settings.record_addresses else None

    def _refuse(
        self, exc: ApiError, principal: str | None, avatar_id: str | None, client_ip: str
    ) -> None:
        self._refused.add(1, {semconv.REASON: exc.body.error})
        trace.get_current_span().set_attribute(semconv.OUTCOME, "refused")
        if self._audit is not None:
            self._audit.record(
                TokenRefused(
                    principal=principal,
                    avatar_id=avatar_id,
                    status=exc.status,
                    reason=exc.body.error,
                    client_ip=self._address(client_ip),
                )
            )
