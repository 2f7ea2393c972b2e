"""Stopping a member's background work ends every task, even one that lost a cancel."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from sfmd.cluster.member import ClusterMember


def member() -> ClusterMember:
    """A member with nothing behind it: `stop_background` touches only its tasks."""
    config: Any = SimpleNamespace(cluster=SimpleNamespace(host_id="host-a"))
    none: Any = None
    return ClusterMember(config, none, none, none, none, none, none, none)


async def test_a_task_that_swallows_the_first_cancel_is_cancelled_again() -> None:
    """As a loop whose request returned although it was cancelled (Python 3.11's
    `asyncio.wait_for` when the reply and the cancel arrive together) goes on looping."""
    swallowed = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()

    m = member()
    task = asyncio.create_task(loop())
    m._tasks = [task]
    await asyncio.sleep(0)
    # Waited on from outside: a timeout that cancelled stop_background would also cancel
    # the task it awaits, and so hide the lost cancel.
    stopping = asyncio.create_task(m.stop_background())
    done, _ = await asyncio.wait([stopping], timeout=5)
    assert done, "stop_background still waits for a task that lost its cancel"
    assert swallowed.is_set()
    assert task.cancelled()
    assert m._tasks == []
