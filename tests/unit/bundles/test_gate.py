"""The upstream gate: no answer ZeroWeight can send leaves it closed for long, or broken."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from avatar_bundles.zeroweight import UpstreamGate

WALL = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def answer(status: int = 200, **headers: str) -> httpx.Response:
    """Header values as bytes on the wire (latin-1), as a server may send them."""
    raw = [(k.replace("_", "-").encode(), v.encode("latin-1")) for k, v in headers.items()]
    return httpx.Response(status, headers=raw)


def gate(clock: Clock, reserve: int = 5) -> UpstreamGate:
    return UpstreamGate(
        reserve, max_retry_after=300, max_backoff=60, clock=clock, wall_clock=lambda: WALL
    )


def http_date(seconds_from_now: float) -> str:
    moment = datetime.fromtimestamp(WALL, UTC) + timedelta(seconds=seconds_from_now)
    return format_datetime(moment, usegmt=True)


def test_open_while_plenty_remains() -> None:
    g = gate(Clock())
    g.observe(answer(X_RateLimit_Remaining="150"))
    assert g.wait_seconds() == 0


def test_closes_for_a_window_at_the_reserve() -> None:
    clock = Clock()
    g = gate(clock)
    g.observe(answer(X_RateLimit_Remaining="5"))
    assert g.wait_seconds() == pytest.approx(60)
    assert g.reason == "busy"
    clock.now = 60
    assert g.wait_seconds() == 0


@pytest.mark.parametrize(
    ("value", "closed_for"),
    [
        ("12", 12),
        (" 7 ", 7),
        ("0", 60),  # "retry at once" after a 429 is no reason to hammer: a window
        ("99999999999", 300),  # capped
        ("9" * 400, 300),  # too long to be a finite float: capped, not an OverflowError
        ("inf", 60),
        ("nan", 60),
        ("-5", 60),
        ("1e9", 60),
        ("²", 60),
        ("soon", 60),
        ("", 60),
        (http_date(30), 30),
        (http_date(-30), 60),  # in the past
        (http_date(10**7), 300),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 300),
        ("Mon, 99 Foo 2026 99:99:99 GMT", 60),
    ],
)
def test_a_429_closes_for_retry_after_within_bounds(value: str, closed_for: float) -> None:
    g = gate(Clock(), reserve=0)
    g.observe(answer(429, Retry_After=value))
    assert g.wait_seconds() == pytest.approx(closed_for, abs=1)


def test_no_value_leaves_it_broken() -> None:
    clock = Clock()
    g = gate(clock, reserve=0)
    for value in ("inf", "9" * 400, "nan", "-1", "Fri, 31 Dec 9999 23:59:59 GMT"):
        g.observe(answer(429, Retry_After=value))
    clock.now = 301
    assert g.wait_seconds() == 0
    g.observe(answer(200, X_RateLimit_Remaining="100"))
    assert g.wait_seconds() == 0


def test_failures_close_it_for_a_doubling_pause_and_success_resets() -> None:
    g = gate(Clock())
    assert [g.failed() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert g.reason == "failing"
    g.succeeded()
    assert g.failed() == 1


def test_a_longer_rate_limit_pause_outranks_a_failure_pause() -> None:
    g = gate(Clock(), reserve=0)
    g.observe(answer(429, Retry_After="120"))
    g.failed()
    assert g.wait_seconds() == pytest.approx(120)
    assert g.reason == "busy"


@pytest.mark.parametrize(
    ("remaining", "closed"),
    [
        ("9" * 5000, False),  # past Python's int() digit limit: plenty, not a ValueError
        ("0" * 5000 + "3", True),  # leading zeros: 3
        ("0" * 5000, True),
        ("150", False),
        ("²", False),
        ("-1", False),
    ],
)
def test_any_remaining_count_is_read_without_error(remaining: str, closed: bool) -> None:
    g = gate(Clock())
    g.observe(answer(X_RateLimit_Remaining=remaining))
    assert (g.wait_seconds() > 0) is closed
