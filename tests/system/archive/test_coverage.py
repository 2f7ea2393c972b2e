"""Coverage through the real daemon and the fake API: every cause of a gap leaves the right
gap in the manifest, its bounds within a second of what the fake API saw, and nothing else."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from sfmd.archive.coverage import parse_iso
from sfmd.archive.timeline import report
from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import SfmdProcess, start_daemon, stop
from tests.helpers.fakeapi import stream_connections
from tests.helpers.files import manifest_lines
from tests.helpers.waits import wait_until

FILTER = {"name": "f1", "kind": "filter", "track": ["cats"], "credential": "alpha"}
SLACK = 1.0  # how close a gap's bounds must be to the fake API's own log


def wall(monotonic: float) -> float:
    """A time from the fake API's log (monotonic, this process) on the wall clock."""
    return time.time() - time.monotonic() + monotonic


def gaps(data: Path) -> list[tuple[float, float, str, dict[str, Any]]]:
    """Each gap once: one that crosses a rotation boundary is written in both lines."""
    return [(parse_iso(g["from"]), parse_iso(g["to"]), g["reason"], g)
            for g in report(data / "f1").gaps]


def the_gap(data: Path) -> tuple[float, float, str, dict[str, Any]]:
    """The one gap the test caused, and nothing else."""
    found = gaps(data)
    assert len(found) == 1, found
    return found[0]


async def streaming(api: FakeAPI, connections: int) -> None:
    """Until the fake API has sent messages on the `connections`-th stream connection."""
    await wait_until(
        lambda: len(stream_connections(api)) >= connections
        and stream_connections(api)[connections - 1].sent_count > 0,
        timeout=15, what=f"connection {connections} streaming",
    )


async def daemon_with_filter(tmp_path: Path, fake_api: FakeAPI) -> SfmdProcess:
    fake_api.configure(rate=50)
    # Hourly files: a test's few seconds then rarely straddle a boundary, which would split
    # its one file (and the line its gaps and requests are read from) in two.
    config = write_daemon_config(tmp_path, fake_api, save_interval=3600)
    proc = await start_daemon(tmp_path, config)
    async with Api(tmp_path / "sfmd.sock") as api:
        await api.ok("POST", "/streams", FILTER, 201)
    return proc


async def test_a_stream_with_no_fault_has_no_gap_in_any_line(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    proc = await daemon_with_filter(tmp_path, fake_api)
    try:
        await streaming(fake_api, 1)
        await stop(proc)
    finally:
        proc.kill()
    lines = manifest_lines(tmp_path / "data", "f1")
    assert lines and all(line["gaps"] == [] for line in lines)
    assert lines[-1]["closed"] is True
    request = lines[-1]["provenance"]["requests"][0]
    assert request["params"]["track"] == "cats" and request["credential"] == "alpha"
    assert request["endpoint"].endswith("/statuses/filter.json")
    assert "SECRET" not in json.dumps(lines)


async def test_stop_and_start_leave_a_stopped_gap(tmp_path: Path, fake_api: FakeAPI) -> None:
    proc = await daemon_with_filter(tmp_path, fake_api)
    try:
        await streaming(fake_api, 1)
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams/f1/stop")
            stopped = stream_connections(fake_api)[0].closed
            await api.ok("POST", "/streams/f1/start")
        await streaming(fake_api, 2)
        await stop(proc)
    finally:
        proc.kill()
    start, end, reason, _ = the_gap(tmp_path / "data")
    assert reason == "stopped"
    assert stopped is not None and abs(start - wall(stopped)) < SLACK
    resumed = stream_connections(fake_api)[1].first_byte
    assert resumed is not None and abs(end - wall(resumed)) < SLACK


async def test_a_refused_connection_is_a_backoff_gap_with_the_error(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.script({"status": 503})
    proc = await daemon_with_filter(tmp_path, fake_api)
    try:
        await streaming(fake_api, 2)
        async with Api(tmp_path / "sfmd.sock") as api:
            shown = (await api.ok("GET", "/streams/f1"))["status"]
            _, page = await api.call("GET", "/metrics")
        assert shown["connected_since"] is not None
        assert shown["last_gap"]["reason"] == "backoff" and shown["last_gap"]["to"] is not None
        assert 'sfmd_stream_gap_seconds_total{reason="backoff",stream="f1"}' in page
        await stop(proc)
    finally:
        proc.kill()
    start, end, reason, gap = the_gap(tmp_path / "data")
    refused, resumed = stream_connections(fake_api)[:2]
    assert reason == "backoff" and "503" in gap["error"] and gap["refilled"] == "none"
    assert abs(start - wall(refused.opened)) < SLACK  # a first connection: from the start
    assert resumed.first_byte is not None and abs(end - wall(resumed.first_byte)) < SLACK


async def test_a_rate_limit_wait_is_a_rate_limited_gap(tmp_path: Path, fake_api: FakeAPI) -> None:
    fake_api.script({"status": 420, "body": "Exceeded connection limit for user"})
    proc = await daemon_with_filter(tmp_path, fake_api)
    try:
        await streaming(fake_api, 2)
        await stop(proc)
    finally:
        proc.kill()
    start, end, reason, gap = the_gap(tmp_path / "data")
    refused, resumed = stream_connections(fake_api)[:2]
    assert refused.status == 420 and reason == "rate_limited" and "420" in gap["error"]
    assert abs(start - wall(refused.opened)) < SLACK
    assert resumed.first_byte is not None and abs(end - wall(resumed.first_byte)) < SLACK
    assert end - start >= 0.8  # the wait: ratelimit_backoff_start in the tests' timing


async def test_a_killed_daemon_leaves_a_daemon_down_gap(tmp_path: Path, fake_api: FakeAPI) -> None:
    proc = await daemon_with_filter(tmp_path, fake_api)
    try:
        await streaming(fake_api, 1)
        await wait_until(lambda: any(p.stat().st_size for p in (tmp_path / "data").rglob(
            "*.part")), what="messages on disk before the kill")
        killed = time.time()
        proc.kill()
    finally:
        proc.kill()
    await asyncio.sleep(2)  # a downtime, not a wait: long enough to tell apart from the slack
    config = tmp_path / "sfmd.toml"
    proc = await start_daemon(tmp_path, config)
    try:
        await streaming(fake_api, 2)
        await stop(proc)
    finally:
        proc.kill()
    start, end, reason, _ = the_gap(tmp_path / "data")
    assert reason == "daemon_down"
    assert abs(start - killed) < SLACK
    resumed = stream_connections(fake_api)[1].first_byte
    assert resumed is not None and abs(end - wall(resumed)) < SLACK


async def test_a_filter_change_shows_both_requests_with_their_start(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    proc = await daemon_with_filter(tmp_path, fake_api)
    try:
        await streaming(fake_api, 1)
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("PATCH", "/streams/f1", {"track": ["dogs"]})
        await streaming(fake_api, 2)
        await stop(proc)
    finally:
        proc.kill()
    [line] = [line for line in manifest_lines(tmp_path / "data", "f1") if line["file"]]
    first, second = line["provenance"]["requests"]
    assert (first["params"]["track"], second["params"]["track"]) == ("cats", "dogs")
    changed = stream_connections(fake_api)[1].opened
    assert abs(parse_iso(second["since"]) - wall(changed)) < SLACK
    assert [g["reason"] for g in line["gaps"]] == ["reconnect"]
