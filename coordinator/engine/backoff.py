"""Retry backoff: exponential, capped, with equal jitter. Pure arithmetic.

The n-th failed attempt of a budget waits ``min(backoff * multiplier**(n-1), max_backoff)``,
of which the first half is fixed and the second half is scaled by ``random()``:
``delay/2 + random()*delay/2`` ("equal jitter"). Replicas that retry together thus spread
out, and no retry ever comes sooner than half the nominal delay.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from schemas.definition import RetryPolicy

__all__ = ["backoff_delay", "nominal_delay"]


def nominal_delay(policy: RetryPolicy, failed_attempts: int) -> float:
    """The capped delay in seconds, before jitter, after ``failed_attempts`` failures."""
    base = policy.backoff.total_seconds()
    cap = policy.max_backoff.total_seconds()
    exponent = max(failed_attempts, 1) - 1
    try:
        raw = base * policy.multiplier**exponent
    except OverflowError:
        raw = cap
    return max(0.0, min(raw, cap))


def backoff_delay(
    policy: RetryPolicy, failed_attempts: int, random: Callable[[], float]
) -> timedelta:
    """How long to wait before the next attempt, ``random()`` drawn once, in [0, 1)."""
    delay = nominal_delay(policy, failed_attempts)
    if delay == 0:
        return timedelta(0)
    return timedelta(seconds=delay / 2 + random() * delay / 2)
