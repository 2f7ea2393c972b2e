"""How every connection's life is told: one line per change of state, the same failure
folded into a sum, and the status's outage, next attempt and reconnect counters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from sfmd.sources import life as life_module
from sfmd.sources.backoff import Backoff, BackoffPolicy, Failure
from sfmd.sources.life import ConnectionLife, let_go
from sfmd.status import State

REFUSED = "network error: refused"


class Quiet:
    """A sink that takes nothing: these tests drive the life's telling, not its data."""

    current_file = None
    error = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(life_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def connection(fold: float = 60.0) -> ConnectionLife:
    life = ConnectionLife("s1", Quiet())  # type: ignore[arg-type]
    life.backoff = Backoff(BackoffPolicy(tcp_step=2.0, log_fold_interval=fold))
    return life


def fail(life: ConnectionLife, reason: str = REFUSED) -> float:
    assert life.backoff is not None
    wait = life.backoff.failure(Failure.NETWORK)
    life._failed(reason, Failure.NETWORK.value, wait)
    return wait


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs]


def test_one_line_per_change_with_its_reason(logs: list[dict[str, Any]], clock: Clock) -> None:
    life = connection()
    life._attempting(url="http://x/filter.json")
    life._streaming(status=200)
    fail(life, "the server ended the stream")
    life._attempting()
    life._streaming(status=200)
    assert events(logs) == ["connecting", "connected", "disconnected", "connecting", "connected"]
    connecting, connected, disconnected, again, _ = logs
    assert connecting["state"] == "connecting" and connecting["reason"] == "started"
    assert connected["state"] == "streaming" and connected["status"] == 200
    assert disconnected["log_level"] == "warning" and disconnected["state"] == "backoff"
    assert disconnected["reason"] == "the server ended the stream"
    assert disconnected["failure"] == "network" and disconnected["wait"] == 2.0
    assert disconnected["next_attempt"].endswith("Z")
    assert again["reason"] == "retry"
    assert life.status.reconnects == 1 and life.status.reconnects_after_failure == 1


def test_the_same_failure_again_is_folded_into_one_sum(
    logs: list[dict[str, Any]], clock: Clock
) -> None:
    life = connection()
    life._attempting()
    fail(life)  # logged
    life._attempting()  # logged: the next failure may differ
    clock.now += 2
    fail(life)  # the same: counted
    for _ in range(10):
        life._attempting()  # not logged
        clock.now += 3
        fail(life)
    life._attempting()
    life._streaming(status=200)
    assert events(logs) == ["connecting", "disconnected", "connecting", "disconnected",
                            "connected"]
    total = logs[3]
    assert total["reason"] == REFUSED and total["repeated"] == 11 and total["attempts"] == 11
    assert total["over"] == 32.0 and "wait" not in total
    # Every attempt is in the log, shown or summed: 2 shown, 11 summed.
    assert life.status.reconnects == 12


def test_a_different_failure_ends_the_fold_and_is_told_at_once(
    logs: list[dict[str, Any]], clock: Clock
) -> None:
    life = connection()
    fail(life)
    fail(life)
    fail(life, "HTTP 503")
    assert events(logs) == ["disconnected", "disconnected", "disconnected"]
    assert [(e["reason"], e.get("repeated")) for e in logs] == [
        (REFUSED, None), (REFUSED, 1), ("HTTP 503", None)]


def test_a_long_outage_is_summed_up_once_per_fold_interval(
    logs: list[dict[str, Any]], clock: Clock
) -> None:
    life = connection(fold=60.0)
    for _ in range(40):  # 40 failures, 5 s apart: 200 s
        fail(life)
        clock.now += 5
    lines = [e for e in logs if e["event"] == "disconnected"]
    assert len(lines) == 4  # at 0 s, then once a minute with the sum of the minute
    assert [e.get("repeated") for e in lines] == [None, 11, 11, 11]
    assert all(e["wait"] for e in lines)  # each is a full line too


def test_a_stop_sums_up_what_was_folded(logs: list[dict[str, Any]], clock: Clock) -> None:
    life = connection()
    fail(life)
    fail(life)
    fail(life)
    life._stopped()
    assert [e.get("repeated") for e in logs] == [None, 2]
    assert life.status.state is State.STOPPED


