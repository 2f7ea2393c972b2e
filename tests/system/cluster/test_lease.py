"""Leases against a real nats-server: one holder, takeover after the TTL, a holder that gives
up before anyone else can take over, and a NATS restart in the middle of a lease."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import KeyValueConfig

from sfmd.cluster.errors import ClusterError
from sfmd.cluster.lease import BUCKET, Lease, Leases
from tests.helpers.nats import NatsServer
from tests.helpers.waits import wait_until
from tests.system.cluster.conftest import Connect

TTL = 2.0


async def leases_of(host_client: Connect, host: str, ttl: float = TTL) -> Leases:
    return await Leases.open((await host_client(host)).jetstream(), host, ttl)


async def poll_acquire(leases: Leases, slot: str, timeout: float) -> tuple[Lease, float]:
    """Try to acquire until it succeeds (every 20 ms); the lease and the monotonic time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lease = await leases.acquire(slot)
        if lease is not None:
            return lease, time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{leases.host_id} could not acquire {slot} within {timeout} s")


async def test_two_hosts_racing_for_slots_get_exactly_one_holder_each(
    host_client: Connect,
) -> None:
    ttl = 30.0  # the leases are not renewed here: they must outlive a slow machine's checks
    a = await leases_of(host_client, "host-a", ttl)
    b = await leases_of(host_client, "host-b", ttl)
    slots = [f"cred-{i}" for i in range(20)]
    results = await asyncio.gather(
        *(holder.acquire(slot) for slot in slots for holder in (a, b))
    )
    for index, slot in enumerate(slots):
        got = [lease for lease in results[2 * index: 2 * index + 2] if lease is not None]
        assert len(got) == 1, f"{slot}: {got}"
        holder = await a.holder(slot)
        assert holder is not None
        assert (holder.host, holder.epoch) == (got[0].host, got[0].epoch)
    epochs = [lease.epoch for lease in results if lease is not None]
    assert len(set(epochs)) == len(epochs)  # every acquire a distinct epoch
    assert set(await b.holders()) == set(slots)


async def test_a_renewed_lease_stays_and_the_other_takes_over_within_the_ttl_after_it_stops(
    host_client: Connect,
) -> None:
    a, b = await leases_of(host_client, "host-a"), await leases_of(host_client, "host-b")
    held = await a.acquire("cred")
    assert held is not None
    held.start()
    # Renewed every TTL/3: for two TTLs nobody else gets it.
    until = time.monotonic() + 2 * TTL
    while time.monotonic() < until:
        assert await b.acquire("cred") is None
        assert held.valid()
        await asyncio.sleep(0.1)
    assert held.revision > held.epoch  # renewed by compare-and-set, the epoch unchanged
    # The holder dies: it stops renewing without releasing.
    assert held._task is not None
    held._task.cancel()
    last_sent = held.last_ok
    taken, at = await poll_acquire(b, "cred", timeout=TTL + 10)
    # Never before the TTL counted from the last renewal's send time; soon after it.
    assert at - last_sent >= TTL - 0.05
    assert at - last_sent <= TTL + 3.0, at - last_sent
    assert taken.epoch > held.epoch
    holder = await a.holder("cred")
    assert holder is not None and (holder.host, holder.epoch) == ("host-b", taken.epoch)


async def test_a_frozen_holder_knows_its_lease_is_lost_before_another_host_can_take_it(
    host_client: Connect,
) -> None:
    a, b = await leases_of(host_client, "host-a"), await leases_of(host_client, "host-b")
    lost_at: list[float] = []
    held = await a.acquire("cred", on_lost=lambda lease: lost_at.append(time.monotonic()))
    assert held is not None  # never renewed: as a host frozen right after acquiring
    taken, at = await poll_acquire(b, "cred", timeout=TTL + 10)
    assert not held.valid()
    assert held.deadline <= at - a.margin + 0.05  # invalid at least a margin before
    assert lost_at and lost_at[0] < at, (lost_at, at)
    assert at - lost_at[0] > 0.5 * a.margin, at - lost_at[0]
    assert held.lost_at is not None and held.lost_at <= lost_at[0]
    assert taken.epoch > held.epoch
    # Its renewal, once it runs again, is refused: the key is someone else's.
    assert not await held.renew()


async def test_a_lease_taken_behind_the_holders_back_is_lost_at_the_next_renewal(
    host_client: Connect,
) -> None:
    a, b = await leases_of(host_client, "host-a"), await leases_of(host_client, "host-b")
    held = await a.acquire("cred")
    assert held is not None
    await b.kv.purge(held.key)  # an operator's mistake, or a bucket emptied
    stolen = await b.acquire("cred")
    assert stolen is not None
    assert not await held.renew()
    assert held.lost_at is not None and not held.valid()


async def test_a_released_lease_is_free_at_once(host_client: Connect) -> None:
    a, b = await leases_of(host_client, "host-a"), await leases_of(host_client, "host-b")
    held = await a.acquire("cred")
    assert held is not None
    held.start()
    started = time.monotonic()
    await held.release()
    assert not held.valid()
    taken = await b.acquire("cred")
    assert taken is not None and time.monotonic() - started < TTL
    assert taken.epoch > held.epoch


async def test_nats_restarted_mid_lease_the_holder_reports_it_lost_then_takes_it_back(
    host_client: Connect, nats_server: NatsServer
) -> None:
    ttl = 6.0  # room to take the lease back before the key could expire
    a = await leases_of(host_client, "host-a", ttl)
    lost = asyncio.Event()
    held = await a.acquire("cred", on_lost=lambda lease: lost.set())
    assert held is not None
    held.start()
    await wait_until(lambda: held.revision > held.epoch, ttl, "a first renewal")
    await nats_server.stop()
    stopped = time.monotonic()
    await asyncio.wait_for(lost.wait(), ttl + 5)
    # Lost at its deadline, before the key could expire; never renewed meanwhile.
    assert held.lost_at is not None and held.lost_at - stopped < ttl - a.margin + 1.0
    assert held.lost_at < held.last_ok + ttl
    assert not held.valid()
    await nats_server.start()
    again, at = await poll_acquire(a, "cred", timeout=ttl + 15)
    # The key still held its own write: taken back by compare-and-set, not after the TTL.
    assert again.taken_back and at < held.last_ok + ttl, at - held.last_ok
    again.start()
    assert again.epoch > held.epoch
    await wait_until(lambda: again.revision > again.epoch, ttl, "a renewal after restart")
    holder = await a.holder("cred")
    assert holder is not None and (holder.host, holder.epoch) == ("host-a", again.epoch)
    assert again.valid()
    await again.release()


async def test_a_bucket_with_another_ttl_or_limit_markers_is_refused(
    host_client: Connect,
) -> None:
    client = await host_client("host-a")
    js = client.jetstream()
    await Leases.open(js, "host-a", TTL)
    with pytest.raises(ClusterError, match=r"keeps keys for 2 s but this host's lease_ttl is 5"):
        await Leases.open(js, "host-a", 5.0)
    await js.create_key_value(
        KeyValueConfig(bucket="marked", ttl=TTL, limit_marker_ttl=1.0)
    )
    with pytest.raises(ClusterError, match="limit markers on"):
        await Leases.open(js, "host-a", TTL, bucket="marked")
    assert BUCKET == "sfm_leases"
