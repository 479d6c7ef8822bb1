"""The audit trail's publisher: in order, batched, retried while NATS is away, bounded."""

from __future__ import annotations

import asyncio
import logging

import pytest

from avatar_shared.audit import (
    AuditTrail,
    SessionEnded,
    TokenIssued,
    TokenRefused,
    decode_audit,
    with_principal,
)


class FakeBus:
    def __init__(self, failures: int = 0) -> None:
        self.stored: list[str] = []
        self.failures = failures

    async def put(self, subject: str, body: bytes, *, msg_id: str = "", **_: object) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("NATS away")
        assert subject == "avatars.audit.v1.token_refused"
        self.stored.append(msg_id)


def refused(n: int) -> TokenRefused:
    return TokenRefused(status=429, reason="rate_limited", id=f"{n:032x}")


@pytest.mark.parametrize("failures", [0, 3])
async def test_events_are_stored_in_order_and_retried_until_nats_answers(failures: int) -> None:
    bus = FakeBus(failures=failures)
    trail = AuditTrail(bus)  # type: ignore[arg-type]
    trail.start()
    for n in range(600):
        trail.record(refused(n))
    await trail.aclose(flush_timeout=10)
    expected = [f"{n:032x}" for n in range(600)]
    assert sorted(bus.stored) == expected  # every one, once
    if not failures:
        assert bus.stored == expected


async def test_a_full_queue_drops_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    trail = AuditTrail(FakeBus(), max_queue=5)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        for n in range(50):
            trail.record(refused(n))
    dropped = trail._dropped.totals()  # the tally behind the metric
    assert sum(dropped.values()) >= 45
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1
    await trail.aclose(flush_timeout=0)


def test_no_credential_field_exists_and_bodies_round_trip() -> None:
    event = refused(1)
    assert decode_audit(event.model_dump_json().encode()) == event
    fields = {name for model in (TokenRefused,) for name in model.model_fields}
    assert not fields & {"token", "api_key", "authorization", "secret"}


def test_a_listed_session_names_the_principal_of_its_rooms_token() -> None:
    principals: dict[str, str] = {}
    issued = TokenIssued(
        principal="user:ann", room="r1", avatar_id="ava", identity="ann-1", ttl_seconds=60
    )
    assert with_principal(issued, principals) == issued
    ended = with_principal(SessionEnded(room="r1", reason="inactive"), principals)
    assert ended.principal == "user:ann"
    other = with_principal(SessionEnded(room="r2", reason="inactive"), principals)
    assert other.principal is None
    own = SessionEnded(room="r1", reason="inactive", principal="api_key:b")
    assert with_principal(own, principals).principal == "api_key:b"


async def test_events_in_flight_when_stopping_are_counted_not_lost_silently() -> None:
    class Stuck(FakeBus):
        async def put(self, subject: str, body: bytes, *, msg_id: str = "", **_: object) -> None:
            await asyncio.sleep(3600)

    trail = AuditTrail(Stuck())  # type: ignore[arg-type]
    trail.start()
    for n in range(10):
        trail.record(refused(n))
    await asyncio.sleep(0.05)  # the batch is in flight
    await trail.aclose(flush_timeout=0.1)
    assert sum(trail._dropped.totals().values()) == 10
