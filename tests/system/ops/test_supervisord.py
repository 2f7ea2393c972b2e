"""A real supervisord: the XML-RPC client, the update dance that touches only our programs,
the set-ups docs/supervisor.md documents, and the real daemon restarted after SIGKILL."""

from __future__ import annotations

import asyncio
import configparser
import grp
import os
import shlex
import signal
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from sfmd.fake import FakeAPI
from sfmd.ops.confs import STOPWAITSECS, conf_path, sync_confs
from sfmd.ops.supervisord import (
    CantReread,
    Fault,
    SupervisorClient,
    SupervisorError,
    SupervisorFault,
    SupervisorUnavailable,
    apply,
    waiting_reason,
)
from tests.helpers.api import Api, wait_for_health
from tests.helpers.config import write_daemon_config
from tests.helpers.confs import (
    PREFIX,
    SFMD,
    SLEEPER,
    TEST_USER,
)
from tests.helpers.fakeapi import live
from tests.helpers.files import manifest, part_lines
from tests.helpers.logs import log_path
from tests.helpers.paths import REPO
from tests.helpers.supervisord import (
    MAIN_CONF_HEAD,
    Supervisord,
    add_other_program,
    our_conf,
    pid_alive,
    wait_pid,
)
from tests.helpers.waits import wait_until


@pytest.fixture
async def client(supervisord: Supervisord) -> AsyncIterator[SupervisorClient]:
    async with SupervisorClient(supervisord.server_url) as c:
        yield c


async def test_apply_adds_changes_and_removes_only_our_programs(
    supervisord: Supervisord, client: SupervisorClient
) -> None:
    sd = supervisord
    add_other_program(sd)
    other_pid = await wait_pid(client, "other")
    other_start = sd.info("other")["start"]
    (sd.root / "log").mkdir()

    # added
    sync_confs(sd.conf_dir, PREFIX, {"news": our_conf(sd, "news", SFMD_SETTINGS="1")})
    report = await apply(client, PREFIX)
    assert report == {"added": ["sfm-stream-news"], "changed": [], "removed": [], "errors": {}}
    first = await wait_pid(client, "sfm-stream-news")
    assert await apply(client, PREFIX) == {
        "added": [],
        "changed": [],
        "removed": [],
        "errors": {},
    }  # idempotent

    # changed: stopped, removed, added back, so a new process runs
    sync_confs(sd.conf_dir, PREFIX, {"news": our_conf(sd, "news", SFMD_SETTINGS="2")})
    report = await apply(client, PREFIX)
    assert report["changed"] == ["sfm-stream-news"] and not report["errors"]
    second = await wait_pid(client, "sfm-stream-news", not_pid=first)
    assert not pid_alive(first)

    # removed: stopped and forgotten
    sync_confs(sd.conf_dir, PREFIX, {})
    report = await apply(client, PREFIX)
    assert report["removed"] == ["sfm-stream-news"] and not report["errors"]
    with pytest.raises(SupervisorFault) as gone:
        await client.get_process_info("sfm-stream-news")
    assert (gone.value.code, gone.value.name) == (Fault.BAD_NAME, "BAD_NAME")
    assert not pid_alive(second)

    # Changed or removed, the unrelated program is still none of apply's business.
    (sd.conf_dir / "other.conf").write_text(
        f"[program:other]\ncommand={shlex.join(SLEEPER)} changed\n"
    )
    assert await apply(client, PREFIX) == {"added": [], "changed": [], "removed": [], "errors": {}}
    (sd.conf_dir / "other.conf").unlink()
    assert await apply(client, PREFIX) == {"added": [], "changed": [], "removed": [], "errors": {}}

    # the unrelated program never noticed: same process, never stopped
    info = sd.info("other")
    assert (info["statename"], info["pid"], info["start"]) == ("RUNNING", other_pid, other_start)
    assert "stopped: other" not in sd.log.read_text()


async def test_a_broken_conf_elsewhere_is_reported_and_ours_keep_running(
    supervisord: Supervisord, client: SupervisorClient
) -> None:
    sd = supervisord
    (sd.root / "log").mkdir()
    ours = {"news": our_conf(sd, "news")}
    sync_confs(sd.conf_dir, PREFIX, ours)
    await apply(client, PREFIX)
    pid = await wait_pid(client, "sfm-stream-news")
    broken = sd.conf_dir / "hand-made.conf"
    broken.write_text("[program:hand-made]\nautostart=true\n")  # no command
    with pytest.raises(CantReread) as refused:
        await apply(client, PREFIX)
    assert refused.value.code == Fault.CANT_REREAD == 92
    assert "hand-made.conf" in str(refused.value) and "fixed" in str(refused.value)
    assert sd.info("sfm-stream-news")["pid"] == pid
    assert conf_path(sd.conf_dir, PREFIX, "news").read_text() == ours["news"]
    broken.unlink()
    assert not (await apply(client, PREFIX))["errors"]
    # A temp file left by a crash mid-write is garbage, but no include glob reaches it.
    (sd.conf_dir / f".{PREFIX}news.conf.x1y2.tmp").write_text("[program:torn\ncomm")
    assert await apply(client, PREFIX) == {"added": [], "changed": [], "removed": [], "errors": {}}


