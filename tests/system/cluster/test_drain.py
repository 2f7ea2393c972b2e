"""POST /cluster/drain moves a host's connections to the others (each released, so nobody
waits out a TTL, and never held twice); undoing it brings placement back as it was."""

from __future__ import annotations

import time

from sfmd.fake import FakeAPI
from tests.helpers.cluster import (
    agreed_holders,
    all_streaming,
    cluster_of,
    mastodon_tag,
    mixed_bodies,
    stop_all,
    twice_held,
)
from tests.helpers.logs import log_events
from tests.helpers.waits import wait_until_async
from tests.system.cluster.conftest import StartHosts

DEADLINE = 30.0


async def test_drain_moves_every_connection_away_and_undo_brings_them_back(
    start_hosts: StartHosts, fake_api: FakeAPI
) -> None:
    fake_api.configure(rate=10, jetstream_rate=5, mastodon_rate=5,
                       mastodon_tags=[mastodon_tag(i) for i in range(2)])
    a, b = hosts = await start_hosts("host-a", "host-b")
    bodies = mixed_bodies(v1=2, v2=2, jetstream=4, mastodon=2)
    names = [body["name"] for body in bodies]
    async with a.api() as api:
        for body in bodies:
            await api.ok("POST", "/streams", body, 201)
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming")
    placed: dict[str, str] = {}

    async def placement_is(wanted: dict[str, str] | None = None) -> bool:
        nonlocal placed
        agreed = await agreed_holders(hosts)
        if agreed is None:
            return False
        placed = {slot: host for slot, (host, _) in agreed.items()}
        return wanted is None or placed == wanted

    await wait_until_async(placement_is, DEADLINE, "GET /cluster alike")
    before = dict(placed)
    mine = {slot for slot, host in before.items() if host == "host-a"}
    assert mine and mine != set(before), before  # both hosts hold some

    async with b.api() as api:  # through the other host
        assert await api.ok("POST", "/cluster/drain", {"host": "host-a"}) == {
            "host": "host-a", "draining": True}
    drained = time.monotonic()
    everything_on_b = {slot: "host-b" for slot in before}
    await wait_until_async(lambda: placement_is(everything_on_b), DEADLINE,
                           "every connection on host-b")
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming")
    print(f"\ndrain moved {len(mine)} connections in {time.monotonic() - drained:.2f} s")
    report = await cluster_of(a)
    assert [(h["host"], h["draining"], h["connections"]) for h in report["hosts"]] == [
        ("host-a", True, 0), ("host-b", False, len(before))]
    released = {e["slot"] for e in log_events(a.home) if e["event"] == "lease_released"}
    assert mine <= released  # handed over, not left to expire
    assert twice_held(fake_api) == []

    async with a.api() as api:  # undone through the drained host itself
        assert await api.ok("POST", "/cluster/drain", {"host": "host-a", "undo": True}) == {
            "host": "host-a", "draining": False}
    await wait_until_async(lambda: placement_is(before), DEADLINE, "placement as before")
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming")
    assert not any(h["draining"] for h in (await cluster_of(b))["hosts"])

    async with a.api() as api:
        status, answer = await api.call("POST", "/cluster/drain", {"host": "host-z"})
        assert (status, answer["error"]) == (404, "not_found"), answer
        assert "host-a" in answer["message"] and "host-b" in answer["message"]
        status, answer = await api.call("POST", "/cluster/drain", {"host": 7})
        assert (status, answer["error"]) == (400, "bad_request"), answer
    await stop_all(hosts)
    assert twice_held(fake_api) == []
