"""A host frozen (SIGSTOP) for longer than `lease_ttl`, then thawed: its connections were
taken over meanwhile; once running again it writes nothing more for them (its files end
before the new owner's epoch began, as the manifests' host and epoch show), it does not
reconnect them over the new owner, and it rejoins the cluster."""

from __future__ import annotations

import json
import time
from typing import Any

from sfmd.fake import FakeAPI
from sfmd.fake.mount import ConnectionRecord
from tests.helpers.cluster import (
    Host,
    agreed_holders,
    all_streaming,
    cluster_of,
    connected,
    files_by_epoch,
    mastodon_tag,
    overlapping,
    stop_all,
    twice_held,
)
from tests.helpers.files import read_published
from tests.helpers.logs import log_events
from tests.helpers.waits import wait_until, wait_until_async
from tests.system.cluster.conftest import StartHosts

DEADLINE = 30.0
#: One collection per Jetstream stream, so the fake's log tells their sockets apart.
COLLECTIONS = ["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.feed.repost",
               "app.bsky.graph.follow"]


def bodies() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": f"sky-{i}", "source": "bluesky", "kind": "jetstream", "collections": [c]}
        for i, c in enumerate(COLLECTIONS)
    ]
    out += [{"name": f"md-{i}", "source": "mastodon", "kind": "hashtag",
             "tag": mastodon_tag(i), "credential": "fedi" if i % 2 == 0 else "fedi2"}
            for i in range(4)]
    return out


def slot_of(body: dict[str, Any]) -> str:
    if body["source"] == "bluesky":
        return f"bluesky.{body['name']}"
    return f"{body['credential']}.mastodon"


def sockets_of(api: FakeAPI, body: dict[str, Any]) -> list[ConnectionRecord]:
    """The stream's connection's sockets at the fake, oldest first."""
    if body["source"] == "bluesky":
        return [r for r in connected(api, "jetstream")
                if r.params.get("wantedCollections") == body["collections"][0]]
    return [r for r in connected(api, "mastodon/streaming")
            if r.credential == body["credential"]]


def stored(host: Host, name: str, epoch: int) -> list[dict[str, Any]]:
    """The messages `host` wrote for `name` under `epoch`, parsed."""
    out = []
    for entry in files_by_epoch(host, name).get(epoch, []):
        body = read_published(host.data, entry)
        out += [json.loads(line) for line in body.split(b"\n") if line]
    return out


async def test_a_frozen_host_writes_nothing_after_its_lease_and_does_not_reconnect(
    start_hosts: StartHosts, fake_api: FakeAPI
) -> None:
    fake_api.configure(jetstream_rate=40, mastodon_rate=10,
                       mastodon_tags=[mastodon_tag(i) for i in range(4)])
    hosts = await start_hosts("host-a", "host-b")
    names = [b["name"] for b in bodies()]
    async with hosts[0].api() as api:
        for body in bodies():
            await api.ok("POST", "/streams", body, 201)
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming")
    placed: dict[str, tuple[str, int]] = {}

    async def agree(among: list[Host]) -> bool:
        nonlocal placed
        placed = await agreed_holders(among) or {}
        return bool(placed)

    await wait_until_async(lambda: agree(hosts), DEADLINE, "GET /cluster alike")
    frozen, other = sorted(hosts, key=lambda h: placed["fedi.mastodon"][0] != h.host_id)
    lost = [b for b in bodies() if placed[slot_of(b)][0] == frozen.host_id]
    assert any(b["source"] == "bluesky" for b in lost), placed
    old_epoch = {slot_of(b): placed[slot_of(b)][1] for b in lost}
    await wait_until(lambda: all(sockets_of(fake_api, b)[-1].sent_count >= 20 for b in bodies()
                                 if b["source"] == "bluesky"),
                     DEADLINE, "20 events on every Jetstream socket")

    frozen.freeze()
    stopped, stopped_wall = time.monotonic(), time.time()
    await wait_until_async(lambda: all_streaming([other], names), DEADLINE,
                           "every stream streaming on the other host")
    await wait_until_async(lambda: agree([other]), DEADLINE, "the frozen host gone")
    new_epoch = {slot: placed[slot][1] for slot in old_epoch}
    assert all(placed[slot][0] == other.host_id for slot in old_epoch), placed
    assert all(new_epoch[s] > old_epoch[s] for s in old_epoch), (old_epoch, new_epoch)
    await wait_until(lambda: all(sockets_of(fake_api, b)[-1].sent_count >= 5 for b in lost),
                     DEADLINE, "the taken-over sockets carrying data")
    frozen.thaw()
    thawed = time.monotonic()
    print(f"\nfrozen for {thawed - stopped:.2f} s")

    async def rejoined() -> bool:
        for host in hosts:
            if {h["host"] for h in (await cluster_of(host))["hosts"]} != {"host-a", "host-b"}:
                return False
        return True

    await wait_until_async(rejoined, DEADLINE, "the thawed host listed again by both")
    await wait_until_async(lambda: agree(hosts), DEADLINE, "GET /cluster alike after")
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming after")
    await stop_all(hosts)

    frozen_sockets = []
    for body in lost:
        name, slot = body["name"], slot_of(body)
        sockets = sockets_of(fake_api, body)
        before = [r for r in sockets if r.opened < stopped]
        after = [r for r in sockets if r.opened > stopped]
        # The frozen host's socket (still open when it froze), the other host's one opened
        # while it was frozen, and after the thaw none that overlaps another (the thawed
        # host may get the slot back by placement, once the other host let it go).
        assert overlapping(before) == [] and overlapping(after) == [], name
        assert before[-1].closed is None or before[-1].closed > stopped, name
        assert after[0].opened < thawed, name
        frozen_sockets.append(before[-1].conn)
        # What the frozen host wrote under its old epoch was all sent before it froze.
        mine = stored(frozen, name, old_epoch[slot])
        assert mine, name
        if body["source"] == "bluesky":
            newest = max(m["time_us"] for m in mine)
            assert newest <= stopped_wall * 1e6, (name, newest - stopped_wall * 1e6)
        else:
            posted = {s["id"]: s["monotonic"] for s in fake_api.mastodon_posted()}
            ids = [json.loads(m["payload"])["id"] for m in mine if m.get("event") == "update"]
            assert max(posted[i] for i in ids) <= stopped, name
        # The other host wrote under its own, newer epoch; the thawed host, if it got the
        # slot back, under a newer one still.
        assert stored(other, name, new_epoch[slot]), name
        assert set(files_by_epoch(other, name)) == {new_epoch[slot]}, name
        later = set(files_by_epoch(frozen, name)) - {old_epoch[slot]}
        assert all(epoch > new_epoch[slot] for epoch in later), (name, later)
    assert twice_held(fake_api, allowed=frozen_sockets) == []
    # The thawed host's archives refused what its old sockets still delivered.
    fenced = [e for e in log_events(frozen.home) if e["event"] == "archive_fenced"]
    assert fenced, "the thawed host wrote on, or nothing reached it"
    assert {e["stream"] for e in fenced} <= {b["name"] for b in lost}
