"""The backoff rule: doubling from base to a cap, randomised downward by the jitter share."""

from __future__ import annotations

import pytest

from avatar_shared.retry import backoff


@pytest.mark.parametrize("attempt", range(8))
@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_backoff_doubles_up_to_the_cap_and_jitters_down(attempt: int, jitter: float) -> None:
    ceiling = min(2.0, 0.1 * 2**attempt)
    for _ in range(50):
        delay = backoff(attempt, base=0.1, cap=2.0, jitter=jitter)
        assert ceiling * (1 - jitter) <= delay <= ceiling


def test_no_jitter_is_exact() -> None:
    assert [backoff(n, base=0.5, cap=10.0, jitter=0) for n in range(7)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
