"""Where a Jetstream stream resumes, read back from its own files, and how an event is known
again whoever serves it."""

from __future__ import annotations

import json
from pathlib import Path

from sfmd.sources.bluesky.events import count_commits, identity, parse
from sfmd.sources.bluesky.jetstream import Subscription
from sfmd.sources.bluesky.resume import ResumePoint
from tests.helpers.archive import Clock, make_archive

T0 = 1_725_911_162_000_000


def commit(i: int, time_us: int, op: str = "create") -> bytes:
    return json.dumps({
        "did": f"did:plc:{i % 7:024d}", "time_us": time_us, "kind": "commit",
        "commit": {"rev": f"3l{i:010d}", "operation": op, "collection": "app.bsky.feed.post",
                   "rkey": f"r{i}", "record": {"text": f"post {i}"}, "cid": f"bafy{i}"},
    }, separators=(",", ":")).encode()


def identity_event(seq: int, time_us: int) -> bytes:
    return json.dumps({"did": "did:plc:x", "time_us": time_us, "kind": "identity",
                       "identity": {"did": "did:plc:x", "handle": "x.bsky.social", "seq": seq,
                                    "time": "2024-09-09T19:46:02.102Z"}},
                      separators=(",", ":")).encode()


def test_the_same_event_from_another_instance_is_known_by_what_it_is() -> None:
    here, there = commit(1, T0), commit(1, T0 + 123_456)  # another instance's clock
    assert identity(parse(here), here) == identity(parse(there), there)
    assert identity(parse(here), here) != identity(parse(commit(1, T0, "delete")), here)
    a, b = identity_event(5, T0), identity_event(5, T0 + 9)
    assert identity(parse(a), a) == identity(parse(b), b)
    assert count_commits([here, a, there]) == 2


async def test_the_resume_point_is_the_newest_event_in_the_files(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(3600, into=100)
    archive = make_archive(tmp_path, clock=clock, count=count_commits)
    await archive.open()
    events = [commit(i, T0 + i * 1_000_000) for i in range(30)]  # one a second
    await archive.write(events[:20], 20)
    clock.offset += 3600  # the next interval: a second file
    await archive.write(events[20:], 10)
    await archive.close()
    point = ResumePoint.from_files(tmp_path / "s1", rewind_us=5_000_000)
    assert point.newest == T0 + 29 * 1_000_000
    assert point.cursor == point.newest - 5_000_000
    # What the replay from the cursor brings again is known; older events need not be.
    for event in events[20:]:
        assert point.seen(identity(parse(event), event))
    assert not point.seen(identity(parse(commit(99, T0)), commit(99, T0)))


def test_a_stream_with_no_files_starts_from_the_live_tail(tmp_path: Path) -> None:
    assert ResumePoint.from_files(tmp_path / "nothing", rewind_us=10).cursor is None


def test_what_a_subscription_asks_for() -> None:
    sub = Subscription("p", "ws://h/subscribe", ("app.bsky.feed.post", "app.bsky.graph.*"),
                       ("did:plc:a",), compress=True)
    assert sub.query(T0) == [("wantedCollections", "app.bsky.feed.post"),
                             ("wantedCollections", "app.bsky.graph.*"),
                             ("wantedDids", "did:plc:a"), ("cursor", str(T0)),
                             ("compress", "true")]
    assert "maxMessageSizeBytes" not in dict(sub.query(None))
    update = json.loads(sub.options_update())
    assert update == {"type": "options_update", "payload": {
        "wantedCollections": ["app.bsky.feed.post", "app.bsky.graph.*"],
        "wantedDids": ["did:plc:a"], "maxMessageSizeBytes": 0}}
    many = Subscription("p", "ws://h", (), tuple(f"did:plc:{i}" for i in range(500)), True)
    shown = many.provenance(None)["params"]["wantedDids"]
    assert shown["count"] == 500 and len(shown["sha256_sorted"]) == 64


def test_identities_are_forgotten_once_the_replay_cannot_bring_them_back() -> None:
    point = ResumePoint(rewind_us=1_000)
    events = [(("did", "c", str(i)), T0 + i) for i in range(50_000)]  # one a microsecond
    for key, time_us in events:
        point.stored(key, time_us)
    assert point.seen(events[-1][0]) and point.seen(events[-2000][0])
    assert not point.seen(events[0][0]) and not point.seen(events[-2002][0])
    assert len(point._recent) == 2001  # what twice the rewind holds, no more
