"""The daemon's log as an admin reads it: through the real daemon, its log file and sfmctl.

One line per change of state with its reason; a filter change is no "stopped"; a repeated
failure folded into a sum; the signal named; the shared v2 connection under `connection`;
the readable console format; `sfmctl tail` (of one stream, and following across a rotation).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import start_daemon, stop
from tests.helpers.fakeapi import live, stream_connections
from tests.helpers.logs import log_events, log_path
from tests.helpers.waits import wait_until

DEADLINE = 15.0
F1 = {"name": "f1", "kind": "filter", "track": ["cats"]}
#: A console line: time to the millisecond, level, who, event.
CONSOLE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO |WARN |ERROR) (\S+) +(\S+)")


async def sfmctl(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SFMCTL_SOCKET"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfmd.ctl", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def of(events: list[dict[str, Any]], name: str) -> list[str]:
    return [e["event"] for e in events if e.get("stream") == name]


async def test_one_line_per_change_and_a_filter_change_is_no_stop(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, fake_api))
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", F1, status=201)
            await wait_until(lambda: live(fake_api) and live(fake_api)[0].sent_count > 0,
                             DEADLINE, "the stream to stream")
            started = of(log_events(tmp_path), "f1")
            await api.ok("PATCH", "/streams/f1", {"track": ["dogs"]})
            await wait_until(lambda: len(stream_connections(fake_api)) == 2
                             and len(live(fake_api)) == 1, DEADLINE, "the new connection")
            await wait_until(lambda: of(log_events(tmp_path), "f1").count("connected") == 2,
                             DEADLINE, "the reconnect's connected line")
        await stop(proc)
    finally:
        proc.kill()
    raw = log_path(tmp_path).read_text().splitlines()
    # JSON lines that read left to right: when, how bad, what, about whom.
    assert all(line.startswith('{"timestamp": ') for line in raw)
    assert all(list(json.loads(line))[:3] == ["timestamp", "level", "event"] for line in raw)

    # A start: four lines, in the order things happen (it was seven, in a confusing order).
    assert started == ["stream_started", "api_change", "connecting", "connected"]
    events = log_events(tmp_path, "f1")
    connecting = [e for e in events if e["event"] == "connecting"]
    assert [e["reason"] for e in connecting] == ["started", "settings changed"]
    assert all(e["state"] == "connecting" for e in connecting)
    assert [e["state"] for e in events if e["event"] == "connected"] == ["streaming"] * 2
    # The filter change: one line says why it reconnects; nothing says "stopped".
    states = [e for e in events if e["event"] == "stream_state"]
    assert [(e["state"], e["reason"]) for e in states] == [
        ("reconnecting", "its filter settings changed"), ("stopping", "daemon shutdown")]
    assert not [e for e in events if e.get("state") == "stopped"]
    (received,) = [e for e in log_events(tmp_path) if e["event"] == "signal_received"]
    assert received["signal"] == "SIGTERM"


async def test_a_repeated_failure_is_folded_and_summed_up(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    failures = 6
    fake_api.script(*[{"status": 503, "endpoint": "filter"}] * failures)
    config = write_daemon_config(
        tmp_path, fake_api, timing={"http_backoff_start": 0.2, "http_backoff_max": 0.2})
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", F1, status=201)
            await wait_until(lambda: not fake_api.pending_faults and live(fake_api)
                             and live(fake_api)[0].status == 200, DEADLINE, "the outage's end")
            await wait_until(lambda: "connected" in of(log_events(tmp_path), "f1"), DEADLINE,
                             "the connected line")
            status = (await api.ok("GET", "/streams/f1"))["status"]
        await stop(proc)
    finally:
        proc.kill()
    events = log_events(tmp_path, "f1")
    told = [e["event"] for e in events if e["event"] in ("connecting", "disconnected",
                                                        "connected")]
    # Seven attempts, six identical failures: the first failure and the retry after it in
    # full, then one line summing up the rest, then the connection that worked.
    assert told == ["connecting", "disconnected", "connecting", "disconnected", "connected"]
    first, total = [e for e in events if e["event"] == "disconnected"]
    assert first["reason"] == total["reason"] and "HTTP 503" in first["reason"]
    assert first["wait"] == 0.2 and first["failure"] == "http"
    assert total["repeated"] == failures - 1 and total["attempts"] == failures - 1
    assert total["level"] == "warning" and total["over"] >= 0
    # The same count in the status: every attempt after the first followed a failure.
    assert status["reconnects_after_failure"] == failures
    http_errors = [e for e in events if e["event"] == "http_error"]
    assert len(http_errors) == failures  # the HTTP errors themselves are all on record


async def test_the_console_format_and_the_shared_connection_under_its_own_key(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api, daemon={"log_format": "console"})
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", F1, status=201)
            await api.ok("POST", "/streams", {"name": "v2a", "kind": "filter", "api": "v2",
                                              "rules": [{"value": "cats"}]}, status=201)
            await wait_until(lambda: " connected " in log_path(tmp_path).read_text()
                             .split("v2-filter@alpha", 1)[-1], DEADLINE, "v2 connected")
        await stop(proc)
    finally:
        proc.kill()
    lines = log_path(tmp_path).read_text().splitlines()
    parsed = [CONSOLE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    heads = [(m.group(2), m.group(3)) for m in parsed if m]
    assert ("f1", "connected") in heads and ("-", "startup") in heads
    assert ("v2-filter@alpha", "connected") in heads  # the connection's own lines
    assert ("v2a", "api_change") in heads
    (connecting,) = [line for line in lines if " f1 " in line and "connecting:" in line]
    assert "connecting: started  state=connecting" in connecting
    assert any(line.endswith("signal_received  signal=SIGTERM action=\"stopping every stream\"")
               for line in lines)
    # sfmctl tail passes console lines through, filtered by who they are about.
    code, out, err = await sfmctl("--config", str(config), "tail", "v2-filter@alpha", "-n", "2")
    assert code == 0, err
    assert out.splitlines() == [line for line in lines if " v2-filter@alpha " in line][-2:]


async def test_the_v2_connection_is_logged_as_a_connection_not_a_stream(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, fake_api))
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", {"name": "v2a", "kind": "filter", "api": "v2",
                                              "rules": [{"value": "cats"}]}, status=201)
            await wait_until(lambda: any(e.get("connection") == "v2-filter@alpha"
                                         and e["event"] == "connected"
                                         for e in log_events(tmp_path)), DEADLINE, "connected")
        await stop(proc)
    finally:
        proc.kill()
    events = log_events(tmp_path)
    assert not [e for e in events if e.get("stream") == "v2-filter@alpha"]
    shared = {e["event"] for e in events if e.get("connection") == "v2-filter@alpha"}
    assert {"v2_connection_started", "connecting", "connected", "rules_changed"} <= shared


async def test_sfmctl_tail_shows_one_stream_readably_and_follows_a_rotation(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    proc = await start_daemon(tmp_path, config)
    follower: asyncio.subprocess.Process | None = None
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", F1, status=201)
            await api.ok("POST", "/streams", {**F1, "name": "g1", "credential": "beta"},
                         status=201)
            await wait_until(lambda: of(log_events(tmp_path), "f1").count("connected") == 1
                             and of(log_events(tmp_path), "g1").count("connected") == 1,
                             DEADLINE, "both streams connected")

            code, out, err = await sfmctl("--config", str(config), "tail", "f1", "-n", "3")
            assert code == 0, err
            lines = out.splitlines()
            assert len(lines) == 3 and all(CONSOLE.match(line) for line in lines), lines
            assert all(CONSOLE.match(line).group(2) == "f1" for line in lines)  # type: ignore[union-attr]
            assert [CONSOLE.match(line).group(3) for line in lines] == [  # type: ignore[union-attr]
                "api_change", "connecting:", "connected"]

            code, out, _ = await sfmctl("--config", str(config), "tail", "-n", "2", "--json")
            assert [json.loads(line)["event"] for line in out.splitlines()] == [
                "connecting", "connected"]

            follower = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sfmd.ctl", "--config", str(config), "tail", "-f", "f1",
                "-n", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            assert follower.stdout is not None
            await read_until(follower.stdout, "connected")  # it printed the last line: ready
            await api.ok("PATCH", "/streams/f1", {"track": ["dogs"]})
            await api.ok("PATCH", "/streams/g1", {"track": ["dogs"]})
            seen = await read_until(follower.stdout, "api_change")
            assert " f1 " in seen[-1] and all(" g1 " not in line for line in seen)

            # logrotate: rename, then SIGHUP makes sfmd reopen; the follower reopens too.
            log = log_path(tmp_path)
            log.rename(log.with_name("sfmd.log.1"))
            proc.signal(signal.SIGHUP)
            await wait_until(lambda: log.exists(), DEADLINE, "the reopened log")
            await api.ok("PATCH", "/streams/f1", {"track": ["birds"]})
            seen = await read_until(follower.stdout, '"track":["birds"]')
            assert "api_change" in seen[-1]
        await stop(proc)
    finally:
        proc.kill()
        if follower is not None and follower.returncode is None:
            # Killed, not interrupted: a test runner started in the background ignores
            # SIGINT, and so does every process it starts (the follower outlived a run so).
            follower.kill()
            async with asyncio.timeout(10):
                await follower.wait()


async def read_until(stream: asyncio.StreamReader, text: str) -> list[str]:
    """Lines read until one holds `text` (the deadline fails the test)."""
    lines: list[str] = []
    async with asyncio.timeout(DEADLINE):
        while not lines or text not in lines[-1]:
            line = await stream.readline()
            assert line, f"the follower ended before printing {text!r}: {lines}"
            lines.append(line.decode().rstrip("\n"))
    return lines


async def test_sfmctl_tail_without_a_log_says_where_it_looked(tmp_path: Path) -> None:
    code, _, err = await sfmctl("tail", "--log", str(tmp_path / "nothing.log"))
    assert code == 1 and f"no log file at {tmp_path / 'nothing.log'}" in err
