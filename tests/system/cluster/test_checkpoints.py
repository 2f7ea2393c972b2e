"""Resume points against a real nats-server: saved under a lease, read by the next holder,
and a stale holder's write refused."""

from __future__ import annotations

import asyncio
import time

import pytest

from sfmd.cluster.checkpoints import Checkpoints
from sfmd.cluster.errors import StaleEpoch
from sfmd.cluster.lease import Lease, Leases
from tests.system.cluster.conftest import Connect

TTL = 2.0


async def take(leases: Leases, slot: str) -> Lease:
    deadline = time.monotonic() + TTL + 10
    while time.monotonic() < deadline:
        lease = await leases.acquire(slot)
        if lease is not None:
            return lease
        await asyncio.sleep(0.02)
    raise AssertionError(f"{slot} not acquired")


async def test_the_next_holder_resumes_from_the_point_and_a_stale_holder_is_refused(
    host_client: Connect,
) -> None:
    ca, cb = await host_client("host-a"), await host_client("host-b")
    la, lb = (await Leases.open(ca.jetstream(), "host-a", TTL),
              await Leases.open(cb.jetstream(), "host-b", TTL))
    pa, pb = await Checkpoints.open(ca.jetstream()), await Checkpoints.open(cb.jetstream())
    old = await la.acquire("bluesky.feed")
    assert old is not None
    old.start()  # renewed while it writes, however slow the machine
    assert await pb.get("feed") is None
    await pa.put("feed", "1700000000000001", old)
    await pa.put("feed", "1700000000000002", old)
    # host-a freezes (renews no more); host-b takes the connection over and reads where it
    # left off.
    assert old._task is not None
    old._task.cancel()
    new = await take(lb, "bluesky.feed")
    point = await pb.get("feed")
    assert point is not None
    assert (point.point, point.host, point.epoch) == ("1700000000000002", "host-a", old.epoch)
    new.start()
    saved = await pb.put("feed", "1700000000000009", new)
    assert saved.epoch == new.epoch > old.epoch
    # host-a wakes: its lease is invalid, so it does not even try...
    with pytest.raises(StaleEpoch, match="no longer this host's"):
        await pa.put("feed", "1700000000000003", old)

    # ...and a holder that has not noticed yet (still "valid" by its clock) is refused by
    # the epoch stored with the point.
    class Unaware:
        slot, epoch, host = old.slot, old.epoch, old.host

        def valid(self) -> bool:
            return True

    with pytest.raises(StaleEpoch, match=f"newer than this host's epoch {old.epoch}"):
        await pa.put("feed", "1700000000000003", Unaware())
    final = await pa.get("feed")
    assert final is not None and (final.point, final.host) == ("1700000000000009", "host-b")
    await new.release()


async def test_a_stream_moved_to_another_slot_is_written_under_the_new_one(
    host_client: Connect,
) -> None:
    client = await host_client("host-a")
    leases = await Leases.open(client.jetstream(), "host-a", TTL)
    points = await Checkpoints.open(client.jetstream())
    new_slot = await leases.acquire("cred-new.mastodon")
    old_slot = await leases.acquire("cred-old.mastodon")
    assert new_slot is not None and old_slot is not None
    assert old_slot.epoch > new_slot.epoch
    new_slot.start()
    old_slot.start()
    await points.put("tag", "111", old_slot)
    # The stream's credential changed: its new connection's lease has a lower epoch, which
    # does not matter across slots.
    saved = await points.put("tag", "112", new_slot)
    assert saved.slot == "cred-new.mastodon"
    await points.forget("tag")
    assert await points.get("tag") is None
    await new_slot.release()
    await old_slot.release()


async def test_concurrent_writers_under_one_lease_leave_one_of_their_points(
    host_client: Connect,
) -> None:
    client = await host_client("host-a")
    leases = await Leases.open(client.jetstream(), "host-a", TTL)
    points = await Checkpoints.open(client.jetstream())
    lease = await leases.acquire("bluesky.feed")
    assert lease is not None
    lease.start()
    await asyncio.gather(*(points.put("feed", str(n), lease) for n in range(4)))
    final = await points.get("feed")
    assert final is not None and final.point in {"0", "1", "2", "3"}
    await lease.release()


async def test_a_holders_next_point_is_one_compare_and_set_without_a_read(
    host_client: Connect,
) -> None:
    client = await host_client("host-a")
    leases = await Leases.open(client.jetstream(), "host-a", TTL)
    points = await Checkpoints.open(client.jetstream())
    lease = await leases.acquire("bluesky.feed")
    assert lease is not None
    lease.start()
    await points.put("feed", "1", lease)

    async def no_read(stream: str) -> None:
        raise AssertionError("the key was read again although nobody else wrote it")

    reads = points.get
    points.get = no_read  # type: ignore[method-assign]
    try:
        saved = await points.put("feed", "2", lease)
    finally:
        points.get = reads  # type: ignore[method-assign]
    assert saved.point == "2"
    final = await points.get("feed")
    assert final is not None and (final.point, final.revision) == ("2", saved.revision)
    await lease.release()
