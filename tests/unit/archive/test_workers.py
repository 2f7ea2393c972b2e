"""The archive's I/O threads (sfmd.archive.workers)."""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import pytest

from sfmd.archive import workers, writer
from sfmd.archive.workers import Workers
from tests.helpers.archive import wait_for


async def test_a_call_runs_on_a_worker_thread_and_answers_on_the_loop() -> None:
    pool = Workers(2, "test-answer")
    ran_on = await pool.run(threading.current_thread)
    assert ran_on is not threading.current_thread()
    assert ran_on.name.startswith("test-answer_")
    assert await pool.run(divmod, 7, 2) == (3, 1)


async def test_an_exception_reaches_the_caller_as_raised() -> None:
    pool = Workers(1, "test-raise")
    with pytest.raises(OSError, match="disk full"):
        await pool.run(_raise, OSError(28, "disk full"))
    assert await pool.run(len, "still works") == 11


async def test_a_call_cancelled_while_queued_never_runs() -> None:
    pool = Workers(1, "test-cancel")
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def block() -> None:
        started.set()
        release.wait(10)

    first = asyncio.create_task(pool.run(block))
    await wait_for(started.is_set, timeout=5)
    queued = asyncio.create_task(pool.run(ran.append, "queued"))
    await asyncio.sleep(0)  # the call is on the queue
    queued.cancel()
    after = asyncio.create_task(pool.run(ran.append, "after"))
    release.set()
    await first
    await after
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert ran == ["after"]


async def test_a_queued_call_holds_few_objects() -> None:
    """At a boundary of 5,000 streams a thousand publishes wait in the queue at once, and
    every object each one holds is walked by the next young collection. A task awaiting
    run_in_executor held 36 (measured the same way); awaiting `run`, 8."""
    pool = Workers(1, "test-objects")
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    first = asyncio.create_task(pool.run(block))
    await wait_for(started.is_set, timeout=5)
    gc.collect()
    before = len(gc.get_objects())
    calls = [asyncio.create_task(pool.run(len, "x")) for _ in range(500)]
    await asyncio.sleep(0)  # each task has run up to its wait
    per_call = (len(gc.get_objects()) - before) / len(calls)
    release.set()
    await first
    assert await asyncio.gather(*calls) == [1] * len(calls)
    assert per_call <= 10, per_call


async def test_the_archives_worker_threads_run_below_the_event_loop() -> None:
    """At a boundary the publishes take what CPU the loop leaves, not a share of its core."""
    loop_niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker_niceness = await writer._io(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    )
    assert worker_niceness == min(19, loop_niceness + workers.WORKER_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_niceness


def _raise(exc: BaseException) -> None:
    raise exc
