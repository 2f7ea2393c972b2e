"""Admission through the real daemon: slow network checks run outside the daemon's lock, and a
credential that cannot serve its stream makes it `failed` with a plain reason, never a crash
loop."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import start_daemon
from tests.helpers.logs import log_text
from tests.helpers.waits import wait_until


async def test_a_slow_users_lookup_does_not_delay_a_change_to_another_stream(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api, Api(tmp_path / "sfmd.sock") as other:
            await api.ok("POST", "/streams", {"name": "quick", "kind": "filter",
                                               "track": ["x"], "credential": "beta"}, 201)
            # Under the lookup's own timeout (the tests' connect_timeout, 2 s), so it succeeds.
            fake_api.script({"endpoint": "users/lookup", "delay": 1.5})
            slow = asyncio.create_task(api.call("POST", "/streams", {
                "name": "slow", "kind": "filter", "people": ["alice"], "credential": "alpha"}))
            await wait_until(lambda: any(r.endpoint == "users/lookup" for r in fake_api.log))
            changed = await other.ok("PATCH", "/streams/quick", {"track": ["y"]})
            assert changed["track"] == ["y"]
            assert not slow.done()  # answered while the lookup still waits on the fake API
            status, body = await slow
            assert status == 201 and body["people_ids"] == {"alice": body["people_ids"]["alice"]}
    finally:
        proc.signal(signal.SIGTERM)
        await proc.wait(10)


async def test_a_credential_that_cannot_serve_its_stream_fails_it_plainly(
    tmp_path: Path, fake_api: FakeAPI, credentials_file: Path
) -> None:
    """Keys missing, or the credential gone from the file while sfmd was down: `failed` with
    the reason, at start-up and at every reconcile, for tasks and processes alike."""
    with open(credentials_file, "a") as f:
        f.write('\n[bearer_only]\nbearer_token = "bt-only"\n')
    streams = [
        {"name": "nokeys", "kind": "filter", "track": ["x"], "credential": "bearer_only"},
        {"name": "gone", "kind": "sample", "credential": "departed"},
        {"name": "gone-proc", "kind": "filter", "track": ["y"], "credential": "departed",
         "isolation": "process"},
        {"name": "fine", "kind": "sample", "credential": "alpha"},
    ]
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "streams.json").write_text(
        json.dumps({"version": 1, "streams": streams}))
    config = write_daemon_config(tmp_path, fake_api)
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            expected = {
                "nokeys": "need the four OAuth 1.0a keys",
                "gone": "'departed' is not in the credentials file",
                "gone-proc": "'departed' is not in the credentials file",
            }
            shown: dict[str, dict[str, Any]] = {}

            async def settled() -> bool:  # start-up reconciles just after the socket opens
                listed = (await api.ok("GET", "/streams"))["streams"]
                shown.update({s["name"]: s["status"] for s in listed})
                return shown["fine"]["state"] != "stopped" and all(
                    shown[name]["state"] == "failed" for name in expected
                )

            deadline = asyncio.get_running_loop().time() + 10
            while not await settled():
                assert asyncio.get_running_loop().time() < deadline, shown
                await asyncio.sleep(0.05)
            for name, words in expected.items():
                assert words in shown[name]["last_error"], (name, shown[name])
            assert shown["fine"]["state"] in ("connecting", "streaming")
    finally:
        proc.signal(signal.SIGTERM)
        assert await proc.wait(10) == 0
    log = log_text(tmp_path)
    assert "stream_crashed" not in log
    failed = [json.loads(line) for line in log.splitlines() if '"stream_failed"' in line]
    assert sorted({line["stream"] for line in failed}) == ["gone", "gone-proc", "nokeys"]
