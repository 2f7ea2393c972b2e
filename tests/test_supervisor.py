"""Process isolation through supervisord: confs, atomic files, the XML-RPC client, the update
dance, and the real daemon restarted by a real supervisord after SIGKILL."""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import glob
import grp
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from supervisor.options import ServerOptions

from sfmd.config import load_config
from sfmd.fake import FakeAPI
from sfmd.ops.confs import (
    MARKER,
    STOPWAITSECS,
    ConfError,
    conf_path,
    is_ours,
    owned_confs,
    render_program,
    sync_confs,
    write_conf,
)
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
from sfmd.registry import validate_stream
from sfmd.runtime.processes import ProcessStreams, process_status
from tests.conftest import Api, manifest, wait_until, write_daemon_config
from tests.supervisord_fixture import (  # noqa: F401 - the *_fixture names are fixtures
    MAIN_CONF_HEAD,
    TEST_USER,
    Supervisord,
    idle_supervisord_fixture,
    supervisord_fixture,
)

PREFIX = "sfm-stream-"
ROOT = Path(__file__).resolve().parent.parent
#: A harmless long-running program standing in for `sfmd`: the module tests must not depend on
#: the daemon. The appended `stream NAME --config FILE` just lands in its sys.argv.
SLEEPER = [sys.executable, "-c", "import time; time.sleep(1000)"]
SFMD = [sys.executable, "-m", "sfmd"]


def render(name: str = "news", **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "config_path": Path("/etc/sfm/sfmd.toml"),
        "sfmd_command": SFMD,
        "program_prefix": PREFIX,
        "user": "sfm",
        "log_dir": Path("/var/log/sfm"),
        **overrides,
    }
    return render_program(name, **kwargs)


def settings_of(text: str) -> dict[str, str]:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    parser.read_string(text)
    [section] = parser.sections()
    return dict(parser.items(section))


# --- rendering -------------------------------------------------------------------------------


def test_the_conf_runs_sfmd_stream_with_every_key_that_matters() -> None:
    text = render("news")
    assert text.splitlines()[0] == MARKER
    assert "[program:sfm-stream-news]" in text
    conf = settings_of(text)
    assert shlex.split(conf["command"]) == [
        *SFMD,
        "stream",
        "news",
        "--config",
        "/etc/sfm/sfmd.toml",
    ]
    assert conf["user"] == "sfm"
    assert conf["directory"] == "/etc/sfm"
    assert conf["autostart"] == conf["autorestart"] == "true"
    assert conf["stopsignal"] == "TERM"
    assert int(conf["stopwaitsecs"]) > 10  # sfmd's own stop takes up to 10 s
    assert conf["stopasgroup"] == conf["killasgroup"] == "true"
    assert int(conf["startsecs"]) >= 1 and int(conf["startretries"]) >= 3
    assert conf["stdout_logfile"] == "/var/log/sfm/stream-news.out"
    assert conf["redirect_stderr"] == "true"


def test_no_filter_text_reaches_the_conf(tmp_path: Path) -> None:
    config = write_supervisor_config(tmp_path, "unix:///nowhere.sock", tmp_path / "conf.d")
    spec = validate_stream(
        {
            "name": "news",
            "kind": "filter",
            "track": ["secret phrase", "%d #x"],
            "follow": ["987654321"],
            "language": ["de"],
            "credential": "alpha",
            "isolation": "process",
        },
        credentials=["alpha"],
    )
    text = ProcessStreams(config, sfmd_command=SLEEPER).render(spec)
    for needle in ("secret", "phrase", "987654321", "#x", "alpha"):
        assert needle not in text
    assert "stream news --config" in text


def test_percent_is_escaped_for_each_expansion() -> None:
    text = render(
        config_path=Path("/srv/100%/sfmd.toml"), log_dir=Path("/logs/50%"), environment={"X": "a%b"}
    )
    assert "--config /srv/100%%/sfmd.toml" in text
    assert "directory=/srv/100%%\n" in text
    assert "stdout_logfile=/logs/50%%%%/stream-news.out" in text  # expanded twice
    assert 'environment=X="a%%b"' in text


@pytest.mark.parametrize(
    "name",
    [
        "news x",
        "news:x",
        "news/x",
        "news\n[program:evil]",
        "News",
        "-news",
        "",
        "a" * 65,
        "news;x",
        "news#x",
        "../x",
        "néws",
    ],
)
def test_refuses_a_stream_name_outside_the_registry_rule(name: str) -> None:
    with pytest.raises(ConfError, match="stream name"):
        render(name)


