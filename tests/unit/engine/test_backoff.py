"""The backoff arithmetic on its own."""

from __future__ import annotations

from datetime import timedelta

from coordinator.engine.backoff import backoff_delay, nominal_delay
from schemas.definition import RetryPolicy


def test_nominal_delays_grow_and_cap() -> None:
    policy = RetryPolicy(
        backoff=timedelta(seconds=1), multiplier=2.0, max_backoff=timedelta(seconds=5)
    )
    assert [nominal_delay(policy, n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_huge_exponents_cap_instead_of_overflowing() -> None:
    policy = RetryPolicy(max_attempts=1000, multiplier=100.0, max_backoff=timedelta(hours=1))
    assert nominal_delay(policy, 999) == 3600


def test_equal_jitter_spans_half_to_the_whole_delay() -> None:
    policy = RetryPolicy(backoff=timedelta(seconds=4))
    assert backoff_delay(policy, 1, lambda: 0.0) == timedelta(seconds=2)
    assert backoff_delay(policy, 1, lambda: 0.5) == timedelta(seconds=3)


def test_a_zero_backoff_draws_nothing() -> None:
    policy = RetryPolicy(backoff=timedelta(0), max_backoff=timedelta(0))

    def never() -> float:
        raise AssertionError("random() must not be called")

    assert backoff_delay(policy, 3, never) == timedelta(0)
