"""Twitter's published reconnect rules, as arithmetic with no clock and no I/O.

Three kinds of failure back off independently: network errors linearly, HTTP errors
exponentially, rate limiting (420/429) exponentially from a longer start. A connection that
streamed successfully resets all three, so one bad minute does not haunt the next day.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sfmd.config import TimingConfig


class Failure(enum.Enum):
    NETWORK = "network"  # refused, reset, timed out, stalled, cut mid-body
    HTTP = "http"  # any non-200 answer other than rate limiting
    RATE_LIMIT = "rate_limit"  # 420 Enhance Your Calm, 429 Too Many Requests


@dataclass(frozen=True)
class BackoffPolicy:
    tcp_step: float = 0.25
    tcp_max: float = 16.0
    http_start: float = 5.0
    http_max: float = 320.0
    ratelimit_start: float = 60.0
    ratelimit_max: float = 960.0
    # Not arithmetic but how retries are told: the same failure again within this many
    # seconds is summed up in one log line rather than logged each time (`ConnectionLife`).
    log_fold_interval: float = 60.0

    @classmethod
    def from_config(cls, timing: TimingConfig) -> BackoffPolicy:
        return cls(
            tcp_step=timing.tcp_backoff_step,
            tcp_max=timing.tcp_backoff_max,
            http_start=timing.http_backoff_start,
            http_max=timing.http_backoff_max,
            ratelimit_start=timing.ratelimit_backoff_start,
            ratelimit_max=timing.ratelimit_backoff_max,
            log_fold_interval=timing.log_fold_interval,
        )


class Backoff:
    """Counts consecutive failures of each kind and says how long to wait before the next try."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self._counts = {kind: 0 for kind in Failure}
        self.last_wait = 0.0  # what `failure` last answered: the status's next attempt

    def failure(self, kind: Failure) -> float:
        """Record one failure and return the wait in seconds before reconnecting."""
        self.last_wait = self._wait(kind)
        return self.last_wait

    def _wait(self, kind: Failure) -> float:
        self._counts[kind] += 1
        n = self._counts[kind]
        p = self.policy
        if kind is Failure.NETWORK:
            return min(p.tcp_step * n, p.tcp_max)
        doublings = min(n - 1, 32)  # past the cap anyway; keeps the float finite after years
        if kind is Failure.HTTP:
            return min(p.http_start * 2**doublings, p.http_max)
        return min(p.ratelimit_start * 2**doublings, p.ratelimit_max)

    def reset(self) -> None:
        """A healthy connection: the next failure starts from the bottom again."""
        for kind in self._counts:
            self._counts[kind] = 0

    def count(self, kind: Failure) -> int:
        return self._counts[kind]
