import pytest
from pydantic import TypeAdapter, ValidationError

from avatar_shared.ratelimit import Rate, RateLimiter, parse_rate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bursts_up_to_the_limit_then_refills_steadily() -> None:
    clock = Clock()
    limiter = RateLimiter("3/minute", clock=clock)
    assert [limiter.hit("a").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.hit("a")
    assert refused.retry_after == pytest.approx(20.0)
    clock.now += 20.0
    assert limiter.hit("a").allowed
    assert not limiter.hit("a").allowed


def test_keys_are_independent() -> None:
    limiter = RateLimiter("1/second", clock=Clock())
    assert limiter.hit("a").allowed
    assert limiter.hit("b").allowed
    assert not limiter.hit("a").allowed


def test_remaining_counts_down() -> None:
    limiter = RateLimiter("3/hour", clock=Clock())
    assert [limiter.hit("k").remaining for _ in range(3)] == [2, 1, 0]


def test_memory_is_bounded_by_evicting_the_least_recent_key() -> None:
    limiter = RateLimiter("1/hour", clock=Clock(), max_keys=2)
    limiter.hit("a")
    limiter.hit("b")
    limiter.hit("c")  # evicts "a"
    assert limiter.hit("a").allowed
    assert not limiter.hit("c").allowed


@pytest.mark.parametrize("spec", ["", "10", "0/minute", "10/fortnight", "-1/second", "x/minute"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        parse_rate(spec)
    with pytest.raises(ValidationError, match="must look like"):  # as a setting, too
        TypeAdapter(Rate).validate_python(spec)
    assert TypeAdapter(Rate).validate_python("30/minute") == "30/minute"
