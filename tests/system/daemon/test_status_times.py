"""What a stream's status says about time and trouble, through the real daemon and sfmctl:
how long it has been down (kept across retries), when it tries next, planned reconnects
apart from those after a failure, and when it last stored a message and published a file."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sfmd.credentials import Credential
from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import register, write_daemon_config
from tests.helpers.daemon import start_daemon, stop
from tests.helpers.fakeapi import live, stream_connections
from tests.helpers.waits import wait_until

DEADLINE = 15.0


def moment(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def status_when(
    api: Api, name: str, wanted: Callable[[dict[str, Any]], bool], what: str,
    seen: list[dict[str, Any]] | None = None, timeout: float = DEADLINE,
) -> dict[str, Any]:
    """Poll the stream's STATUS until `wanted` holds (each answer kept in `seen`)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = (await api.ok("GET", f"/streams/{name}"))["status"]
        if seen is not None:
            seen.append(status)
        if wanted(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last status {status}")
        await asyncio.sleep(0.02)


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


async def test_down_since_stays_across_retries_and_next_attempt_is_shown(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    register(tmp_path, credentials, name="idle", kind="filter", track=["quiet"],
             credential="beta", active=False)
    # Three quick HTTP failures, then a rate limit whose wait is long enough to look at it.
    fake_api.script({"status": 503}, {"status": 503}, {"status": 503}, {"status": 429})
    config = write_daemon_config(tmp_path, fake_api, timing={
        "http_backoff_start": 0.3, "http_backoff_max": 0.3, "ratelimit_backoff_start": 6,
        "ratelimit_backoff_max": 6})
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            idle_first = (await api.ok("GET", "/streams/idle"))["status"]
            await api.ok("POST", "/streams", {"name": "down", "kind": "filter",
                                              "track": ["cats"]}, status=201)
            seen: list[dict[str, Any]] = []
            limited = await status_when(
                api, "down", lambda s: "429" in (s["last_error"] or "")
                and s["state"] == "backoff", "the rate-limit wait", seen)
            failing = [s for s in seen if s["down_since"] is not None]
            # One outage, however many retries: down_since never moved, while `since` did.
            assert len({s["down_since"] for s in failing}) == 1
            assert limited["reconnects_after_failure"] == 3
            assert limited["reconnects_planned"] == 0
            assert moment(limited["down_since"]) < moment(limited["since"])
            # The next attempt is the rate-limit wait after the state changed.
            wait = moment(limited["next_attempt"]) - moment(limited["since"])
            assert 5.9 <= wait <= 6.1, wait
            assert all(s["next_attempt"] is None for s in seen if s["state"] == "connecting")

            code, out, err = await sfmctl("--config", str(config), "status", "--once")
            assert code == 1, (out, err)  # a stream backing off: monitoring hears of it
            row = next(line for line in out.splitlines() if line.startswith("down "))
            assert row.split()[3] == "backoff"  # NAME SOURCE KIND STATE
            assert "next attempt in" in out and f"(since {limited['down_since']})" in out

            well = await status_when(api, "down", lambda s: s["state"] == "streaming",
                                     "streaming again", timeout=DEADLINE)
            assert well["down_since"] is None and well["next_attempt"] is None
            assert well["reconnects"] == 4 and well["reconnects_after_failure"] == 4

            # A stream stopped since before the daemon began: not "stopped just now" at
            # every look, but since the daemon's start, the same at every look.
            idle_later = (await api.ok("GET", "/streams/idle"))["status"]
            assert idle_later["state"] == "stopped"
            assert idle_later["since"] == idle_first["since"]
            assert idle_later["down_since"] is None
        await stop(proc)
    finally:
        proc.kill()


async def test_planned_reconnects_count_apart_and_silence_shows_in_metrics(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api, save_interval=1)
    begun = time.time()
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", {"name": "f1", "kind": "filter",
                                              "track": ["a"]}, status=201)
            for n, track in enumerate(["b", "c", "d"], start=2):
                await wait_until(lambda: live(fake_api) and live(fake_api)[0].sent_count > 0,
                                 DEADLINE, "the connection to stream")
                await api.ok("PATCH", "/streams/f1", {"track": [track]})
                await wait_until(lambda n=n: len(stream_connections(fake_api)) == n
                                 and len(live(fake_api)) == 1, DEADLINE, f"connection {n}")
            planned = await status_when(
                api, "f1", lambda s: s["state"] == "streaming" and s["last_publish_at"]
                is not None and s["last_message_at"] is not None, "a published file")
            assert planned["reconnects"] == 3
            assert planned["reconnects_planned"] == 3
            assert planned["reconnects_after_failure"] == 0

            # Now a failure: the next connection is cut.
            fake_api.script({"cut_after": 3})
            await api.ok("PATCH", "/streams/f1", {"track": ["e"]})
            failed = await status_when(
                api, "f1", lambda s: s["reconnects_after_failure"] == 1
                and s["state"] == "streaming", "a reconnect after the cut")
            assert failed["reconnects_planned"] == 4 and failed["reconnects"] == 5

            page = (await api.call("GET", "/metrics"))[1]
        families = {f.name: f for f in text_string_to_metric_families(page)}
        reconnects = {s.labels["cause"]: s.value for s in families["sfmd_stream_reconnects"]
                      .samples if s.labels["stream"] == "f1"}
        assert reconnects == {"planned": 4, "failure": 1}
        (last_message,) = families["sfmd_stream_last_message_timestamp_seconds"].samples
        (last_publish,) = families["sfmd_stream_last_publish_timestamp_seconds"].samples
        now = time.time()
        assert begun < last_message.value <= now and last_message.labels == {"stream": "f1"}
        assert begun < last_publish.value <= now
        assert abs(last_message.value - moment(failed["last_message_at"])) < 5
        await stop(proc)
    finally:
        proc.kill()
