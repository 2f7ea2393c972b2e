"""Thirty streams across every source and credential on three `sfmd run` hosts: each
connection held by exactly one host, every host telling the same story, and Twitter never
seeing two connections on one credential, before and during a takeover."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from sfmd.fake import FakeAPI
from tests.helpers.cluster import (
    Host,
    agreed_holders,
    all_streaming,
    cluster_of,
    holders,
    mastodon_tag,
    mixed_bodies,
    stop_all,
    twice_held,
)
from tests.helpers.waits import wait_until_async
from tests.system.cluster.conftest import StartHosts

DEADLINE = 30.0
#: 2 v1.1 credentials, 2 v2 apps, 10 Jetstream sockets, 2 Mastodon accounts.
SLOTS = 16


async def test_thirty_streams_each_connection_on_one_host_even_during_a_takeover(
    start_hosts: StartHosts, fake_api: FakeAPI
) -> None:
    fake_api.configure(rate=10, jetstream_rate=5, mastodon_rate=5,
                       mastodon_tags=[mastodon_tag(i) for i in range(10)])
    hosts = await start_hosts("host-a", "host-b", "host-c")
    bodies = mixed_bodies()
    assert len(bodies) == 30
    names = [b["name"] for b in bodies]
    for i, body in enumerate(bodies):  # through any host
        async with hosts[i % 3].api() as api:
            await api.ok("POST", "/streams", body, 201)

    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE,
                           "all 30 streams streaming, seen alike from the three hosts")
    agreed: dict[str, tuple[str, int]] = {}

    def agree(among: list[Host]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            nonlocal agreed
            agreed = await agreed_holders(among) or {}
            return bool(agreed)
        return check

    await wait_until_async(agree(hosts), DEADLINE, "GET /cluster alike from the three hosts")
    assert len(agreed) == SLOTS
    assert {host for host, _ in agreed.values()} == {"host-a", "host-b", "host-c"}
    assert twice_held(fake_api) == []

    # Takeover: host-c dies; its connections move to the two others, one holder each
    # throughout (GET /cluster, read all along, never lists a slot twice).
    a, b, c = hosts
    c.kill()
    killed = time.monotonic()

    async def taken_over() -> bool:
        for host in (a, b):
            holders(await cluster_of(host))  # asserts each slot listed once
        return await all_streaming([a, b], names)

    await wait_until_async(taken_over, DEADLINE, "every stream streaming on host-a or host-b")
    await wait_until_async(agree([a, b]), DEADLINE, "GET /cluster alike from the two left")
    print(f"takeover of host-c's connections: {time.monotonic() - killed:.1f} s after kill -9")
    assert len(agreed) == SLOTS
    assert {host for host, _ in agreed.values()} == {"host-a", "host-b"}
    await stop_all([a, b])
    assert twice_held(fake_api) == []
