"""`kill -9` of a host: the connections it held stream again on the other host within
`lease_ttl` + 5 s, and Jetstream and Mastodon streams lose nothing across the takeover:
what both hosts' data dirs hold covers everything the fake sent or posted meanwhile, with
duplicates only inside the checkpoint window (counted)."""

from __future__ import annotations

import json
import time
from typing import Any

from sfmd.cluster.placement import owner
from sfmd.fake import FakeAPI
from tests.helpers.cluster import (
    FAST_CLUSTER,
    Host,
    agreed_holders,
    all_streaming,
    connected,
    mastodon_tag,
    mixed_bodies,
    stop_all,
    streams_of,
    twice_held,
)
from tests.helpers.files import messages_everywhere
from tests.helpers.waits import wait_until, wait_until_async
from tests.system.cluster.conftest import StartHosts

DEADLINE = 30.0
#: The daemon's resume settings in these tests (`write_daemon_config`'s): a Jetstream
#: replay reaches `rewind` s before its resume point; a Mastodon fill `fill_overlap` s.
REWIND = 2.0
FILL_OVERLAP = 2.0
#: What a takeover may store twice: the replay's reach before the saved point, plus what
#: came between the last checkpoint and the kill (a checkpoint interval, a flush interval,
#: and a second for a loaded machine).
DUPLICATE_WINDOW = max(REWIND, FILL_OVERLAP) + FAST_CLUSTER["checkpoint_interval"] + 0.2 + 1.0


def time_us(line: bytes) -> int:
    return int(json.loads(line)["time_us"])


def status_ids(lines: list[bytes]) -> list[str]:
    """The ids of the statuses in a Mastodon stream's stored lines (live or filled)."""
    out = []
    for line in lines:
        frame = json.loads(line)
        if frame.get("event") == "update":
            out.append(json.loads(frame["payload"])["id"])
    return out


def posted_before_close(api: FakeAPI, conn: int) -> float:
    """The monotonic time of the newest status socket `conn` carried: everything posted on
    its timelines until then was sent on it."""
    sent = {json.loads(json.loads(m)["payload"])["id"] for m in api.sent_messages(conn)
            if b'"update"' in m}
    return max(s["monotonic"] for s in api.mastodon_posted() if s["id"] in sent)


async def test_kill_9_moves_the_connections_within_the_ttl_and_loses_nothing(
    start_hosts: StartHosts, fake_api: FakeAPI
) -> None:
    tags = [mastodon_tag(i) for i in range(4)]
    fake_api.configure(rate=10, jetstream_rate=20, mastodon_rate=10, mastodon_tags=tags)
    hosts = await start_hosts("host-a", "host-b")
    bodies = mixed_bodies(v2=0, jetstream=4, mastodon=4)
    names = [b["name"] for b in bodies]
    async with hosts[0].api() as api:
        for body in bodies:
            await api.ok("POST", "/streams", body, 201)
    await wait_until_async(lambda: all_streaming(hosts, names), DEADLINE, "all streaming")
    since = time.monotonic()  # every Mastodon tag subscribed: all posted from now is owed
    placed: dict[str, tuple[str, int]] = {}

    async def agree() -> bool:
        nonlocal placed
        placed = await agreed_holders(hosts) or {}
        return bool(placed)

    await wait_until_async(agree, DEADLINE, "GET /cluster alike from both hosts")
    # The victim: the host of a Mastodon account (it holds Jetstream sockets too).
    victim, survivor = sorted(hosts, key=lambda h: placed["fedi.mastodon"][0] != h.host_id)
    lost = {s for s, (holder, _) in placed.items() if holder == victim.host_id}
    assert any(s.startswith("bluesky.") for s in lost), placed
    lost_streams = [b["name"] for b in bodies if _slot(b) in lost]

    # Let the victim store and checkpoint a while: 40 events on each Jetstream socket.
    await wait_until(lambda: all(r.sent_count >= 40 for r in connected(fake_api, "jetstream")
                                 if r.closed is None),
                     DEADLINE, "40 events on every open Jetstream socket")
    victim.kill()
    killed, killed_wall = time.monotonic(), time.time()
    await wait_until_async(lambda: all_streaming([survivor], names), DEADLINE,
                           "every stream streaming on the survivor")
    took = time.monotonic() - killed
    print(f"\ntakeover after kill -9: {took:.2f} s (lease_ttl {FAST_CLUSTER['lease_ttl']} s)")
    assert took <= FAST_CLUSTER["lease_ttl"] + 5

    # Stream on a while after the takeover, then stop cleanly: every file published.
    def after_kill(endpoint: str) -> list[Any]:
        return [r for r in connected(fake_api, endpoint) if r.opened > killed]

    # (A Jetstream socket replays the downtime at once; a Mastodon socket streams live.)
    accounts = {s for s in lost if s.endswith(".mastodon")}
    await wait_until(lambda: sum(r.sent_count >= 10 for r in after_kill("mastodon/streaming"))
                     == len(accounts), DEADLINE, "10 statuses on each account taken over")
    await stop_all([survivor])
    assert twice_held(fake_api) == []

    duplicates: dict[str, int] = {}
    for name in names:
        if name.startswith("sky-"):
            duplicates[name] = _check_jetstream(fake_api, hosts, name, killed_wall)
        elif name.startswith("md-"):
            duplicates[name] = _check_mastodon(fake_api, hosts, name, since, killed)
    print(f"stored twice across the takeover (lost: {sorted(lost_streams)}): {duplicates}")
    for name, count in duplicates.items():
        if name not in lost_streams:
            assert count == 0, (name, count)


