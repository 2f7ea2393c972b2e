"""Bluesky streams through the real daemon and the fake Jetstream instance: every event the
instance sent is stored byte for byte, filters change without reconnecting, faults are
survived, and a crash loop loses nothing and stores nothing twice."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from sfmd.archive.timeline import report
from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import SfmdProcess, start_daemon, stop
from tests.helpers.files import manifest_lines, stored_messages
from tests.helpers.logs import log_events
from tests.helpers.waits import wait_until

POSTS = {"name": "posts", "source": "bluesky", "kind": "jetstream",
         "collections": ["app.bsky.feed.post"]}
EVERYTHING = {"name": "all", "source": "bluesky", "kind": "jetstream"}


def connections(api: FakeAPI) -> list[Any]:
    return [r for r in api.log if r.endpoint == "jetstream"]


def upgraded(api: FakeAPI) -> list[Any]:
    return [r for r in connections(api) if r.status == 101]


def sent(api: FakeAPI) -> list[bytes]:
    """What the instance sent on every connection, in order (fault frames aside)."""
    out: list[bytes] = []
    for record in upgraded(api):
        out += [m for m in api.sent_messages(record.conn) if m.startswith(b"{")]
    return out


def time_us(line: bytes) -> int:
    return int(json.loads(line)["time_us"])


def check_exactly_once(api: FakeAPI, stored: list[bytes]) -> None:
    """Every event the instance produced from the earliest stored to the latest is stored,
    once. (The replay after a reconnect may reach back before the first subscription: the
    rewind asks for what the instance still holds.)"""
    assert len(stored) == len(set(stored)), "an event stored twice"
    times = sorted(map(time_us, stored))
    produced = [e.text for e in api.jetstream_events(times[0], times[-1])]
    assert sorted(stored, key=time_us) == produced


async def daemon_with(tmp_path: Path, api: FakeAPI, body: dict[str, Any], **config: Any
                      ) -> SfmdProcess:
    api.configure(jetstream_rate=100, jetstream_ping_interval=0.5)
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, api, **config))
    async with Api(tmp_path / "sfmd.sock") as client:
        await client.ok("POST", "/streams", body, 201)
    return proc


async def until_sent(api: FakeAPI, connection: int, count: int, timeout: float = 15) -> None:
    await wait_until(
        lambda: len(upgraded(api)) >= connection
        and len(api.sent_messages(upgraded(api)[connection - 1].conn)) >= count,
        timeout=timeout, what=f"{count} events sent on connection {connection}",
    )


@pytest.mark.parametrize("compress", [True, False])
async def test_every_event_sent_is_stored_byte_for_byte(
    tmp_path: Path, fake_api: FakeAPI, compress: bool
) -> None:
    proc = await daemon_with(tmp_path, fake_api, EVERYTHING, bluesky={"compress": compress})
    try:
        await until_sent(fake_api, 1, 200)
        await stop(proc)
    finally:
        proc.kill()
    [record] = upgraded(fake_api)
    assert record.params.get("compress") == ("true" if compress else None)
    assert "maxMessageSizeBytes" not in record.params
    stored = stored_messages(tmp_path / "data", "all")
    # Byte for byte and in order, up to the close: what came while it was under way too.
    assert stored == fake_api.sent_messages(record.conn)
    lines = [line for line in manifest_lines(tmp_path / "data", "all") if line["file"]]
    assert sum(line["tweets"] for line in lines) == sum(b'"kind":"commit"' in m for m in stored)
    request = lines[-1]["provenance"]["requests"][0]
    assert request["source"] == "bluesky" and request["endpoint"] == fake_api.jetstream_url


async def test_filters_hold_and_change_without_reconnecting(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    proc = await daemon_with(tmp_path, fake_api, POSTS)
    try:
        await until_sent(fake_api, 1, 30)
        async with Api(tmp_path / "sfmd.sock") as client:
            await client.ok("PATCH", "/streams/posts", {"collections": ["app.bsky.feed.like"]})
        conn = upgraded(fake_api)[0].conn
        await wait_until(lambda: bool(fake_api.jetstream_options(conn)), what="options_update")
        await until_sent(fake_api, 1, 80)
        await stop(proc)
    finally:
        proc.kill()
    assert len(connections(fake_api)) == 1  # one connection throughout
    [update] = fake_api.jetstream_options(conn)
    assert update["wantedCollections"] == ["app.bsky.feed.like"]
    stored = stored_messages(tmp_path / "data", "posts")
    assert stored == fake_api.sent_messages(conn)
    for line in stored:
        event = json.loads(line)
        if event["kind"] != "commit":
            continue  # identity and account events come whatever the filter
        wanted = "app.bsky.feed.post" if event["time_us"] < update["from_us"] else (
            "app.bsky.feed.like")
        assert event["commit"]["collection"] == wanted


#: (fault, connections upgraded by the end): a cut socket is replaced; a refused frame is not.
FAULTS = [
    ({"close_after": 20}, 2),
    ({"stall_after": 20, "duration": 10}, 2),  # past idle_timeout: the socket counts as dead
    ({"status": 503, "body": "overloaded"}, 1),
    ({"status": 429, "body": "slow down"}, 1),
    ({"slow_consumer_after": 20}, 2),
    ({"oversize_after": 20}, 1),
    ({"not_json_after": 20}, 1),
]


@pytest.mark.parametrize(
    ("fault", "expected"), FAULTS, ids=[next(iter(f)) + str(f.get("status", "")) for f, _ in FAULTS]
)
async def test_faults_are_survived_and_nothing_sent_is_lost_or_doubled(
    tmp_path: Path, fake_api: FakeAPI, fault: dict[str, Any], expected: int
) -> None:
    fake_api.script({"endpoint": "jetstream", **fault})
    proc = await daemon_with(tmp_path, fake_api, EVERYTHING)
    try:
        await wait_until(lambda: len(upgraded(fake_api)) >= expected
                         and len(sent(fake_api)) >= 100, timeout=20, what="streaming after")
        await stop(proc)
    finally:
        proc.kill()
    # The replay from the cursor refills what the fault cut.
    check_exactly_once(fake_api, stored_messages(tmp_path / "data", "all"))
    assert len(upgraded(fake_api)) == expected
    if expected == 1 and "status" not in fault:  # refused, logged, and on record
        assert "event_refused" in [e["event"] for e in log_events(tmp_path)]
        gaps = [g for line in manifest_lines(tmp_path / "data", "all") for g in line["gaps"]]
        assert [g["reason"] for g in gaps] == ["event_refused"]


async def test_a_crash_loop_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    """Kill -9 while the instance keeps producing, wait longer than `rewind`, restart: every
    event produced while the stream was set is stored exactly once."""
    proc = await daemon_with(tmp_path, fake_api, EVERYTHING)
    config = tmp_path / "sfmd.toml"
    kills = 20
    try:
        for round_ in range(kills):
            await until_sent(fake_api, round_ + 1, 30)
            await wait_until(lambda: any(p.stat().st_size for p in (tmp_path / "data").rglob(
                "*.part")), what="events on disk")
            proc.kill()  # SIGKILL: no publish, no goodbye
            await asyncio.sleep(2.2)  # a downtime longer than rewind (2 s), not a wait
            proc = await start_daemon(tmp_path, config)
        await until_sent(fake_api, kills + 1, 50)
        await stop(proc)
    finally:
        proc.kill()
    check_exactly_once(fake_api, stored_messages(tmp_path / "data", "all"))
    gaps = report(tmp_path / "data" / "all").gaps  # a gap once, however many lines it crosses
    assert [g["reason"] for g in gaps].count("daemon_down") == kills, gaps
    assert all(g["refilled"] == "all" for g in gaps if g["reason"] == "daemon_down"), gaps
    proc.signal(signal.SIGTERM)


async def test_a_resume_point_past_the_replay_window_is_a_gap_partly_refilled(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    proc = await daemon_with(tmp_path, fake_api, EVERYTHING)
    fake_api.configure(jetstream_window=1)  # the instance keeps one second of the past
    try:
        await until_sent(fake_api, 1, 50)
        proc.kill()
        await asyncio.sleep(3)  # a downtime longer than the window, not a wait
        proc = await start_daemon(tmp_path, tmp_path / "sfmd.toml")
        await until_sent(fake_api, 2, 50)
        await stop(proc)
    finally:
        proc.kill()
    [restart] = upgraded(fake_api)[1:]
    assert restart.summary["clamped"] is True  # the cursor was older than the window
    gaps = report(tmp_path / "data" / "all").gaps
    assert [(g["reason"], g["refilled"]) for g in gaps] == [("daemon_down", "some")], gaps
    assert "replay_window" in [e["event"] for e in log_events(tmp_path)]