@pytest.mark.parametrize(
    "overrides",
    [
        {"config_path": Path("/etc/sfm ;x/sfmd.toml")},
        {"config_path": Path("/etc/sfm #x/sfmd.toml")},
        {"config_path": Path("/etc/sfm\n[program:evil]\ncommand=/bin/sh/sfmd.toml")},
        {"config_path": Path("/etc/sfm\tx/sfmd.toml")},
        {"config_path": Path("/etc/sfm/s\u00e9/sfmd.toml")},
        {"config_path": Path("relative/sfmd.toml")},
        {"config_path": Path("/etc/%(here)s/sfmd.toml")},
        {"log_dir": Path("/var/log/sfm ;x")},
        {"log_dir": Path("/var/log/sfm\nuser=root")},
        {"sfmd_command": ["/opt/sfm venv #1/python", "-m", "sfmd"]},
        {"sfmd_command": []},
        {"user": "sfm\nuser=root"},
        {"user": "root x"},
        {"program_prefix": "sfm stream:"},
        {"environment": {"BAD KEY": "x"}},
        {"environment": {"X": 'a"b'}},
        {"environment": {"X": "a\nb"}},
        {"environment": {"X": "a ;b"}},
    ],
)
def test_refuses_what_could_inject_or_cut_a_setting(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfError) as refused:
        render(**overrides)
    assert "conf" in str(refused.value) or "must" in str(refused.value)


def test_a_path_with_spaces_and_quotes_is_quoted_for_the_command() -> None:
    text = render(
        config_path=Path("/srv/my sfm/it's/sfmd.toml"),
        sfmd_command="'/opt/sfm venv/bin/python' -m sfmd",
    )
    argv = shlex.split(settings_of(text)["command"])
    assert argv == [
        "/opt/sfm venv/bin/python",
        "-m",
        "sfmd",
        "stream",
        "news",
        "--config",
        "/srv/my sfm/it's/sfmd.toml",
    ]


_PATH_TEXT = st.text(
    alphabet=st.sampled_from([*"aZ09 _-.%()'\"\\;#$&*?[]{}~!=:,@", "\t", "\n", "\u00e9"]),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=150, deadline=None)
