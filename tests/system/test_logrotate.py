"""Logs that survive rotation: the real daemon, real renames, SIGHUP, and real logrotate.

Log lines come from API changes: each answered PATCH of a stream's track logs one
`api_change` line naming a unique phrase, so every line can be counted exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import CREDENTIALS_TOML, write_daemon_config
from tests.helpers.confs import TEST_USER
from tests.helpers.daemon import start_daemon, stop
from tests.helpers.logs import log_path
from tests.helpers.paths import REPO
from tests.helpers.waits import wait_until

SHIPPED = REPO / "etc" / "logrotate.d" / "sfmd"
LOGROTATE = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
needs_logrotate = pytest.mark.skipif(LOGROTATE is None, reason="logrotate not installed")


@dataclass
class Changes:
    """PATCHes stream `s1` over and over; `done` holds (n, sent, answered) per answered one."""

    api: Api
    done: list[tuple[int, float, float]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            sent = time.monotonic()
            await self.api.ok("PATCH", "/streams/s1", {"track": [f"w{n}"]})
            self.done.append((n, sent, time.monotonic()))

    async def more(self, count: int, what: str) -> None:
        """Wait until `count` more changes were answered: log lines keep flowing meanwhile."""
        target = len(self.done) + count
        await wait_until(lambda: len(self.done) >= target, 10, what)

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def changing(socket_path: Path) -> AsyncIterator[Changes]:
    """A stream to change (inactive: no connection, so changes are cheap) and the changer."""
    async with Api(socket_path) as api:
        await api.ok(
            "POST",
            "/streams",
            {
                "name": "s1",
                "kind": "filter",
                "track": ["w0"],
                "credential": "alpha",
                "active": False,
            },
            status=201,
        )
        changes = Changes(api)
        task = asyncio.create_task(changes.run())
        try:
            await changes.more(20, "changes before any rotation")
            yield changes
        finally:
            changes.stop()
            await task


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file as JSON (gzip or not); a torn or non-JSON line fails here."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert raw.endswith(b"\n"), f"{path.name} ends mid-line"
    out = []
    for number, line in enumerate(raw.decode().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line[:200]!r}") from None
    return out


def changes_by_file(*paths: Path) -> dict[int, list[str]]:
    """Change number → the names of the files its api_change line is in (once per line)."""
    where: dict[int, list[str]] = {}
    for path in paths:
        for event in read_lines(path):
            if event.get("event") == "api_change" and event.get("method") == "PATCH":
                n = int(event["change"]["track"][0].removeprefix("w"))
                where.setdefault(n, []).append(path.name)
    return where


def assert_each_logged_once(changes: Changes, where: dict[int, list[str]]) -> None:
    made = [n for n, _, _ in changes.done]
    missing = [n for n in made if n not in where]
    doubled = {n: files for n, files in where.items() if len(files) != 1}
    assert not missing, f"{len(missing)} of {len(made)} changes never logged: {missing[:10]}"
    assert not doubled, f"changes logged more than once: {dict(list(doubled.items())[:5])}"


# -- what logrotate does, by hand ----------------------------------------------------------


async def test_rename_then_sighup_loses_and_repeats_no_line(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, fake_api))
    log = log_path(tmp_path)
    rotated = log.with_name("sfmd.log.1")
    try:
        async with changing(tmp_path / "sfmd.sock") as changes:
            log.rename(rotated)  # logrotate's rename, with changes in flight
            renamed_at = time.monotonic()
            await changes.more(20, "changes between the rename and the HUP")
            proc.signal(signal.SIGHUP)
            await wait_until(
                lambda: log.exists() and '"logs_reopened"' in log.read_text(),
                10,
                "logs_reopened in the new sfmd.log",
            )
            reopened_at = time.monotonic()
            await changes.more(30, "changes after the HUP")
        await stop(proc)
    finally:
        proc.kill()

    where = changes_by_file(rotated, log)
    assert_each_logged_once(changes, where)
    before = [n for n, _, answered in changes.done if answered < renamed_at]
    after = [n for n, sent, _ in changes.done if sent > reopened_at]
    assert len(before) >= 20 and len(after) >= 30
    assert all(where[n] == ["sfmd.log.1"] for n in before), "a line from before the rename moved"
    assert all(where[n] == ["sfmd.log"] for n in after), "a line after the HUP went to the old file"
    assert "logs_reopened" not in {e["event"] for e in read_lines(rotated)}
    assert read_lines(log)[-1]["event"] == "stopped"


# -- the shipped logrotate config, run for real --------------------------------------------


def shipped_config(tmp_path: Path, log_dir: Path, own_supervisord: Path | None = None) -> Path:
    """etc/logrotate.d/sfmd, pointed at `log_dir` and run as whoever runs the tests; sfm's own
    supervisord's config is `own_supervisord` (default: a path that does not exist)."""
    text = SHIPPED.read_text()
    head = "/var/log/sfm/sfmd.log /var/log/sfm/stream-*.log {"
    assert head in text and "    su sfm sfm\n" in text
    assert text.count("/etc/sfm/supervisord.conf") == 3  # the comment, the test, the call
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout
    text = text.replace(head, head.replace("/var/log/sfm", str(log_dir)))
    text = text.replace("    su sfm sfm\n", f"    su {user.strip()} {group.strip()}\n")
    text = text.replace(
        "/etc/sfm/supervisord.conf", str(own_supervisord or tmp_path / "no-such-supervisord.conf")
    )
    path = tmp_path / "logrotate.conf"
    path.write_text(text)
    path.chmod(0o644)  # logrotate refuses a config others may write
    return path


