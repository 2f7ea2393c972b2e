"""Heartbeats against a real nats-server: live hosts are listed, a dead one drops out by
itself after the TTL, a leaving one at once."""

from __future__ import annotations

import asyncio
import time

from sfmd.cluster.hosts import Hosts
from sfmd.cluster.placement import place
from tests.system.cluster.conftest import Connect

TTL = 2.0


async def test_live_hosts_are_listed_and_a_dead_one_drops_out_after_the_ttl(
    host_client: Connect,
) -> None:
    a = await Hosts.open((await host_client("host-a")).jetstream(), "host-a", TTL)
    b = await Hosts.open((await host_client("host-b.example")).jetstream(), "host-b.example", TTL)
    keeping = asyncio.create_task(a.keep())
    try:
        await b.beat()
        beaten = time.monotonic()
        live = await a.live()
        assert set(live) == {"host-a", "host-b.example"}
        assert live["host-b.example"].started == b.started
        assert live["host-b.example"].heartbeat.endswith("Z")
        # host-b beats no more; host-a goes on. host-b is gone after the TTL, not before.
        while "host-b.example" in await a.live():
            assert time.monotonic() - beaten < TTL + 5, "the dead host is still listed"
            await asyncio.sleep(0.05)
        assert time.monotonic() - beaten >= TTL - 0.05
        assert set(await b.live()) == {"host-a"}
    finally:
        keeping.cancel()


async def test_a_draining_host_stays_listed_and_a_leaving_one_goes_at_once(
    host_client: Connect,
) -> None:
    a = await Hosts.open((await host_client("host-a")).jetstream(), "host-a", TTL)
    b = await Hosts.open((await host_client("host-b")).jetstream(), "host-b", TTL)
    await a.beat()
    b.draining = True
    await b.beat()
    live = await a.live()
    assert live["host-b"].draining and not live["host-a"].draining
    # Placement is given the hosts that may hold connections: the draining one gets none.
    placed = place([f"cred-{i}" for i in range(30)], [h for h, i in live.items() if not i.draining])
    assert set(placed.values()) == {"host-a"}
    await b.leave()
    assert set(await a.live()) == {"host-a"}
