"""`Flag` behaves as `asyncio.Event` does where the archive uses it."""

from __future__ import annotations

import asyncio

import pytest

from sfmd.archive.flag import Flag
from tests.helpers.waits import wait_until


async def test_wait_returns_at_once_when_set_and_blocks_when_clear() -> None:
    flag = Flag()
    flag.set()
    await asyncio.wait_for(flag.wait(), 1)
    flag.clear()
    waiter = asyncio.create_task(flag.wait())
    await wait_until(lambda: bool(flag._waiters), timeout=1, what="the task waiting")
    assert not waiter.done()
    flag.set()
    await asyncio.wait_for(waiter, 1)


async def test_a_pulse_wakes_every_waiter_though_cleared_before_they_run() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await wait_until(lambda: len(flag._waiters or ()) == 3, timeout=1, what="three waiting")
    flag.set()
    flag.clear()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert not flag.is_set()


async def test_a_cancelled_waiter_is_forgotten() -> None:
    flag = Flag()
    waiter = asyncio.create_task(flag.wait())
    await wait_until(lambda: bool(flag._waiters), timeout=1, what="the task waiting")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await wait_until(lambda: not flag._waiters, timeout=1)
    flag.set()  # nobody left to wake: no error