def test_down_since_stays_across_retries_and_next_attempt_follows_the_wait(
    logs: list[dict[str, Any]], clock: Clock
) -> None:
    life = connection()
    life._attempting()
    life._streaming()
    assert life.status.down_since is None and life.status.next_attempt is None
    before = datetime.now(UTC)
    wait = fail(life)
    down = life.status.down_since
    assert down is not None and before <= down <= datetime.now(UTC)
    next_attempt = life.status.next_attempt
    assert next_attempt is not None
    assert abs((next_attempt - down) - timedelta(seconds=wait)) < timedelta(seconds=0.5)
    for _ in range(3):
        life._attempting()
        assert life.status.next_attempt is None  # trying now
        wait = fail(life)
    assert life.status.down_since == down  # the outage began at the first failure
    assert life.status.since > down  # the state itself changed at each retry
    assert life.status.next_attempt is not None and wait == 8.0
    shown = life.status.to_dict()
    assert shown["down_since"] == down.isoformat().replace("+00:00", "Z")
    assert shown["next_attempt"].endswith("Z")
    life._attempting()
    life._streaming()
    assert life.status.down_since is None and life.status.to_dict()["down_since"] is None


async def test_a_planned_restart_counts_apart_from_failures(
    logs: list[dict[str, Any]], clock: Clock
) -> None:
    class Scripted(ConnectionLife):
        """Each run: a first attempt, a failure, a retry that streams until stopped."""

        reading = asyncio.Event()

        async def run(self, delay: float = 0.0) -> None:
            try:
                self._attempting()
                self._streaming()
                fail(self)
                self._attempting()
                self._streaming()
                self.reading.set()
                await asyncio.Event().wait()
            finally:
                self._stopped()

        async def _interrupt(self) -> bool:
            return False

    life = Scripted("s1", Quiet())  # type: ignore[arg-type]
    life.backoff = Backoff(BackoffPolicy())
    life.start()
    for _ in range(3):
        await asyncio.wait_for(life.reading.wait(), 5)
        life.reading.clear()
        await life.restart(grace=1.0)
    await asyncio.wait_for(life.reading.wait(), 5)
    await life.stop(grace=1.0)
    # Four runs, each with one retry after a failure; three planned reconnects between.
    assert life.status.reconnects_planned == 3
    assert life.status.reconnects_after_failure == 4
    assert life.status.to_dict()["reconnects"] == 7
    assert "stream_state" not in events(logs)  # a restart logs no "stopped"
    reasons = [e["reason"] for e in logs if e["event"] == "connecting"]
    assert reasons.count("settings changed") == 3


def test_a_source_telling_its_own_way_still_gets_the_outage_and_next_attempt(
    logs: list[dict[str, Any]], clock: Clock
) -> None:
    life = connection()
    assert life.backoff is not None
    life.backoff.failure(Failure.NETWORK)
    life._set_state(State.BACKOFF, reason="refused", error="refused")
    assert life.status.down_since is not None and life.status.next_attempt is not None
    assert [(e["event"], e["state"]) for e in logs] == [("stream_state", "backoff")]


class Looping(ConnectionLife):
    """Counts its connection attempts; each one fails at once."""

    def __init__(self, sink: Any) -> None:
        super().__init__("s1", sink)
        self.attempts = 0

    async def _connect_and_read(self) -> tuple[Failure, str]:
        self.attempts += 1
        self.sink.fenced = True  # the lease is lost while this connection runs
        return Failure.NETWORK, REFUSED

    async def _wait_after(self, failure: Failure, reason: str) -> None:
        await asyncio.sleep(0)

    async def _interrupt(self) -> bool:
        return False


async def test_a_connection_whose_lease_is_gone_never_connects_again(
    logs: list[dict[str, Any]],
) -> None:
    sink = SimpleNamespace(current_file=None, error=None, fenced=False)
    life = Looping(sink)
    life.start()
    for _ in range(50):  # plenty of turns of the loop to reconnect in, were it allowed
        await asyncio.sleep(0)
    assert life.attempts == 1
    assert [e["event"] for e in logs].count("connection_fenced") == 1
    await life.stop(grace=1.0)
    assert life.task is None


def test_let_go_drops_the_tracebacks_of_an_exception_and_of_what_it_came_from() -> None:
    try:
        try:
            raise ValueError("the read failed")
        except ValueError as inner:
            raise RuntimeError("the connection ended") from inner
    except RuntimeError as e:
        ended = e
    cause = ended.__cause__
    assert cause is not None
    assert ended.__traceback__ is not None and cause.__traceback__ is not None
    let_go(ended)
    assert ended.__traceback__ is None and cause.__traceback__ is None
    assert str(ended) == "the connection ended"  # what the log and status say is kept
