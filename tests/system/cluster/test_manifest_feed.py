"""The manifest feed from real hosts: a nats-py consumer on `SFM_MANIFEST` sees every
manifest line of every host, each once, on its host's and stream's subject, even for a
stream that moved from one host to the other."""

from __future__ import annotations

import json
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

from sfmd.cluster.feed import STREAM, subject_of
from sfmd.fake import FakeAPI
from tests.helpers.cluster import (
    Host,
    agreed_holders,
    all_streaming,
    mastodon_tag,
    mixed_bodies,
    stop_all,
)
from tests.helpers.files import manifest, manifest_lines
from tests.helpers.waits import wait_until, wait_until_async
from tests.system.cluster.conftest import Connect, StartHosts

DEADLINE = 30.0


def lines_of(host: Host, names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(subject, line) for every line of the host's manifests (files and spans with none)."""
    return [(subject_of(host.host_id, name), line)
            for name in names for line in manifest_lines(host.data, name)]


async def test_a_consumer_sees_every_hosts_manifest_lines_once(
    start_hosts: StartHosts, fake_api: FakeAPI, host_client: Connect
) -> None:
    fake_api.configure(jetstream_rate=20, mastodon_rate=5,
                       mastodon_tags=[mastodon_tag(i) for i in range(2)])
    hosts = await start_hosts("host-a", "host-b", settings={"save_interval": 1})
    a, b = hosts
    bodies = mixed_bodies(v1=0, v2=0, jetstream=4, mastodon=2)
    names = [body["name"] for body in bodies]
    async with a.api() as api:
        for body in bodies:
            await api.ok("POST", "/streams", body, 201)
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming")
    await wait_until(lambda: all(any(manifest(h.data, n) for n in names) for h in hosts),
                     DEADLINE, "files published on both hosts")
    # Move host-a's streams to host-b: their manifests then have lines on both hosts.
    published_on_a = {n for n in names if manifest(a.data, n)}
    async with b.api() as api:
        await api.ok("POST", "/cluster/drain", {"host": "host-a"})

    async def all_on_b() -> bool:
        agreed = await agreed_holders(hosts)
        return agreed is not None and {h for h, _ in agreed.values()} == {"host-b"}

    await wait_until_async(all_on_b, DEADLINE, "every connection on host-b")
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming")
    await wait_until(lambda: any(manifest(b.data, n) for n in published_on_a), DEADLINE,
                     "a file on host-b of a stream that had files on host-a")
    await stop_all(hosts)

    consumer = (await host_client("catalogue")).jetstream()
    sub = await consumer.pull_subscribe(
        "sfm.manifest.>", durable="catalogue", stream=STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    got: list[tuple[str, dict[str, Any]]] = []
    while True:
        try:
            messages = await sub.fetch(100, timeout=1)
        except TimeoutError:
            break
        for message in messages:
            got.append((message.subject, json.loads(message.data)))
            await message.ack()
    written = lines_of(a, names) + lines_of(b, names)
    print(f"\nmanifest lines: {len(lines_of(a, names))} on host-a, "
          f"{len(lines_of(b, names))} on host-b; on the feed: {len(got)}")
    key = json.dumps
    assert sorted(map(key, got)) == sorted(map(key, written))  # each once
    moved = {name for name in names if manifest(a.data, name) and manifest(b.data, name)}
    assert moved, "no stream wrote files on both hosts"
    for subject, line in got:
        assert subject.split(".")[2] == line["provenance"]["host"]
