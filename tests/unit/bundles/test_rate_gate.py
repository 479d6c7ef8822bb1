import httpx
import pytest

from avatar_bundles.sources import RateGate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def answer(status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_open_while_plenty_remains() -> None:
    gate = RateGate(reserve=5, clock=Clock())
    gate.observe(answer(X_RateLimit_Remaining="150"))
    assert gate.wait_seconds() == 0


def test_closes_for_a_window_at_the_reserve() -> None:
    clock = Clock()
    gate = RateGate(reserve=5, clock=clock)
    gate.observe(answer(X_RateLimit_Remaining="5"))
    assert gate.wait_seconds() == pytest.approx(60)
    clock.now = 60
    assert gate.wait_seconds() == 0


def test_429_closes_for_retry_after() -> None:
    clock = Clock()
    gate = RateGate(reserve=0, clock=clock)
    gate.observe(answer(429, Retry_After="12"))
    assert gate.wait_seconds() == pytest.approx(12)


@pytest.mark.parametrize("value", ["soon", "-5", ""])
def test_odd_retry_after_falls_back_to_a_window(value: str) -> None:
    gate = RateGate(reserve=0, clock=Clock())
    gate.observe(answer(429, Retry_After=value))
    assert gate.wait_seconds() == pytest.approx(60)