async def test_client_calls_signal_and_info(
    supervisord: Supervisord, client: SupervisorClient
) -> None:
    assert (await client.get_state())["statename"] == "RUNNING"
    assert await waiting_reason(client) is None
    add_other_program(supervisord)
    pid = await wait_pid(client, "other")
    assert [i["name"] for i in await client.get_all_process_info()] == ["other"]
    assert await client.stop_process("other")
    with pytest.raises(SupervisorFault) as refused:
        await client.signal_process("other", "HUP")
    assert refused.value.code == Fault.NOT_RUNNING
    assert await client.start_process("other", wait=False)
    await wait_pid(client, "other", not_pid=pid)
    assert await client.signal_process("other", "TERM")
    with pytest.raises(SupervisorFault) as refused:
        await client.add_process_group("nope")
    assert refused.value.name == "BAD_NAME"


async def test_an_unreachable_supervisord_fails_fast_and_says_waiting(
    idle_supervisord: Supervisord,
) -> None:
    sd = idle_supervisord
    sd.start()
    sd.stop()  # leaves no socket; a stale one is tried below
    cases = [sd.server_url]
    stale = sd.root / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a socket file nothing listens on: refused at once
    cases.append(f"unix://{stale}")
    for url in cases:
        async with SupervisorClient(url) as client:
            started = time.monotonic()
            with pytest.raises(SupervisorUnavailable) as down:
                await client.get_state()
            assert time.monotonic() - started < 1.0
            assert isinstance(down.value, ConnectionError)
            assert url in str(down.value)
            reason = await waiting_reason(client)
            assert reason is not None and reason.startswith("waiting for supervisord")

    # A server that accepts and never answers: the call's own deadline ends it.
    with socket.socket(socket.AF_UNIX) as silent:
        path = sd.root / "silent.sock"
        silent.bind(str(path))
        silent.listen()
        async with SupervisorClient(f"unix://{path}", timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(SupervisorUnavailable, match="did not answer"):
                await client.get_state()
            assert time.monotonic() - started < 1.0


async def test_http_with_a_login(idle_supervisord: Supervisord) -> None:
    sd = idle_supervisord
    user, password = sd.http_auth = ("admin", "pa:ss%w")
    sd.start()
    good = sd.http_url.replace("//", f"//{user}:{quote(password, safe='')}@")
    async with SupervisorClient(good) as client:
        assert (await client.get_state())["statename"] == "RUNNING"
    async with SupervisorClient(good.replace("pa", "no")) as client:
        with pytest.raises(SupervisorError, match="HTTP 401") as refused:
            await client.get_state()
    assert "ss%w" not in str(refused.value) and "no%3Ass" not in str(refused.value)


async def test_http_password_stays_out_of_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    async with SupervisorClient(f"http://admin:hunter2@127.0.0.1:{port}") as client:
        with pytest.raises(SupervisorUnavailable) as down:
            await client.get_state()
    assert "hunter2" not in str(down.value)


def daemon_program(config: Path, folder: Path) -> str:
    """supervisor.d/sfmd.conf, with only what must differ in a test changed: the command,
    the user, the folders."""
    shipped = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    shipped.read(REPO / "supervisor.d" / "sfmd.conf")
    settings = dict(shipped.items("program:sfmd"))
    assert settings["stopwaitsecs"] == "30" and settings["user"] == "sfm"
    settings.update(
        command=shlex.join([*SFMD, "run", "--config", str(config)]),
        user=TEST_USER,
        directory=str(folder),
        stdout_logfile=str(folder / "sfmd.out"),
        environment=f'HOME="{folder}"',
    )
    return "[program:sfmd]\n" + "".join(f"{k}={v}\n" for k, v in settings.items())


async def test_the_daemon_under_supervisord_comes_back_after_sigkill(
    supervisord: Supervisord, tmp_path: Path, fake_api: FakeAPI
) -> None:
    sd = supervisord
    fake_api.configure(rate=50)
    config = write_daemon_config(tmp_path, fake_api)
    (sd.conf_dir / "sfmd.conf").write_text(daemon_program(config, tmp_path))
    sock = tmp_path / "sfmd.sock"
    data = tmp_path / "data"
    async with SupervisorClient(sd.server_url) as client:
        assert (await apply(client, "sfmd"))["added"] == ["sfmd"]
        first = await wait_pid(client, "sfmd")
        await wait_for_health(sock)
        async with Api(sock) as api:
            await api.ok(
                "POST",
                "/streams",
                {"name": "f1", "kind": "filter", "track": ["a", "b c"]},
                status=201,
            )
        await wait_until(lambda: len(live(fake_api)) == 1, what="the stream's connection")
        [before] = live(fake_api)
        await wait_until(lambda: part_lines(data) > 0, what="lines in the open .part file")
        [part] = list(data.rglob("*.part"))
        # A crash of a daemon that was up: RUNNING is reached after the shipped startsecs.
        deadline = time.monotonic() + 10
        while (await client.get_process_info("sfmd"))["statename"] != "RUNNING":
            assert time.monotonic() < deadline, "sfmd never reached RUNNING"
            await asyncio.sleep(0.1)

        os.kill(first, signal.SIGKILL)
        second = await wait_pid(client, "sfmd", not_pid=first)
        await wait_for_health(sock)  # the stale socket was replaced
        await wait_until(
            lambda: any(r.conn > before.conn for r in live(fake_api)),
            what="a new connection after the restart",
        )
        after = [r for r in live(fake_api) if r.conn > before.conn]
        assert [(r.endpoint, r.params) for r in after] == [(before.endpoint, before.params)]
        await wait_until(lambda: bool(manifest(data, "f1")), what="the leftover's publication")
        published = [e["file"] for e in manifest(data, "f1")]
        assert str(part.relative_to(data)).removesuffix(".part") in published
        assert not part.exists()
        assert (await client.get_process_info("sfmd"))["pid"] == second
        assert "exited: sfmd (terminated by SIGKILL; not expected)" in sd.log.read_text()

        # The documented way to reopen the logs, with the real supervisorctl.
        ctl = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "-s",
            sd.server_url,
            "signal",
            "HUP",
            "sfmd",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await ctl.communicate()
        assert ctl.returncode == 0, out
        log = log_path(tmp_path)
        await wait_until(lambda: "logs_reopened" in log.read_text(), what="logs_reopened")
        # supervisord's own stop is sfmd's clean stop: every open file published.
        results = await client.stop_process_group("sfmd")
        assert [r["status"] for r in results] == [Fault.SUCCESS]
    assert not list(data.rglob("*.part"))
    assert STOPWAITSECS > 10


def documented_block(tag: str) -> str:
    """The ```ini block after `<!-- tested: TAG -->` in docs/supervisor.md."""
    text = (REPO / "docs" / "supervisor.md").read_text()
    after = text.split(f"<!-- tested: {tag} -->\n", 1)[1]
    assert after.startswith("```ini\n"), tag
    return after[len("```ini\n") :].split("```", 1)[0]


def moved(text: str, *pairs: tuple[str, str | Path]) -> str:
    """The documented conf with its system paths moved into a temp folder, in this order."""
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, str(new))
    return text


