"""The member's background work stops even when a NATS call swallows its cancellation, as
nats-py does when the cancellation lands while it flushes a request or while
`asyncio.wait_for` gets the reply (the call completes and the task would go on)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from nats.js.errors import KeyNotFoundError

from sfmd.cluster.member import ClusterMember
from tests.helpers.waits import wait_until


class SwallowingKV:
    async def get(self, key: str) -> Any:
        raise KeyNotFoundError()


class SwallowingRegistry:
    """A registry whose reads swallow a cancellation, as nats-py's flush does."""

    def __init__(self) -> None:
        self.kv = SwallowingKV()
        self.reads = 0

    async def refresh(self) -> bool:
        self.reads += 1
        try:
            await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            pass
        return False

    def list(self) -> list[Any]:
        return []


class Hosts:
    draining = False

    async def live(self) -> dict[str, Any]:
        return {}


async def test_the_poll_stops_even_if_a_read_swallows_the_cancellation() -> None:
    config = SimpleNamespace(cluster=SimpleNamespace(host_id="h", poll_interval=0.0, lease_ttl=3.0))
    registry = SwallowingRegistry()
    member = ClusterMember(cast(Any, config), cast(Any, None), cast(Any, None),
                           cast(Any, Hosts()), cast(Any, None), cast(Any, registry),
                           cast(Any, None), cast(Any, None))

    async def reconcile() -> None:
        raise AssertionError("nothing changed: no pass")

    member._tasks.append(asyncio.create_task(member._poll(reconcile)))
    # The poll spends its time inside the read: a cancellation lands there.
    await wait_until(lambda: registry.reads >= 20, 5, "20 reads", interval=0.001)
    await asyncio.wait_for(member.stop_background(), 5)
    reads = registry.reads
    await asyncio.sleep(0.05)
    assert registry.reads == reads  # stopped for good


def member() -> ClusterMember:
    """A member with nothing behind it: `stop_background` touches only its tasks."""
    config: Any = SimpleNamespace(cluster=SimpleNamespace(host_id="host-a", lease_ttl=3.0))
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
