"""Two hosts changing the registry at the same moment: conflicting PATCHes to one stream
end with one winner (the other answered 409, or applied after it, on top of what it saw),
changes to two different streams both stay, and every host reads the same registry
afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

from sfmd.fake import FakeAPI
from tests.helpers.cluster import Host, stop_all, streams_of
from tests.helpers.waits import wait_until_async
from tests.system.cluster.conftest import StartHosts

DEADLINE = 20.0
ROUNDS = 12
COLLECTIONS = ["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.feed.repost",
               "app.bsky.graph.follow"]


def settings(listed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The registry as a host lists it: each stream's settings, without its status."""
    return {name: {k: v for k, v in s.items() if k not in ("status", "host")}
            for name, s in listed.items()}


async def patch(host: Host, name: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with host.api() as api:
        return await api.call("PATCH", f"/streams/{name}", body)


async def test_conflicting_patches_through_two_hosts_one_wins_and_all_read_alike(
    start_hosts: StartHosts, fake_api: FakeAPI
) -> None:
    fake_api.configure(jetstream_rate=5)
    a, b = await start_hosts("host-a", "host-b")
    async with a.api() as api:
        for name in ("shared", "mine-a", "mine-b"):
            await api.ok("POST", "/streams", {"name": name, "source": "bluesky",
                                              "kind": "jetstream",
                                              "collections": [COLLECTIONS[0]]}, 201)
    outcomes: list[tuple[int, int]] = []
    registries: list[dict[str, dict[str, Any]]] = []

    async def alike() -> bool:
        registries[:] = [settings(await streams_of(a)), settings(await streams_of(b))]
        return registries[0] == registries[1]

    for round_ in range(ROUNDS):
        want_a = [COLLECTIONS[(round_ + 1) % 4], f"a.round{round_}.x"]
        want_b = [COLLECTIONS[(round_ + 2) % 4], f"b.round{round_}.x"]
        (status_a, answer_a), (status_b, answer_b), (own_a, _), (own_b, _) = (
            await asyncio.gather(
                patch(a, "shared", {"collections": want_a}),
                patch(b, "shared", {"collections": want_b}),
                patch(a, "mine-a", {"collections": want_a}),
                patch(b, "mine-b", {"collections": want_b}),
            ))
        outcomes.append((status_a, status_b))
        # Changes to different streams both stay.
        assert (own_a, own_b) == (200, 200), round_
        # One stream: each answer is applied (200) or refused as raced (409), never lost.
        assert {status_a, status_b} <= {200, 409}, (answer_a, answer_b)
        assert 200 in (status_a, status_b), (answer_a, answer_b)
        if 409 in (status_a, status_b):
            refused = answer_a if status_a == 409 else answer_b
            assert refused["error"] == "conflict", refused
        applied = [w for s, w in ((status_a, want_a), (status_b, want_b)) if s == 200]
        await wait_until_async(alike, DEADLINE, f"both hosts reading one registry ({round_})")
        stored = registries[0]
        assert stored["shared"]["collections"] in applied, (
            round_, stored["shared"], outcomes[-1])
        assert stored["mine-a"]["collections"] == want_a
        assert stored["mine-b"]["collections"] == want_b
    print(f"\n(host-a, host-b) answers per round: {outcomes}")
    await stop_all([a, b])


async def test_a_stream_created_through_one_host_is_changed_through_another_at_once(
    start_hosts: StartHosts, fake_api: FakeAPI
) -> None:
    """No waiting for the other host's next poll: a change reads the registry first."""
    a, b = await start_hosts("host-a", "host-b", poll_interval=30)
    body = {"name": "new", "source": "bluesky", "kind": "jetstream",
            "collections": [COLLECTIONS[0]]}
    async with a.api() as api:
        await api.ok("POST", "/streams", body, 201)
    async with b.api() as api:
        changed = await api.ok("PATCH", "/streams/new", {"collections": [COLLECTIONS[1]]})
        assert changed["collections"] == [COLLECTIONS[1]]
        await api.ok("POST", "/streams/new/restart")
        await api.ok("DELETE", "/streams/new", status=204)
        await api.ok("PATCH", "/streams/new", {"collections": [COLLECTIONS[2]]}, 404)
