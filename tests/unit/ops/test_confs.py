"""Rendering supervisor confs that cannot be injected into, read back by supervisor's own
parser; writing them atomically, and only ever our own (sfmd.ops.confs)."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from supervisor.options import ServerOptions

from sfmd.ops.confs import (
    MARKER,
    ConfError,
    conf_path,
    is_ours,
    owned_confs,
    sync_confs,
    write_conf,
)
from sfmd.registry import validate_stream
from sfmd.runtime.processes import ProcessStreams
from tests.helpers.confs import (
    PREFIX,
    SFMD,
    SLEEPER,
    TEST_USER,
    included,
    render,
    settings_of,
    write_supervisor_config,
)


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
