"""Process isolation end to end: the real daemon drives a real supervisord over XML-RPC."""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
from pathlib import Path

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import start_daemon, stop
from tests.helpers.fakeapi import live, sent_messages, stream_connections
from tests.helpers.files import messages_on_disk, stored_messages
from tests.helpers.supervisord import Supervisord
from tests.helpers.waits import wait_until

PROGRAM = "sfm-stream-p1"
P1 = {"name": "p1", "kind": "filter", "track": ["archive"], "credential": "alpha",
      "isolation": "process"}


def isolated_config(tmp_path: Path, fake_api: FakeAPI, sd: Supervisord) -> Path:
    config = write_daemon_config(tmp_path, fake_api)
    user = pwd.getpwuid(os.getuid()).pw_name
    config.write_text(config.read_text() + (
        f'[supervisor]\nserver_url = "{sd.server_url}"\nconf_dir = "{sd.conf_dir}"\n'
        f'user = "{user}"\n'))
    return config


def program_state(sd: Supervisord) -> str | None:
    for info in sd.rpc().supervisor.getAllProcessInfo():
        if info["name"] == PROGRAM:
            return str(info["statename"])
    return None


async def test_an_isolated_stream_s_life_and_moves_between_modes(
    tmp_path: Path, fake_api: FakeAPI, supervisord: Supervisord
) -> None:
    fake_api.configure(total=30)  # each connection: 30 messages, then only keep-alives
    config = isolated_config(tmp_path, fake_api, supervisord)
    data = tmp_path / "data"

    def all_stored() -> bool:  # everything fully sent so far is on disk: safe to move
        sent = sum(r.sent_count for r in stream_connections(fake_api))
        return messages_on_disk(data, "p1") == sent

    proc = await start_daemon(tmp_path, config)
    conf = supervisord.conf_dir / f"{PROGRAM}.conf"
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", P1, status=201)
            assert conf.exists() and "archive" not in conf.read_text()  # no filter text
            await wait_until(lambda: program_state(supervisord) == "RUNNING", timeout=15)
            await wait_until(lambda: len(live(fake_api)) == 1, timeout=15)
            assert live(fake_api)[0].params["track"] == "archive"

            async def counted() -> int:
                shown = await api.ok("GET", "/streams/p1")
                assert shown["status"]["process"]["program"] == PROGRAM
                return int(shown["status"]["messages"])

            deadline = asyncio.get_running_loop().time() + 15
            while await counted() == 0:  # the stream process reports its own counters
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
            shown = await api.ok("GET", "/streams/p1")
            assert shown["status"]["state"] == "streaming"
            # supervisord's view: STARTING for startsecs, then RUNNING, with the stream's pid.
            assert shown["status"]["process"]["state"] in ("connecting", "streaming")
            assert shown["status"]["process"]["pid"] == supervisord.info(PROGRAM)["pid"]

            # A change Twitter would not see restarts nothing.
            await api.ok("PATCH", "/streams/p1", {"track": ["archive"]})
            await wait_until(all_stored)
            # A wire change restarts that program only: a new connection, new parameters.
            await api.ok("PATCH", "/streams/p1", {"track": ["archive", "museum"]})
            await wait_until(lambda: len(stream_connections(fake_api)) == 2
                             and len(live(fake_api)) == 1, timeout=20)
            assert live(fake_api)[0].params["track"] == "archive,museum"

            # Process → task → process while the API watches: never two at once.
            await wait_until(all_stored)
            await api.ok("PATCH", "/streams/p1", {"isolation": "task"})
            await wait_until(lambda: len(stream_connections(fake_api)) == 3
                             and len(live(fake_api)) == 1, timeout=20)
            assert not conf.exists() and program_state(supervisord) is None
            await wait_until(all_stored)
            await api.ok("PATCH", "/streams/p1", {"isolation": "process"})
            await wait_until(lambda: len(stream_connections(fake_api)) == 4
                             and len(live(fake_api)) == 1, timeout=20)
            assert conf.exists()

            # Stop: the program goes, its conf goes, its file is published.
            await wait_until(all_stored)
            await api.ok("POST", "/streams/p1/stop")
            assert program_state(supervisord) is None and not conf.exists()
            await wait_until(lambda: not live(fake_api), timeout=15)
            status, _ = await api.call("DELETE", "/streams/p1")
            assert status == 204
        await stop(proc)
    finally:
        proc.kill()
    for a, b in itertools.pairwise(stream_connections(fake_api)):
        assert a.closed is not None and a.closed <= b.opened, "two connections on one token"
    assert not any(r.close_reason == "replaced" for r in fake_api.log)
    assert not list(data.rglob("*.part"))
    # Nothing the API fully sent was lost across the restarts and moves, nothing doubled.
    assert stored_messages(data, "p1") == sent_messages(fake_api)
    assert len(sent_messages(fake_api)) == 30 * 4