async def apply_one_of_ours(sd: Supervisord, conf_dir: Path) -> None:
    (sd.root / "log").mkdir(exist_ok=True)
    sync_confs(conf_dir, PREFIX, {"news": our_conf(sd, "news")})
    async with SupervisorClient(sd.server_url) as client:
        assert (await apply(client, PREFIX))["added"] == [PREFIX + "news"]
        await wait_pid(client, PREFIX + "news")


async def test_the_documented_shared_supervisord_settings(idle_supervisord: Supervisord) -> None:
    sd = idle_supervisord
    block = documented_block("supervisord.conf")
    assert "777" not in block
    group = grp.getgrgid(os.getgid()).gr_name
    text = MAIN_CONF_HEAD.format(root=sd.root) + moved(
        block,
        ("/var/run/supervisor.sock", sd.socket),
        ("root:sfm", f"{TEST_USER}:{group}"),
        ("/etc/supervisor/conf.d", sd.conf_dir),
        ("/etc/supervisor/sfm.d", sd.root / "sfm.d"),
    )
    (sd.root / "sfm.d").mkdir()
    sd.start(conf_text=text)
    assert stat.S_IMODE(sd.socket.stat().st_mode) == 0o770
    await apply_one_of_ours(sd, sd.root / "sfm.d")


async def test_the_shipped_own_supervisord_for_sfm(idle_supervisord: Supervisord) -> None:
    sd = idle_supervisord
    for folder in ("log", "run", "etc.d", "sfm.d"):
        (sd.root / folder).mkdir()
    sd.socket = sd.root / "run" / "supervisor.sock"
    sd.server_url = f"unix://{sd.socket}"
    sd.log = sd.root / "log" / "supervisord.log"
    text = moved(
        (REPO / "etc" / "supervisord-sfm.conf").read_text(),
        ("user = sfm", f"user = {TEST_USER}"),
        ("/var/log/sfm", sd.root / "log"),
        ("/run/sfm-supervisord", sd.root / "run"),
        ("/etc/sfm/supervisord.d", sd.root / "etc.d"),
        ("/var/lib/sfm/supervisor.d", sd.root / "sfm.d"),
    )
    sd.start(conf_text=text)
    mode = sd.socket.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o770 and mode.st_uid == os.getuid()
    await apply_one_of_ours(sd, sd.root / "sfm.d")
