"""Twitter's reconnect rules as arithmetic."""

from __future__ import annotations

import pytest

from sfmd.sources.backoff import Backoff, BackoffPolicy, Failure


def waits(backoff: Backoff, kind: Failure, n: int) -> list[float]:
    return [backoff.failure(kind) for _ in range(n)]


def test_twitter_defaults() -> None:
    b = Backoff(BackoffPolicy())
    assert waits(b, Failure.NETWORK, 3) == [0.25, 0.5, 0.75]
    assert waits(b, Failure.NETWORK, 100)[-1] == 16.0
    assert waits(b, Failure.HTTP, 8) == [5, 10, 20, 40, 80, 160, 320, 320]
    assert waits(b, Failure.RATE_LIMIT, 6) == [60, 120, 240, 480, 960, 960]


def test_kinds_count_apart_and_reset_clears_all() -> None:
    b = Backoff(BackoffPolicy())
    b.failure(Failure.HTTP)
    b.failure(Failure.HTTP)
    assert b.failure(Failure.NETWORK) == 0.25
    assert b.count(Failure.HTTP) == 2
    b.reset()
    assert b.failure(Failure.HTTP) == 5
    assert b.count(Failure.NETWORK) == 0


def test_configured_policy_and_years_of_failures() -> None:
    b = Backoff(BackoffPolicy(tcp_step=0.1, tcp_max=0.3, http_start=1, http_max=3))
    assert waits(b, Failure.NETWORK, 4) == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert waits(b, Failure.HTTP, 10_000)[-1] == 3  # no overflow after a very long outage
