"""Reloading the credentials file (`sfmctl reload`, SIGHUP): a fixed or new credential is
taken without a restart, and only the streams whose keys changed reconnect."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sfmd.credentials import load_credentials
from sfmd.fake import ConnectionRecord, FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import (
    CREDENTIALS_TOML,
    MASTODON_PLACEHOLDER,
    register,
    write_daemon_config,
)
from tests.helpers.daemon import SfmdProcess, start_daemon, stop
from tests.helpers.fakeapi import stream_connections
from tests.helpers.logs import log_events, log_text
from tests.helpers.waits import wait_until

GAMMA = """
[gamma]
consumer_key = "ck-gamma-SECRET"
consumer_secret = "cs-gamma-SECRET"
access_token = "at-gamma-SECRET"
access_token_secret = "ats-gamma-SECRET"
"""
#: alpha as an operator might first get it wrong: secrets mistyped (Twitter answers 401).
WRONG_ALPHA = CREDENTIALS_TOML.replace('"ats-alpha-SECRET"', '"ats-alpha-MISTYPED"').replace(
    '"bt-alpha-SECRET"', '"bt-alpha-MISTYPED"'
)


async def sfmctl(sock: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfmd.ctl", "--socket", str(sock), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_keys(home: Path, text: str, mode: int = 0o600) -> None:
    """Replace the credentials file as an editor would (a new file, renamed over). The
    Mastodon accounts keep the instance address the config helper gave them."""
    path = home / "credentials.toml"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("mastodon_instance = ") and MASTODON_PLACEHOLDER not in line:
                text = text.replace(f'"{MASTODON_PLACEHOLDER}"', line.split(" = ", 1)[1])
                break
    tmp = home / "credentials.toml.new"
    tmp.write_text(text)
    os.chmod(tmp, mode)
    tmp.replace(home / "credentials.toml")


@pytest.fixture
async def fake_with_gamma(tmp_path: Path) -> AsyncIterator[FakeAPI]:
    """A fake API that knows alpha, beta and gamma's right keys."""
    every = tmp_path / "every.toml"
    every.write_text(CREDENTIALS_TOML + GAMMA)
    os.chmod(every, 0o600)
    api = FakeAPI(load_credentials(every), rate=50, message_size=600, keepalive_interval=0.25)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def on(api: FakeAPI, credential: str) -> list[ConnectionRecord]:
    return [r for r in stream_connections(api) if r.credential == credential]


def streaming_on(api: FakeAPI, credential: str) -> ConnectionRecord | None:
    return next((r for r in on(api, credential) if r.closed is None and r.status == 200), None)


def v2_streaming(api: FakeAPI) -> ConnectionRecord | None:
    """alpha's shared v2 filter connection, while it streams."""
    return next((r for r in api.log if r.endpoint == "v2/filter" and r.closed is None
                 and r.status == 200 and r.credential == "alpha"), None)


async def statuses(sock: Path) -> dict[str, dict[str, Any]]:
    async with Api(sock) as api:
        streams = (await api.ok("GET", "/streams"))["streams"]
    return {s["name"]: s["status"] for s in streams}