async def test_a_change_made_while_supervisord_is_down_is_applied_when_it_returns(
    tmp_path: Path, fake_api: FakeAPI, idle_supervisord: Supervisord
) -> None:
    config = isolated_config(tmp_path, fake_api, idle_supervisord)
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            created = await api.ok("POST", "/streams", P1, status=201)
            assert "waiting for supervisord" in created["status"]["last_error"]
            assert (idle_supervisord.conf_dir / f"{PROGRAM}.conf").exists()
            idle_supervisord.start()
            # The daemon's timer (reconcile_interval = 1 s here) applies it; no request needed.
            await wait_until(lambda: len(live(fake_api)) == 1, timeout=20)
            await wait_until(lambda: program_state(idle_supervisord) == "RUNNING")
            shown = await api.ok("GET", "/streams/p1")
            assert shown["status"]["process"]["state"] in ("connecting", "streaming")
            await api.ok("POST", "/streams/p1/stop")
        await stop(proc)
    finally:
        proc.kill()


async def test_a_reload_restarts_only_the_programs_whose_keys_changed(
    tmp_path: Path, fake_api: FakeAPI, supervisord: Supervisord
) -> None:
    """An isolated stream reads the credentials file when its process starts: new keys for
    its credential restart its program, the others' keep running."""
    config = isolated_config(tmp_path, fake_api, supervisord)
    good = (tmp_path / "credentials.toml").read_text()  # as the config helper left it
    (tmp_path / "credentials.toml").write_text(
        good.replace('"ats-alpha-SECRET"', '"ats-alpha-MISTYPED"'))
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", P1, status=201)
            await api.ok("POST", "/streams", {"name": "p2", "kind": "sample", "credential":
                                              "beta", "isolation": "process"}, status=201)
            await wait_until(lambda: any(r.status == 401 and r.params.get("track")
                                         for r in stream_connections(fake_api)), timeout=20)
            await wait_until(lambda: any(r.status == 200 and r.closed is None
                                         and r.endpoint == "sample" for r in live(fake_api)),
                             timeout=20)
            p1_pid = supervisord.info(PROGRAM)["pid"]
            p2_pid = supervisord.info("sfm-stream-p2")["pid"]
            (tmp_path / "credentials.toml").write_text(good)
            reloaded = await api.ok("POST", "/reload")
            assert reloaded["credentials"]["changed"] == ["alpha"]
            await wait_until(lambda: any(r.status == 200 and r.endpoint == "filter"
                                         for r in live(fake_api)), timeout=20)
            assert supervisord.info(PROGRAM)["pid"] != p1_pid
            assert supervisord.info("sfm-stream-p2")["pid"] == p2_pid
            await api.ok("POST", "/streams/p1/stop")
            await api.ok("POST", "/streams/p2/stop")
        await stop(proc)
    finally:
        proc.kill()
    assert "MISTYPED" not in (tmp_path / "log" / "sfmd.log").read_text()