async def logrotate(conf: Path, state: Path, path_env: str) -> tuple[int, str]:
    """`logrotate -f` without blocking the loop, so changes keep flowing while it runs."""
    assert LOGROTATE is not None
    proc = await asyncio.create_subprocess_exec(
        LOGROTATE,
        "-f",
        "-s",
        str(state),
        str(conf),
        env={**os.environ, "PATH": path_env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


HUP_RECORDER = """
import pathlib, signal, sys
out = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *_: out.open("a").write("HUP\\n"))
out.write_text("ready\\n")
while True:
    signal.pause()
"""


def supervisord_conf(tmp_path: Path, config: Path) -> Path:
    """sfmd as program `sfmd`, an isolated-stream stand-in and an unrelated program."""
    (tmp_path / "hup_recorder.py").write_text(HUP_RECORDER)
    py = sys.executable
    programs = {
        "sfmd": f"{py} -m sfmd run --config {config}",
        "sfm-stream-x": f"{py} {tmp_path / 'hup_recorder.py'} {tmp_path / 'hup-stream.txt'}",
        "unrelated": f"{py} {tmp_path / 'hup_recorder.py'} {tmp_path / 'hup-unrelated.txt'}",
    }
    lines = [
        "[supervisord]",
        "nodaemon = true",
        f"logfile = {tmp_path / 'supervisord.log'}",
        f"pidfile = {tmp_path / 'supervisord.pid'}",
        f"childlogdir = {tmp_path}",
        "[unix_http_server]",
        f"file = {tmp_path / 'supervisor.sock'}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]",
        f"serverurl = unix://{tmp_path / 'supervisor.sock'}",
    ]
    for name, command in programs.items():
        lines += [
            f"[program:{name}]",
            f"command = {command}",
            f"directory = {tmp_path}",
            "startsecs = 0",
            "autorestart = false",
            "stopwaitsecs = 10",
            f"stderr_logfile = {tmp_path / (name + '.err')}",
        ]
    path = tmp_path / "supervisord.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


async def socket_answers(socket_path: Path) -> bool:
    try:
        async with Api(socket_path) as api:
            return (await api.call("GET", "/health"))[0] == 200
    except (aiohttp.ClientError, FileNotFoundError):
        return False


@needs_logrotate
async def test_shipped_config_rotates_twice_under_supervisord_and_loses_nothing(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    conf = shipped_config(tmp_path, log_dir)
    # supervisorctl as the postrotate finds it on PATH, pointed at this test's supervisord.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    supervisorctl = Path(sys.executable).parent / "supervisorctl"
    wrapper = bin_dir / "supervisorctl"
    wrapper.write_text(
        f'#!/bin/sh\nexec {supervisorctl} -c {supervisord_conf(tmp_path, config)} "$@"\n'
    )
    wrapper.chmod(0o755)
    path_env = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

    supervisord = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "supervisord",
        "-c",
        tmp_path / "supervisord.conf",
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        socket_path = tmp_path / "sfmd.sock"
        deadline = time.monotonic() + 15
        while not await socket_answers(socket_path):
            assert supervisord.returncode is None, "supervisord exited"
            assert time.monotonic() < deadline, "sfmd under supervisord never answered"
            await asyncio.sleep(0.05)
        for name in ("hup-stream.txt", "hup-unrelated.txt"):
            await wait_until(lambda n=name: (tmp_path / n).exists(), 10, f"{name} ready")

        log = log_dir / "sfmd.log"
        async with changing(socket_path) as changes:
            for round_ in (1, 2):
                rc, out = await logrotate(conf, tmp_path / "logrotate.state", path_env)
                assert rc == 0, out
                assert (log_dir / "sfmd.log.1").exists(), out
                # sfmd.log is a new file now: a logs_reopened in it is this rotation's HUP.
                await wait_until(
                    lambda: log.exists() and '"logs_reopened"' in log.read_text(),
                    10,
                    f"sfmd reopened its log after rotation {round_}",
                )
                await changes.more(20, f"changes after rotation {round_}")
        supervisord.send_signal(signal.SIGTERM)  # stops sfmd (SIGTERM) and the recorders
        async with asyncio.timeout(20):
            assert await supervisord.wait() == 0
    finally:
        if supervisord.returncode is None:
            supervisord.kill()
            await supervisord.wait()

    files = sorted(p.name for p in log_dir.iterdir())
    # delaycompress: the newest rotated file stays plain (sfmd may still have been writing to
    # it until the HUP), the one before is gzipped.
    assert files == ["sfmd.log", "sfmd.log.1", "sfmd.log.2.gz"], files
    assert_each_logged_once(
        changes, changes_by_file(log_dir / "sfmd.log.2.gz", log_dir / "sfmd.log.1", log)
    )
    assert read_lines(log)[-1]["event"] == "stopped"
    # The postrotate signalled sfmd and the isolated stream once per rotation, nothing else.
    assert (tmp_path / "hup-stream.txt").read_text() == "ready\nHUP\nHUP\n"
    assert (tmp_path / "hup-unrelated.txt").read_text() == "ready\n"


@needs_logrotate
async def test_shipped_postrotate_succeeds_with_neither_systemd_nor_supervisord(
    tmp_path: Path,
) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / "sfmd.log").write_text('{"event": "x"}\n')
    conf = shipped_config(tmp_path, log_dir)
    rc, out = await logrotate(conf, tmp_path / "logrotate.state", "/usr/bin:/bin:/usr/sbin:/sbin")
    assert rc == 0, out
    assert sorted(p.name for p in log_dir.iterdir()) == ["sfmd.log.1"]


# -- the shipped pair: sfm's own supervisord and the logrotate rule -------------------------

OWN_SUPERVISORD = REPO / "etc" / "supervisord-sfm.conf"
DAEMON_PROGRAM = REPO / "supervisor.d" / "sfmd.conf"


def moved(text: str, *pairs: tuple[str, str | Path]) -> str:
    """A shipped file with its system paths moved into a temp folder, in this order."""
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, str(new))
    return text


@needs_logrotate
async def test_shipped_rule_rotates_under_sfms_own_supervisord_and_leaves_its_log_alone(
    fake_api: FakeAPI,
) -> None:
    """etc/supervisord-sfm.conf and supervisor.d/sfmd.conf as shipped (paths moved into a temp
    folder, the user made the tester), with logrotate's rule as shipped: sfmd and an isolated
    stream are signalled through `supervisorctl -c` the conf, and supervisord's own log, which
    it cannot reopen, is neither renamed nor lost."""
    # A short root: the supervisord socket's path must fit in sun_path.
    root = Path(tempfile.mkdtemp(prefix="sfm-sd-"))
    try:
        await _own_supervisord_rotation(root, fake_api)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _own_supervisord_rotation(root: Path, fake_api: FakeAPI) -> None:
    for folder in ("log", "run", "etc.d", "sfm.d"):
        (root / folder).mkdir()
    log_dir = root / "log"
    (root / "credentials.toml").write_text(CREDENTIALS_TOML)
    (root / "credentials.toml").chmod(0o600)
    config = write_daemon_config(root, fake_api)
    user = TEST_USER
    conf = root / "supervisord.conf"
    conf.write_text(moved(
        OWN_SUPERVISORD.read_text(),
        ("user = sfm", f"user = {user}"),
        ("/var/log/sfm", log_dir),
        ("/run/sfm-supervisord", root / "run"),
        ("/etc/sfm/supervisord.d", root / "etc.d"),
        ("/var/lib/sfm/supervisor.d", root / "sfm.d"),
    ))
    sfmd = Path(sys.executable).parent / "sfmd"
    (root / "etc.d" / "sfmd.conf").write_text(moved(
        DAEMON_PROGRAM.read_text(),
        ("/opt/sfmd/bin/sfmd", sfmd),
        ("/etc/sfm/sfmd.toml", config),
        ("user=sfm", f"user={user}"),
        ("directory=/var/lib/sfm", f"directory={root}"),
        ("/var/log/sfm", log_dir),
        ('HOME="/var/lib/sfm",USER="sfm",LOGNAME="sfm"', f'HOME="{root}",USER="{user}"'),
    ))
    # An isolated stream's stand-in, in sfmd's conf_dir, as sfmd would name it.
    (root / "hup_recorder.py").write_text(HUP_RECORDER)
    (root / "sfm.d" / "sfm-stream-x.conf").write_text(
        f"[program:sfm-stream-x]\ncommand={sys.executable} {root / 'hup_recorder.py'} "
        f"{root / 'hup-stream.txt'}\nstartsecs=0\nstdout_logfile={log_dir / 'stream-x.out'}\n"
    )
    rule = shipped_config(root, log_dir, own_supervisord=conf)
    # supervisorctl from this virtualenv, as the postrotate finds it on PATH; no wrapper.
    path_env = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

    supervisord = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "supervisord", "--nodaemon", "-c", conf, cwd=root,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    own_log = log_dir / "supervisord.log"
    try:
        socket_path = root / "sfmd.sock"
        deadline = time.monotonic() + 20
        while not await socket_answers(socket_path):
            assert supervisord.returncode is None, "supervisord exited"
            assert time.monotonic() < deadline, "sfmd under supervisord never answered"
            await asyncio.sleep(0.05)
        await wait_until(lambda: (root / "hup-stream.txt").exists(), 10, "the stream ready")
        assert stat.S_IMODE((root / "run" / "supervisor.sock").stat().st_mode) == 0o770
        own_inode = own_log.stat().st_ino

        log = log_dir / "sfmd.log"
        async with changing(socket_path) as changes:
            for round_ in (1, 2):
                rc, out = await logrotate(rule, root / "logrotate.state", path_env)
                assert rc == 0, out
                await wait_until(
                    lambda: log.exists() and '"logs_reopened"' in log.read_text(),
                    10,
                    f"sfmd reopened its log after rotation {round_}",
                )
                await changes.more(20, f"changes after rotation {round_}")
        supervisord.send_signal(signal.SIGTERM)  # stops sfmd (SIGTERM) and the recorder
        async with asyncio.timeout(40):
            assert await supervisord.wait() == 0
    finally:
        if supervisord.returncode is None:  # a failed test: still stop its programs first
            supervisord.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(40):
                    await supervisord.wait()
            except TimeoutError:
                supervisord.kill()
                await supervisord.wait()

    files = sorted(p.name for p in log_dir.iterdir())
    assert [f for f in files if f.startswith("sfmd.log")] == [
        "sfmd.log", "sfmd.log.1", "sfmd.log.2.gz"
    ], files
    # supervisord's own log and the captures were left to supervisord: never renamed, and
    # supervisord's lines from after both rotations (its own stop) are in the live file.
    assert not [f for f in files if f.startswith(("supervisord.log.", "sfmd.out.",
                                                  "stream-x.out."))], files
    assert own_log.stat().st_ino == own_inode
    assert "stopped: sfmd" in own_log.read_text().rsplit("received SIGTERM", 1)[-1]
    assert_each_logged_once(
        changes, changes_by_file(log_dir / "sfmd.log.2.gz", log_dir / "sfmd.log.1", log)
    )
    assert (root / "hup-stream.txt").read_text() == "ready\nHUP\nHUP\n"
