"""NATS restarted under two hosts while streams are created through both: no change that was
acknowledged is lost, no connection is held twice, and everything streams again afterwards;
then NATS away long enough that every lease is lost: every host stops its connections, and
all resume when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from sfmd.fake import FakeAPI
from tests.helpers.cluster import (
    Host,
    agreed_holders,
    all_streaming,
    mastodon_tag,
    mixed_bodies,
    stop_all,
    streams_of,
    twice_held,
)
from tests.helpers.logs import log_events
from tests.helpers.nats import NatsServer
from tests.helpers.waits import wait_until, wait_until_async
from tests.system.cluster.conftest import StartHosts

DEADLINE = 30.0


class Load:
    """Streams created through the hosts in turn, one after another, until stopped: what
    each POST answered is kept."""

    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        self.answers: list[tuple[str, int, float]] = []  # (name, status, when it answered)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def acknowledged(self) -> list[str]:
        return [name for name, status, _ in self.answers if status == 201]

    def acknowledged_since(self, moment: float) -> int:
        return sum(status == 201 and at > moment for _, status, at in self.answers)

    async def _run(self) -> None:
        i = 0
        while True:
            host = self.hosts[i % len(self.hosts)]
            name = f"load-{i}"
            body = {"name": name, "source": "bluesky", "kind": "jetstream",
                    "collections": ["app.bsky.feed.post"]}
            async with host.api() as api:
                status, answer = await api.call("POST", "/streams", body)
            # Created, or NATS away (503: it may or may not be stored); nothing else.
            assert status in (201, 503), (name, status, answer)
            self.answers.append((name, status, time.monotonic()))
            i += 1
            await asyncio.sleep(0.05)  # paced: a person's script, not a flood


async def test_nats_restarted_under_load_loses_no_change_and_holds_nothing_twice(
    start_hosts: StartHosts, fake_api: FakeAPI, nats_server: NatsServer
) -> None:
    fake_api.configure(rate=10, jetstream_rate=5, mastodon_rate=5,
                       mastodon_tags=[mastodon_tag(i) for i in range(2)])
    hosts = await start_hosts("host-a", "host-b")
    bodies = mixed_bodies(v1=2, v2=2, jetstream=3, mastodon=2)
    async with hosts[0].api() as api:
        for body in bodies:
            await api.ok("POST", "/streams", body, 201)
    names = [b["name"] for b in bodies]
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming")

    load = Load(hosts)
    load.start()
    try:
        await wait_until(lambda: len(load.acknowledged()) >= 3, DEADLINE, "3 streams created")
        await nats_server.restart()
        restarted = time.monotonic()
        await wait_until(lambda: load.acknowledged_since(restarted) >= 3, DEADLINE,
                         "3 streams created after the restart")
    finally:
        await load.stop()
    print(f"\nPOST answers around the restart: {[s for _, s, _ in load.answers]}")
    await _all_back(hosts, names + load.acknowledged(), fake_api)

    # NATS away for longer than a lease can be kept: every host stops every connection
    # (none can know whether another took it over), and all resume once it is back.
    await nats_server.stop()
    await wait_until(lambda: all(_lost_every_lease(h) for h in hosts), DEADLINE,
                     "every host giving up its leases")
    await nats_server.start()
    await _all_back(hosts, names + load.acknowledged(), fake_api)
    await stop_all(hosts)
    assert twice_held(fake_api) == []


async def _all_back(hosts: list[Host], names: list[str], fake_api: FakeAPI) -> None:
    """Every stream acknowledged is in the registry that both hosts read alike, and
    streaming, each connection held once."""
    registries: list[dict[str, Any]] = []

    async def same_registry() -> bool:
        registries[:] = [await streams_of(h) for h in hosts]
        return set(registries[0]) == set(registries[1])

    await wait_until_async(same_registry, DEADLINE, "both hosts reading one registry")
    missing = set(names) - set(registries[0])
    assert not missing, f"acknowledged but lost: {sorted(missing)}"
    await wait_until_async(lambda: all_streaming(hosts, registries[0]), DEADLINE,
                           "every stream streaming again")
    await wait_until_async(lambda: _agree(hosts), DEADLINE, "GET /cluster alike")
    assert twice_held(fake_api) == []


async def _agree(hosts: list[Host]) -> bool:
    return await agreed_holders(hosts) is not None


def _lost_every_lease(host: Host) -> bool:
    """The host's log says each lease it held at the end was lost (none held now)."""
    held: set[str] = set()
    for event in log_events(host.home):
        if event["event"] in ("lease_acquired", "lease_taken_back"):
            held.add(event["slot"])
        elif event["event"] in ("lease_lost", "lease_released"):
            held.discard(event["slot"])
    return not held
