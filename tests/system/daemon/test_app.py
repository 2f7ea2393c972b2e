"""The daemon's life: restarts, kills, locks, sockets, crashes, many streams, clean stops."""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sfmd.config import load_config
from sfmd.credentials import Credential, load_credentials
from sfmd.daemon.app import Daemon
from sfmd.fake import FakeAPI
from sfmd.registry import Registry, RegistryError, StreamSpec
from sfmd.sources.twitter.source import TwitterSource
from sfmd.sources.twitter.stream import Stream
from tests.helpers.api import Api
from tests.helpers.config import CREDENTIALS_TOML, write_daemon_config
from tests.helpers.daemon import SfmdProcess, daemon_in_process, start_daemon, stop
from tests.helpers.fakeapi import live
from tests.helpers.files import manifest
from tests.helpers.logs import log_path, log_text
from tests.helpers.waits import wait_until


async def test_restart_resumes_every_active_stream_with_its_settings(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(rate=20)
    config = write_daemon_config(tmp_path, fake_api)
    proc = await start_daemon(tmp_path, config)
    bodies = [
        {"name": "f1", "kind": "filter", "track": ["a b"], "locations": [[-1, -1, 1, 1]],
         "credential": "alpha"},
        {"name": "s1", "kind": "sample", "credential": "beta"},
        {"name": "off", "kind": "filter", "follow": ["9"], "credential": "alpha",
         "active": False},
    ]
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            for body in bodies:
                await api.ok("POST", "/streams", body, status=201)
        await wait_until(lambda: len(live(fake_api)) == 2)
        before = sorted((r.endpoint, tuple(sorted(r.params.items()))) for r in live(fake_api))
        await stop(proc)
    finally:
        proc.kill()
    assert not live(fake_api)
    assert not list((tmp_path / "data").rglob("*.part"))

    proc = await start_daemon(tmp_path, config)
    try:
        await wait_until(lambda: len(live(fake_api)) == 2)
        after = sorted((r.endpoint, tuple(sorted(r.params.items()))) for r in live(fake_api))
        assert after == before
        async with Api(tmp_path / "sfmd.sock") as api:
            listed = await api.ok("GET", "/streams")
        assert {s["name"]: s["active"] for s in listed["streams"]} == {
            "f1": True, "s1": True, "off": False}
        await stop(proc)
    finally:
        proc.kill()


async def test_registry_survives_sigkill_at_any_moment(tmp_path: Path, fake_api: FakeAPI) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    registry_file = tmp_path / "state" / "streams.json"
    rng = random.Random(7)
    for round_ in range(6):
        proc = await start_daemon(tmp_path, config)
        try:
            async with Api(tmp_path / "sfmd.sock") as api:
                if round_ == 0:
                    await api.ok("POST", "/streams", {"name": "f1", "kind": "filter",
                                                      "track": ["x"], "active": False}, 201)

                async def churn() -> None:
                    for i in range(1000):
                        await api.call("PATCH", "/streams/f1", {"track": [f"x{i}"]})

                task = asyncio.create_task(churn())
                await asyncio.sleep(rng.uniform(0.05, 0.4))  # the kill lands at a random moment
                proc.kill()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            proc.kill()
        # Old or new, never torn: the file always loads and always holds f1.
        registry = Registry.load(tmp_path / "state")
        assert registry.get("f1").track[0].startswith("x")
        assert json.loads(registry_file.read_text())["version"] == 1


async def test_hand_edited_registry_with_two_on_one_credential(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    (tmp_path / "state").mkdir()
    streams = [
        {"name": "a1", "kind": "filter", "track": ["x"], "credential": "alpha"},
        {"name": "a2", "kind": "sample", "credential": "alpha"},
    ]
    (tmp_path / "state" / "streams.json").write_text(
        json.dumps({"version": 1, "streams": streams}))
    proc = await start_daemon(tmp_path, config)
    try:
        await wait_until(lambda: len(live(fake_api)) == 1)
        async with Api(tmp_path / "sfmd.sock") as api:
            a1 = await api.ok("GET", "/streams/a1")
            a2 = await api.ok("GET", "/streams/a2")
        assert a1["status"]["state"] in ("connecting", "streaming")
        assert a2["status"]["state"] == "failed"
        assert "credential 'alpha' is in use by stream 'a1'" in a2["status"]["last_error"]
        await stop(proc)
    finally:
        proc.kill()
    assert len([r for r in fake_api.log if r.endpoint in ("filter", "sample")]) == 1
    assert "stream_failed" in log_text(tmp_path)


async def test_the_os_lock_keeps_a_stream_process_off_a_daemon_credential(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", {"name": "f1", "kind": "filter", "track": ["x"]},
                         201)
            await api.ok("POST", "/streams", {"name": "s1", "kind": "sample", "active": False},
                         201)
        await wait_until(lambda: len(live(fake_api)) == 1)
        other = SfmdProcess("stream", "s1", "--config", str(config), cwd=tmp_path)
        assert await other.wait(10) == 1
        assert "in use by stream 'f1'" in other.stderr
        await stop(proc)
    finally:
        proc.kill()


async def test_a_second_daemon_is_refused_and_a_stale_socket_replaced(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    sock_path = tmp_path / "sfmd.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed daemon leaves
    proc = await start_daemon(tmp_path, config)
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
        second = SfmdProcess("run", "--config", str(config), cwd=tmp_path)
        assert await second.wait(10) == 1
        assert "another sfmd is already running" in second.stderr
        async with Api(sock_path) as api:  # the first one still owns its socket
            assert (await api.ok("GET", "/health"))["status"] == "ok"
        await stop(proc)
    finally:
        proc.kill()


async def test_socket_mode_follows_the_config(tmp_path: Path, fake_api: FakeAPI) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    config.write_text(config.read_text().replace("[twitter]", 'socket_mode = "0600"\n[twitter]'))
    proc = await start_daemon(tmp_path, config)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "sfmd.sock").st_mode) == 0o600
        await stop(proc)
    finally:
        proc.kill()


async def test_sigterm_under_load_publishes_everything_within_10s(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    names = [f"c{i}" for i in range(8)]
    creds = tmp_path / "credentials.toml"
    creds.write_text(CREDENTIALS_TOML + "".join(
        f'[{n}]\nconsumer_key = "k{n}"\nconsumer_secret = "s{n}"\naccess_token = "t{n}"\n'
        f'access_token_secret = "ts{n}"\n' for n in names))
    fake = FakeAPI(load_credentials(creds), message_size=4800)  # flat out
    await fake.start()
    try:
        config = write_daemon_config(tmp_path, fake)
        proc = await start_daemon(tmp_path, config)
        try:
            async with Api(tmp_path / "sfmd.sock") as api:
                for n in names:
                    await api.ok("POST", "/streams", {"name": n, "kind": "sample",
                                                      "credential": n}, 201)
                counted: dict[str, int] = {}
                deadline = time.monotonic() + 20
                while not (len(counted) == len(names) and min(counted.values()) > 300):
                    assert time.monotonic() < deadline, counted
                    listed = await api.ok("GET", "/streams")
                    counted = {s["name"]: s["status"]["messages"] for s in listed["streams"]}
            started = time.monotonic()
            await stop(proc)
            assert time.monotonic() - started < 10
        finally:
            proc.kill()
    finally:
        await fake.stop()
    data = tmp_path / "data"
    assert not list(data.rglob("*.part"))
    for n in names:  # everything read before the signal was published
        assert sum(e["messages"] for e in manifest(data, n)) >= counted[n]


async def test_a_crashed_stream_task_is_logged_and_restarted(
    tmp_path: Path, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, so a bug can be planted: the first read raises something unexpected."""
    fake_api.configure(rate=50)
    config = load_config(write_daemon_config(tmp_path, fake_api, timing={
        "http_backoff_start": 0.3}))
    original = Stream._read
    calls = {"n": 0}

    async def buggy(self: Stream, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("planted bug")
        await original(self, *args)

    monkeypatch.setattr(Stream, "_read", buggy)
    async with daemon_in_process(config, log_path(tmp_path)):
        async with Api(config.daemon.control_socket) as api:
            await api.ok("POST", "/streams", {"name": "f1", "kind": "filter", "track": ["x"]},
                         201)
            other = await api.ok("POST", "/streams", {"name": "s1", "kind": "sample",
                                                      "credential": "beta"}, 201)
            assert other["status"]["state"] in ("connecting", "streaming")
            await wait_until(lambda: calls["n"] >= 3 and len(live(fake_api)) == 2,
                             what="the crashed stream back, the other never down")
            shown = await api.ok("GET", "/streams/f1")
            assert shown["status"]["state"] in ("connecting", "streaming")
    crashed = [json.loads(line) for line in log_path(tmp_path).open()
               if '"stream_crashed"' in line]
    assert len(crashed) == 1 and crashed[0]["stream"] == "f1"
    assert "planted bug" in crashed[0]["exception"]  # the traceback is in the log
    # The other stream's single connection was never interrupted by the crash.
    samples = [r for r in fake_api.log if r.endpoint == "sample"]
    assert len(samples) == 1


async def test_a_delete_judges_no_other_streams_credential_again(
    tmp_path: Path, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream's credential is judged once per spec and credentials file: a DELETE forgets
    the deleted stream's verdict, not every stream's (at 5,000 streams, judging them all again
    was most of a DELETE)."""
    config = load_config(write_daemon_config(tmp_path, fake_api))
    judged: list[str] = []
    original = TwitterSource.credential_problem

    def counted(self: TwitterSource, spec: StreamSpec, credentials: Any) -> str | None:
        judged.append(spec.name)
        return original(self, spec, credentials)

    monkeypatch.setattr(TwitterSource, "credential_problem", counted)
    async with daemon_in_process(config, log_path(tmp_path)):
        async with Api(config.daemon.control_socket) as api:
            await api.ok("POST", "/streams", {"name": "f1", "kind": "filter", "track": ["x"]},
                         201)
            await api.ok("POST", "/streams", {"name": "s1", "kind": "sample",
                                              "credential": "beta"}, 201)
            before = len(judged)
            await api.ok("DELETE", "/streams/s1", status=204)
            assert judged[before:] == []
            await api.ok("PATCH", "/streams/f1", {"track": ["y"]})
            assert "f1" in judged[before:]  # a new spec is judged (the check can see a call)


async def test_a_pass_after_one_change_reads_only_that_stream(
    tmp_path: Path, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change through the API is followed by a pass over the changed stream alone (the
    others are as the last pass left them: at 5,000 streams a whole pass was 9 of a PATCH's
    11 ms on the loop); the streams still do what the change asked. A reload, which may
    concern any stream, is followed by a whole pass."""
    config = load_config(write_daemon_config(tmp_path, fake_api, timing={
        "reconcile_interval": 3600}))  # no timed pass in between
    read: list[str] = []
    original = Daemon._runnable_one

    def counted(self: Daemon, spec: StreamSpec, without: str | None = None) -> StreamSpec:
        read.append(spec.name)
        return original(self, spec, without)

    monkeypatch.setattr(Daemon, "_runnable_one", counted)

    def tracks() -> list[str]:
        return sorted(r.params.get("track", "") for r in live(fake_api))

    async with daemon_in_process(config, log_path(tmp_path)):
        async with Api(config.daemon.control_socket) as api:
            for name, credential in (("f1", "alpha"), ("f2", "beta")):
                await api.ok("POST", "/streams", {"name": name, "kind": "filter",
                                                  "track": [name], "credential": credential},
                             201)
            await wait_until(lambda: tracks() == ["f1", "f2"])
            changes: list[tuple[str, str, dict[str, Any] | None, list[str]]] = [
                ("PATCH", "f1", {"track": ["cats"]}, ["cats", "f2"]),
                ("PATCH", "f2", {"active": False}, ["cats"]),
                ("PATCH", "f2", {"active": True}, ["cats", "f2"]),
                ("POST", "reload", None, ["cats", "f2"]),
                ("DELETE", "f1", None, ["f2"]),
            ]
            for method, name, body, after in changes:
                del read[:]
                if name == "reload":
                    await api.ok("POST", "/reload", {})
                    assert read == ["f1", "f2"]  # a whole pass
                    continue
                await api.ok(method, f"/streams/{name}", body,
                             status=204 if method == "DELETE" else 200)
                assert read == ([name] if method != "DELETE" else []), (method, body)
                await wait_until(lambda after=after: tracks() == after, what=str(after))


async def test_two_hundred_streams_while_the_api_answers(tmp_path: Path) -> None:
    n = 200
    names = [f"s{i:03d}" for i in range(n)]
    creds = tmp_path / "credentials.toml"
    creds.write_text(CREDENTIALS_TOML + "".join(
        f'[{x}]\nconsumer_key = "k{x}"\nconsumer_secret = "s{x}"\naccess_token = "t{x}"\n'
        f'access_token_secret = "ts{x}"\n' for x in names))
    creds.chmod(0o600)
    fake = FakeAPI(load_credentials(creds), message_size=1000, rate=2, keepalive_interval=1)
    await fake.start()
    try:
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "streams.json").write_text(json.dumps({"version": 1, "streams": [
            {"name": x, "kind": "sample", "credential": x} for x in names]}))
        config = write_daemon_config(tmp_path, fake, timing={"start_jitter": 2})
        proc = await start_daemon(tmp_path, config)
        try:
            latencies: list[float] = []
            async with Api(tmp_path / "sfmd.sock") as api:

                async def all_streaming() -> bool:
                    t = time.monotonic()
                    listed = await api.ok("GET", "/streams")
                    latencies.append(time.monotonic() - t)
                    return all(s["status"]["state"] == "streaming" and s["status"]["messages"]
                               for s in listed["streams"])

                deadline = time.monotonic() + 60
                while not await all_streaming():
                    assert time.monotonic() < deadline, "not all 200 streaming within 60 s"
                    t = time.monotonic()
                    await api.ok("GET", "/health")
                    latencies.append(time.monotonic() - t)
            assert len({r.credential for r in live(fake)}) == n
            assert max(latencies) < 5  # answered throughout (speed lives in bench/)
            await stop(proc)
        finally:
            proc.kill()
    finally:
        await fake.stop()


def test_a_torn_registry_stops_startup_plainly(tmp_path: Path) -> None:
    (tmp_path / "streams.json").write_text('{"version": 1, "streams": [')
    with pytest.raises(RegistryError, match="not valid JSON"):
        Registry.load(tmp_path)


def test_the_open_files_limit_is_lifted_for_many_streams() -> None:
    code = (
        "import resource\n"
        "from sfmd.cli import raise_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "raise_file_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    soft, hard = (int(x) for x in done.stdout.splitlines()[-1].split())
    assert soft > 256 and (soft == hard or hard == resource.RLIM_INFINITY)