@given(folder=_PATH_TEXT, log_folder=_PATH_TEXT, value=_PATH_TEXT)
@example(folder="%(here)s", log_folder="x", value="y")
@example(folder="a %b", log_folder="50%", value="%(ENV_X)s")
def test_supervisor_reads_back_exactly_what_was_meant(
    folder: str, log_folder: str, value: str
) -> None:
    """Whatever `render_program` accepts, supervisor's own parser (as an included file, like
    production) reads back unchanged; whatever it refuses has a real reason."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config_path = root / folder / "sfmd.toml"
        log_dir = root / log_folder
        try:
            text = render(
                config_path=config_path,
                log_dir=log_dir,
                user=TEST_USER,
                environment={"SFMD_X": value},
            )
        except ConfError:
            risky = folder + log_folder + value
            assert (
                not risky.isascii()
                or "\t" in risky
                or "\n" in risky
                or " ;" in risky
                or " #" in risky
                or "%(here)s" in risky
                or '"' in value
                or value[0] == "'"
                or value[-1] == "'"
                or value != value.strip()
                or folder != folder.strip()
                or log_folder != log_folder.strip()
            )
            return
        log_dir.mkdir()
        (root / "conf.d").mkdir()
        (root / "conf.d" / "news.conf").write_text(text)
        (root / "main.conf").write_text(
            f"[supervisord]\nlogfile = {root}/sd.log\n[include]\nfiles = conf.d/*.conf\n"
        )
        options = ServerOptions()
        options.configfile = str(root / "main.conf")
        options.process_config(do_usage=False)
        [group] = options.process_group_configs
        [process] = group.process_configs
        assert group.name == "sfm-stream-news"
        assert shlex.split(process.command) == [
            *SFMD,
            "stream",
            "news",
            "--config",
            os.path.normpath(config_path),
        ]
        assert process.directory == os.path.normpath(config_path.parent)
        assert process.stdout_logfile == os.path.normpath(log_dir / "stream-news.out")
        assert process.environment == {"SFMD_X": value}
        assert process.uid == os.getuid()


# --- files -----------------------------------------------------------------------------------


def included(folder: Path) -> list[str]:
    """What common `[include] files` patterns match, found as supervisord finds them (the
    glob module, which skips hidden names; pathlib's glob would not)."""
    return [
        os.path.basename(p)
        for g in ("*.conf", "*.ini", "*")
        for p in glob.glob(os.path.join(folder, g))
    ]


def test_write_is_atomic_and_the_temp_name_is_outside_every_include_glob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = conf_path(tmp_path, PREFIX, "news")
    old, new = render("news"), render("news", user="other")
    write_conf(path, old)
    seen: list[tuple[list[str], str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        globs = included(tmp_path)
        seen.append((globs, Path(src).read_text()))
        assert path.read_text() == old  # the old conf stays whole until the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert write_conf(path, new)
    [(globs, temp_content)] = seen
    assert set(globs) == {path.name}  # the temp file is matched by no glob
    assert temp_content == new  # complete before it is renamed into view
    assert path.read_text() == new
    assert os.listdir(tmp_path) == [path.name]


def test_a_failed_rename_leaves_the_old_conf_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = conf_path(tmp_path, PREFIX, "news")
    write_conf(path, render("news"))

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_conf(path, render("news", user="other"))
    assert path.read_text() == render("news")
    assert os.listdir(tmp_path) == [path.name]


def test_a_crash_between_write_and_rename_leaves_no_broken_conf_in_the_glob(
    tmp_path: Path,
) -> None:
    """A real SIGKILL just before the rename: only a hidden .tmp is left, and the next sync
    removes it."""
    path = conf_path(tmp_path, PREFIX, "news")
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from sfmd.ops.confs import write_conf\n"
        "os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_conf(Path(sys.argv[1]), sys.argv[2])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path), render("news")], cwd=ROOT, timeout=30
    )
    assert proc.returncode == -signal.SIGKILL
    [leftover] = os.listdir(tmp_path)
    assert leftover.startswith(".") and leftover.endswith(".tmp")
    assert not included(tmp_path)
    assert sync_confs(tmp_path, PREFIX, {"news": render("news")}) == (["news"], [])
    assert os.listdir(tmp_path) == [path.name]


def test_only_our_marked_files_are_ever_rewritten_or_removed(tmp_path: Path) -> None:
    hand = tmp_path / f"{PREFIX}legacy.conf"
    hand.write_text("[program:sfm-stream-legacy]\ncommand=/bin/true\n")
    other = tmp_path / "other.conf"
    other.write_text("[program:other]\ncommand=/bin/true\n")
    stray = tmp_path / f"{PREFIX}news.ini"
    stray.write_text(MARKER + "\n")
    assert sync_confs(tmp_path, PREFIX, {"news": render("news")}) == (["news"], [])
    assert owned_confs(tmp_path, PREFIX) == {"news": conf_path(tmp_path, PREFIX, "news")}
    assert sync_confs(tmp_path, PREFIX, {}) == ([], ["news"])
    assert sorted(os.listdir(tmp_path)) == sorted([hand.name, other.name, stray.name])
    with pytest.raises(ConfError, match="not written by sfmd"):
        write_conf(hand, render("legacy"))
    assert not is_ours(hand)
    with pytest.raises(ConfError, match="marker"):
        write_conf(tmp_path / f"{PREFIX}x.conf", "[program:x]\n")


def test_an_unchanged_conf_is_not_rewritten(tmp_path: Path) -> None:
    path = conf_path(tmp_path, PREFIX, "news")
    assert write_conf(path, render("news"))
    before = path.stat()
    assert sync_confs(tmp_path, PREFIX, {"news": render("news")}) == ([], [])
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


# --- against a real supervisord ----------------------------------------------------------------


def our_conf(sd: Supervisord, name: str, **environment: str) -> str:
    (sd.root / "etc").mkdir(exist_ok=True)
    return render_program(
        name,
        config_path=sd.root / "etc" / "sfmd.toml",
        sfmd_command=SLEEPER,
        program_prefix=PREFIX,
        user=TEST_USER,
        log_dir=sd.root / "log",
        environment=environment or None,
    )


def add_other_program(sd: Supervisord) -> None:
    """A program that is none of sfmd's business, in the same include folder."""
    (sd.conf_dir / "other.conf").write_text(
        f"[program:other]\ncommand={shlex.join(SLEEPER)}\nstartsecs=0\n"
    )
    sd.rpc().supervisor.reloadConfig()
    sd.rpc().supervisor.addProcessGroup("other")


@pytest.fixture
async def client(supervisord: Supervisord) -> AsyncIterator[SupervisorClient]:
    async with SupervisorClient(supervisord.server_url) as c:
        yield c


async def wait_pid(client: SupervisorClient, name: str, not_pid: int = 0) -> int:
    """The program's pid once it is spawned (STARTING or RUNNING) with a pid other than not_pid."""
    deadline = time.monotonic() + 15
    while True:
        info = await client.get_process_info(name)
        if info["statename"] in ("STARTING", "RUNNING") and info["pid"] not in (0, not_pid):
            return int(info["pid"])
        assert time.monotonic() < deadline, f"{name} never started: {info}"
        await asyncio.sleep(0.05)


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


def test_an_http_url_never_shows_its_password() -> None:
    client = SupervisorClient("http://admin:hunter2@127.0.0.1:9001")
    assert "hunter2" not in repr(client)
    assert client._endpoint == "http://127.0.0.1:9001/RPC2"


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


# --- the reconciler's back end -----------------------------------------------------------------


def write_supervisor_config(folder: Path, server_url: str, conf_dir: Path) -> Any:
    path = folder / "sfmd.toml"
    path.write_text(
        "[daemon]\n"
        'data_dir = "data"\nstate_dir = "state"\nlog_dir = "log"\ncontrol_socket = "s.sock"\n'
        "[supervisor]\n"
        f'server_url = "{server_url}"\nconf_dir = "{conf_dir}"\n'
        f'program_prefix = "{PREFIX}"\nuser = "{TEST_USER}"\n'
    )
    return load_config(path)


def spec(name: str, track: str = "x", **more: Any) -> Any:
    body = {
        "name": name,
        "kind": "filter",
        "track": [track],
        "credential": "alpha",
        "isolation": "process",
        **more,
    }
    return validate_stream(body, credentials=["alpha", "beta"])


async def test_process_streams_reconcile_follows_the_registry(
    supervisord: Supervisord, tmp_path: Path
) -> None:
    sd = supervisord
    config = write_supervisor_config(tmp_path, sd.server_url, sd.conf_dir)
    add_other_program(sd)
    streams = ProcessStreams(config, sfmd_command=SLEEPER)
    try:
        report = await streams.reconcile(
            [
                spec("a"),
                spec("b", credential="beta"),
                spec("t", isolation="task"),
                spec("off", active=False),
            ]
        )
        assert report["written"] == ["a", "b"] and report["added"] == [PREFIX + "a", PREFIX + "b"]
        a_pid = await wait_pid(streams.client, PREFIX + "a")
        b_pid = await wait_pid(streams.client, PREFIX + "b")
        statuses = await streams.statuses()
        assert set(statuses) == {"a", "b"}
        assert statuses["a"]["state"] in ("connecting", "streaming")

        # A filter change restarts only that stream; a repeat changes nothing.
        report = await streams.reconcile([spec("a", track="y"), spec("b", credential="beta")])
        assert (report["written"], report["changed"]) == (["a"], [PREFIX + "a"])
        await wait_pid(streams.client, PREFIX + "a", not_pid=a_pid)
        assert sd.info(PREFIX + "b")["pid"] == b_pid
        report = await streams.reconcile([spec("a", track="y"), spec("b", credential="beta")])
        assert report["written"] == report["changed"] == report["started"] == []

        # Stopped behind sfmd's back: started again, since the registry says it should run.
        await streams.client.stop_process(PREFIX + "b")
        report = await streams.reconcile([spec("a", track="y"), spec("b", credential="beta")])
        assert report["started"] == [PREFIX + "b"]
        await wait_pid(streams.client, PREFIX + "b", not_pid=b_pid)

        # Made inactive or task-isolated: conf deleted, program gone.
        report = await streams.reconcile(
            [spec("a", track="y", active=False), spec("b", credential="beta", isolation="task")]
        )
        assert report["deleted"] == ["a", "b"]
        assert sorted(report["removed"]) == [PREFIX + "a", PREFIX + "b"]
        assert await streams.statuses() == {}
        assert streams.conf_names() == []
        assert sd.info("other")["statename"] == "RUNNING"

        # Nothing isolated and nothing to undo: supervisord is not even asked.
        assert await streams.reconcile([]) == {"written": [], "deleted": []}
    finally:
        await streams.close()


async def test_process_streams_write_confs_while_supervisord_is_down(
    idle_supervisord: Supervisord, tmp_path: Path
) -> None:
    sd = idle_supervisord
    config = write_supervisor_config(tmp_path, sd.server_url, sd.conf_dir)
    streams = ProcessStreams(config, sfmd_command=SLEEPER)
    try:
        report = await streams.reconcile([spec("a")])
        assert report["written"] == ["a"]
        assert report["waiting"].startswith("waiting for supervisord")
        sd.start()  # it reads the conf at start-up and autostarts the stream
        await wait_pid(streams.client, PREFIX + "a")
        report = await streams.reconcile([spec("a")])
        assert report["written"] == report["added"] == report["started"] == []
    finally:
        await streams.close()


async def test_an_unknown_user_is_refused_before_any_conf_is_written(tmp_path: Path) -> None:
    """supervisord would reject such a conf, and with it every program's reload."""
    config = write_supervisor_config(tmp_path, "unix:///nowhere.sock", tmp_path / "conf.d")
    config = dataclasses.replace(
        config, supervisor=dataclasses.replace(config.supervisor, user="no-such-user-sfm")
    )
    streams = ProcessStreams(config, sfmd_command=SLEEPER)
    with pytest.raises(ConfError, match="does not exist"):
        await streams.reconcile([spec("a")])
    assert not (tmp_path / "conf.d").exists()
    await streams.close()


def test_process_status_maps_supervisor_states() -> None:
    fatal = {
        "statename": "FATAL",
        "stop": 1700000000,
        "pid": 0,
        "spawnerr": "Exited too quickly",
        "description": "Exited too quickly (process log may have details)",
    }
    assert process_status(fatal) == {
        "state": "failed",
        "since": "2023-11-14T22:13:20Z",
        "pid": None,
        "last_error": "Exited too quickly",
    }
    running = {"statename": "RUNNING", "start": 1700000000, "pid": 42, "description": "x"}
    assert process_status(running)["state"] == "streaming"
    assert process_status(running)["last_error"] is None


# --- the real daemon under supervisord -----------------------------------------------------


def daemon_program(config: Path, folder: Path) -> str:
    """supervisor.d/sfmd.conf, with only what must differ in a test changed: the command,
    the user, the folders."""
    shipped = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    shipped.read(ROOT / "supervisor.d" / "sfmd.conf")
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
        log = tmp_path / "log" / "sfmd.log"
        await wait_until(lambda: "logs_reopened" in log.read_text(), what="logs_reopened")
        # supervisord's own stop is sfmd's clean stop: every open file published.
        results = await client.stop_process_group("sfmd")
        assert [r["status"] for r in results] == [Fault.SUCCESS]
    assert not list(data.rglob("*.part"))
    assert STOPWAITSECS > 10


def live(api: FakeAPI) -> list[Any]:
    return [r for r in api.log if r.endpoint in ("filter", "sample") and r.closed is None]


def part_lines(data: Path) -> int:
    total = 0
    for path in data.rglob("*.part"):
        raw = path.read_bytes()
        if path.name.endswith(".gz.part"):
            raw = zlib.decompressobj(wbits=31).decompress(raw)
        total += raw.count(b"\n")
    return total


async def wait_for_health(sock: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with Api(sock) as api:
                status, _ = await api.call("GET", "/health")
            if status == 200:
                return
        except (aiohttp.ClientError, OSError):
            pass  # not listening yet, or the stale socket of the killed daemon
        assert time.monotonic() < deadline, f"no /health on {sock} within {timeout} s"
        await asyncio.sleep(0.05)


# --- the set-up in docs/supervisor.md, as written ----------------------------------------------


def documented_block(tag: str) -> str:
    """The ```ini block after `<!-- tested: TAG -->` in docs/supervisor.md."""
    text = (ROOT / "docs" / "supervisor.md").read_text()
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


async def test_the_documented_own_supervisord_for_sfm(idle_supervisord: Supervisord) -> None:
    sd = idle_supervisord
    for folder in ("log", "run", "etc.d", "sfm.d"):
        (sd.root / folder).mkdir()
    sd.socket = sd.root / "run" / "supervisor.sock"
    sd.server_url = f"unix://{sd.socket}"
    sd.log = sd.root / "log" / "supervisord.log"
    text = moved(
        documented_block("sfm-supervisord.conf"),
        ("user = sfm", f"user = {TEST_USER}"),
        ("/var/log/sfm", sd.root / "log"),
        ("/run/sfm", sd.root / "run"),
        ("/etc/sfm/supervisord.d", sd.root / "etc.d"),
        ("/var/lib/sfm/supervisor.d", sd.root / "sfm.d"),
    )
    sd.start(conf_text=text)
    mode = sd.socket.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o770 and mode.st_uid == os.getuid()
    await apply_one_of_ours(sd, sd.root / "sfm.d")
