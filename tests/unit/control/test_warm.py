"""A page is moved on ahead only while it is asked for often, and a failing step stops no
other (sfmd.control.warm)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import structlog

from sfmd.control.warm import Warmer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def steps(
    done: list[str], *pages: str, after: tuple[int, asyncio.Event] | None = None
) -> dict[str, Callable[[], Awaitable[None]]]:
    """A step per page that writes its page down; `after` (n, event): set after n steps."""

    def step(page: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            done.append(page)
            if after is not None and len(done) >= after[0]:
                after[1].set()

        return run

    return {page: step(page) for page in pages}


async def test_a_page_is_warmed_only_within_the_window_after_it_was_asked_for() -> None:
    done: list[str] = []
    clock = Clock()
    warmer = Warmer(steps(done, "streams", "metrics"), interval=1, window=5, clock=clock)
    assert await warmer.tick() == [] and done == []  # nobody asked yet
    warmer.asked("metrics")
    clock.now += 5
    assert await warmer.tick() == ["metrics"]
    warmer.asked("streams")
    clock.now += 0.5
    assert await warmer.tick() == ["streams"]  # metrics: 5.5 s ago
    clock.now += 5
    assert await warmer.tick() == []
    assert done == ["metrics", "streams"]


async def test_a_failing_step_is_logged_once_and_the_others_still_run() -> None:
    done: list[str] = []
    clock = Clock()
    broken = {"now": True}

    async def sometimes() -> None:
        if broken["now"]:
            raise RuntimeError("kept columns out of step")

    warmer = Warmer({"streams": sometimes, **steps(done, "metrics")}, interval=1, window=5,
                    clock=clock)
    warmer.asked("streams")
    warmer.asked("metrics")
    with structlog.testing.capture_logs() as logs:
        assert await warmer.tick() == ["streams", "metrics"]
        assert await warmer.tick() == ["streams", "metrics"]  # failing still: not again
        broken["now"] = False
        await warmer.tick()
        broken["now"] = True
        await warmer.tick()  # failing anew after a step that worked: logged again
    assert done == ["metrics"] * 4
    failed = [line for line in logs if line["event"] == "warm_failed"]
    assert [line["page"] for line in failed] == ["streams", "streams"]
    assert failed[0]["error"] == "RuntimeError: kept columns out of step"


async def test_run_ticks_every_interval_until_cancelled() -> None:
    done: list[str] = []
    three = asyncio.Event()
    warmer = Warmer(steps(done, "streams", after=(3, three)), interval=0.001, window=3600)
    warmer.asked("streams")
    task = asyncio.create_task(warmer.run())
    try:
        async with asyncio.timeout(10):
            await three.wait()
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_request_for_the_page_being_warmed_stops_that_step_only() -> None:
    clock = Clock()
    started = {page: asyncio.Event() for page in ("streams", "metrics")}
    gone = {page: asyncio.Event() for page in started}
    stopped: list[str] = []

    def waiting(page: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            started[page].set()
            try:
                await asyncio.Event().wait()  # as long as nobody stops it
            except asyncio.CancelledError:
                stopped.append(page)
                gone[page].set()
                raise

        return run

    warmer = Warmer({page: waiting(page) for page in started}, interval=1, window=5,
                    clock=clock)
    warmer.asked("streams")
    warmer.asked("metrics")
    round_ = asyncio.create_task(warmer.tick())
    async with asyncio.timeout(10):
        await started["streams"].wait()
        warmer.asked("metrics")  # another page: the step goes on
        await asyncio.sleep(0)
        assert stopped == []
        warmer.asked("streams")
        await started["metrics"].wait()
        assert stopped == ["streams"]
        round_.cancel()  # the daemon stopping: the step under way stops with the round
        with pytest.raises(asyncio.CancelledError):
            await round_
        await gone["metrics"].wait()  # the step's own cancel comes a turn later
    assert stopped == ["streams", "metrics"]