async def test_reload_takes_fixed_and_new_keys_and_reconnects_only_their_streams(
    tmp_path: Path, fake_with_gamma: FakeAPI
) -> None:
    api = fake_with_gamma
    write_keys(tmp_path, WRONG_ALPHA)
    with_gamma = load_credentials(tmp_path / "every.toml")
    register(tmp_path, with_gamma, name="a1", kind="filter", track=["x"], credential="alpha")
    register(tmp_path, with_gamma, name="b1", kind="sample", credential="beta")
    register(tmp_path, with_gamma, name="g1", kind="sample", credential="gamma")
    register(tmp_path, with_gamma, name="v2f", kind="filter", api="v2", credential="alpha",
             rules=[{"value": "cats"}])
    config = write_daemon_config(tmp_path, api)
    sock = tmp_path / "sfmd.sock"
    proc = await start_daemon(tmp_path, config)
    try:
        # Before: alpha's mistyped secret earns 401s, gamma is not in the file.
        await wait_until(lambda: any(r.status == 401 for r in on(api, "alpha")), 10, "a 401")
        await wait_until(lambda: any(r.endpoint == "v2/filter" and r.status == 401
                                     for r in api.log), 10, "a v2 401")
        await wait_until(lambda: streaming_on(api, "beta") is not None, 10, "beta streaming")
        beta = streaming_on(api, "beta")
        status = await statuses(sock)
        assert status["g1"]["state"] == "failed"
        assert "credential 'gamma' is not in the credentials file" in status["g1"]["last_error"]
        assert "sfmctl reload" in status["g1"]["last_error"]
        code, out, _ = await sfmctl(sock, "health")
        assert code == 1 and "1 failed" in out and "g1: credential 'gamma'" in out, out

        # Fixed and added: one reload, no restart. A config change is not applied: said.
        write_keys(tmp_path, CREDENTIALS_TOML + GAMMA)
        config.write_text(config.read_text().replace("stall_timeout = 1.0", "stall_timeout = 2"))
        code, out, err = await sfmctl(sock, "reload")
        assert code == 0, err
        assert out.splitlines()[0] == "credentials reloaded: added gamma; changed alpha", out
        assert "the config file changed ([timing] stall_timeout)" in err
        assert "restart sfmd" in err
        await wait_until(lambda: streaming_on(api, "alpha") is not None, 10, "alpha streaming")
        await wait_until(lambda: streaming_on(api, "gamma") is not None, 10, "gamma streaming")
        await wait_until(lambda: v2_streaming(api) is not None, 10, "the v2 filters streaming")
        assert streaming_on(api, "beta") is beta  # beta's keys did not change: not touched
        assert len(on(api, "beta")) == 1
        status = await statuses(sock)
        assert status["a1"]["state"] == "streaming" and status["g1"]["state"] == "streaming"
        await wait_until(lambda: api.rules("alpha") != [], 10, "the v2 rule at the API")
        assert (await sfmctl(sock, "health"))[0] == 0

        # Too open: refused, the keys in use stay, nothing reconnects.
        alpha, v2 = streaming_on(api, "alpha"), v2_streaming(api)
        write_keys(tmp_path, CREDENTIALS_TOML + GAMMA, mode=0o644)
        code, out, err = await sfmctl(sock, "reload")
        assert code == 1 and "has mode 0644" in err and "chmod 600" in err, err
        assert "(reload_refused)" in err and "the credentials in use stay" in err
        assert [e for e in log_events(tmp_path) if e["event"] == "reload_refused"]
        assert streaming_on(api, "alpha") is alpha and streaming_on(api, "beta") is beta

        # A config a restart would refuse: the daemon runs on, the reload warns.
        write_keys(tmp_path, CREDENTIALS_TOML + GAMMA)
        good_config = config.read_text()
        config.write_text(good_config.replace("stall_timeout = 2", "stall_timeout = -1"))
        code, out, err = await sfmctl(sock, "reload")
        assert code == 0 and out.startswith("credentials reloaded: no change"), (out, err)
        assert "a restart would fail now" in err and "stall_timeout" in err, err
        config.write_text(good_config)

        # SIGHUP does the same, and still reopens the log: gamma gone, its stream fails.
        write_keys(tmp_path, CREDENTIALS_TOML)
        os.rename(tmp_path / "log" / "sfmd.log", tmp_path / "log" / "sfmd.log.1")
        proc.signal(signal.SIGHUP)
        await wait_until(
            lambda: any(e["event"] == "credentials_reloaded"
                        for e in log_events(tmp_path, missing_ok=True)), 10, "the reload")
        events = log_events(tmp_path)
        assert events[0]["event"] == "logs_reopened", events[:3]
        reloaded = next(e for e in events if e["event"] == "credentials_reloaded")
        assert (reloaded["added"], reloaded["changed"], reloaded["removed"]) == ([], [], ["gamma"])
        await wait_until(lambda: streaming_on(api, "gamma") is None, 10, "gamma's stream to stop")
        status = await statuses(sock)
        assert status["g1"]["state"] == "failed"
        assert "'gamma' is not in the credentials file" in status["g1"]["last_error"]
        assert streaming_on(api, "alpha") is alpha and streaming_on(api, "beta") is beta
        assert v2_streaming(api) is v2
        await stop(proc)
    finally:
        proc.kill()
    everything = log_text(tmp_path) + (tmp_path / "log" / "sfmd.log.1").read_text()
    assert "SECRET" not in everything and "MISTYPED" not in everything


async def test_a_process_run_by_hand_reopens_its_log_on_sighup_and_keeps_streaming(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    """`sfmd stream` (a process-isolated stream's command) takes SIGHUP as logrotate sends
    it: the log is reopened, the stream goes on."""
    creds = load_credentials(tmp_path / "credentials.toml")
    register(tmp_path, creds, name="solo", kind="sample", credential="beta")
    config = write_daemon_config(tmp_path, fake_api)
    proc = SfmdProcess("stream", "solo", "--config", str(config), cwd=tmp_path)
    try:
        log = tmp_path / "log" / "stream-solo.log"
        await wait_until(lambda: streaming_on(fake_api, "beta") is not None, 15, "streaming")
        record = streaming_on(fake_api, "beta")
        os.rename(log, tmp_path / "log" / "stream-solo.log.1")
        proc.signal(signal.SIGHUP)
        await wait_until(lambda: log.exists() and "logs_reopened" in log.read_text(), 10,
                         "the new log")
        assert streaming_on(fake_api, "beta") is record
        await stop(proc)
    finally:
        proc.kill()