def _slot(body: dict[str, Any]) -> str:
    if body.get("source") == "bluesky":
        return f"bluesky.{body['name']}"
    if body.get("source") == "mastodon":
        return f"{body['credential']}.mastodon"
    return str(body["credential"])


def _check_jetstream(api: FakeAPI, hosts: list[Host], name: str, killed_wall: float) -> int:
    """Every event the instance produced from the first stored to the last is stored by one
    host or the other; events stored twice lie in the checkpoint window before the kill.
    Returns how many were stored twice."""
    per_host = [messages_everywhere(h.data, name) for h in hosts]
    for lines in per_host:
        assert len(lines) == len(set(lines)), f"{name}: one host stored an event twice"
    union = [line for lines in per_host for line in lines]
    times = sorted(map(time_us, union))
    assert times[-1] > killed_wall * 1e6, f"{name}: nothing stored after the kill"
    produced = {e.text for e in api.jetstream_events(times[0], times[-1])}
    missing = produced - set(union)
    assert not missing, f"{name}: {len(missing)} events produced but stored by neither host"
    twice = [time_us(line) for line in set(per_host[0]) & set(per_host[1])]
    if twice:
        earliest = (killed_wall - DUPLICATE_WINDOW) * 1e6
        assert earliest <= min(twice) and max(twice) <= killed_wall * 1e6, (
            f"{name}: events stored twice from {min(twice)} to {max(twice)}, not within "
            f"{DUPLICATE_WINDOW} s before the kill at {killed_wall * 1e6:.0f}")
    return len(twice)


def _check_mastodon(api: FakeAPI, hosts: list[Host], name: str, since: float,
                    killed: float) -> int:
    """Every status posted on the stream's tag from `since` until its account's last socket
    closed is stored by one host or the other; those stored by both were posted in the
    checkpoint window before the kill. Returns how many were stored twice."""
    [body] = [b for b in mixed_bodies(v2=0, jetstream=4, mastodon=4) if b["name"] == name]
    timeline = ["hashtag", body["tag"]]
    per_host = [status_ids(messages_everywhere(h.data, name)) for h in hosts]
    for ids in per_host:
        assert len(ids) == len(set(ids)), f"{name}: one host stored a status twice"
    stored = set(per_host[0]) | set(per_host[1])
    last_socket = [r for r in connected(api, "mastodon/streaming")
                   if r.credential == body["credential"]][-1]
    until = posted_before_close(api, last_socket.conn)
    assert until > killed, f"{name}: nothing posted on the tag after the kill was sent"
    posted = {s["id"]: s["monotonic"] for s in api.mastodon_posted()
              if timeline in s["timelines"]}
    assert stored <= set(posted), f"{name}: a status from another timeline"
    owed = {i for i, at in posted.items() if since <= at <= until}
    missing = owed - stored
    assert not missing, f"{name}: {len(missing)} statuses posted but stored by neither host"
    twice = [posted[i] for i in set(per_host[0]) & set(per_host[1])]
    if twice:
        assert killed - DUPLICATE_WINDOW <= min(twice) and max(twice) <= killed, (
            f"{name}: statuses stored twice posted {killed - min(twice):.2f} s to "
            f"{killed - max(twice):.2f} s before the kill, not within {DUPLICATE_WINDOW} s")
    return len(twice)


async def test_a_stream_moved_right_after_it_started_resumes_where_the_old_host_stopped(
    start_hosts: StartHosts, fake_api: FakeAPI
) -> None:
    """Hosts joining one after another move streams that have only just started (no
    checkpoint yet, here none at all on the timer): the host that lets a stream go saves
    where it stopped before it releases the lease, so the next one loses nothing."""
    fake_api.configure(jetstream_rate=100)
    name = next(n for n in (f"sky-{i}" for i in range(100))
                if owner(f"bluesky.{n}", ["host-a", "host-b"]) == "host-b")
    [a] = await start_hosts("host-a", checkpoint_interval=600)
    async with a.api() as api:
        await api.ok("POST", "/streams", {"name": name, "source": "bluesky",
                                          "kind": "jetstream"}, 201)
    await wait_until(lambda: sum(r.sent_count for r in connected(fake_api, "jetstream")) >= 50,
                     DEADLINE, "50 events sent to host-a")
    [b] = await start_hosts("host-b", checkpoint_interval=600)
    hosts = [a, b]

    async def moved_to_b() -> bool:
        return (await all_streaming(hosts, [name])
                and (await streams_of(a))[name]["host"] == "host-b")

    await wait_until_async(moved_to_b, DEADLINE, "the stream moved to host-b")
    moved = connected(fake_api, "jetstream")[-1]
    await wait_until(lambda: moved.sent_count >= 50, DEADLINE, "50 events sent to host-b")
    await stop_all(hosts)
    # Everything produced from the first event stored to the last, stored by one host or
    # the other; the few the replay brought again are within its rewind.
    per_host = [messages_everywhere(h.data, name) for h in hosts]
    union = [line for lines in per_host for line in lines]
    times = sorted(map(time_us, union))
    produced = {e.text for e in fake_api.jetstream_events(times[0], times[-1])}
    missing = produced - set(union)
    assert not missing, f"{len(missing)} events lost in the move"
    assert len(set(per_host[0]) & set(per_host[1])) <= 100 * (REWIND + 1)
