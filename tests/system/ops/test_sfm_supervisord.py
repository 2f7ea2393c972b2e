"""The shipped pair for a supervisord of sfm's own (etc/supervisord-sfm.conf and
systemd/sfm-supervisord.service) sits beside sfmd.service and the logrotate rule without
clashing: its socket outlives sfmd.service's stop, and its own logs are not rotated from
outside. The rotation itself runs for real in tests/system/test_logrotate.py."""

from __future__ import annotations

import configparser
import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from tests.helpers.paths import REPO

OWN_CONF = REPO / "etc" / "supervisord-sfm.conf"
OWN_UNIT = REPO / "systemd" / "sfm-supervisord.service"
SFMD_UNIT = REPO / "systemd" / "sfmd.service"
RULE = REPO / "etc" / "logrotate.d" / "sfmd"


def supervisord_conf() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=True)
    parser.read_string(OWN_CONF.read_text())
    return parser


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of `key=` in a unit file, each line's words split as systemd does."""
    out: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}="):
            out += line.split("=", 1)[1].split()
    return out


def under(path: str, folders: list[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(f"/run/{f}") for f in folders)


def test_its_socket_and_pid_file_survive_sfmd_service_stopping() -> None:
    conf = supervisord_conf()
    socket = conf.get("unix_http_server", "file")
    pidfile = conf.get("supervisord", "pidfile")
    assert conf.get("supervisorctl", "serverurl") == f"unix://{socket}"
    removed_with_sfmd = unit_values(SFMD_UNIT, "RuntimeDirectory")
    assert removed_with_sfmd == ["sfm"]
    own = unit_values(OWN_UNIT, "RuntimeDirectory")
    for path in (socket, pidfile):
        assert not under(path, removed_with_sfmd), path
        assert under(path, own), path
    # sfmd's control socket (/run/sfm/sfmd.sock by default) exists while sfmd runs under this
    # supervisord, and a restart of the supervisord keeps the folders.
    assert "sfm" in own and unit_values(OWN_UNIT, "RuntimeDirectoryPreserve") == ["yes"]
    assert conf.get("unix_http_server", "chmod") == "0770"
    assert conf.get("supervisord", "user") == "sfm"
    assert unit_values(OWN_UNIT, "User") == ["sfm"]


def test_the_logrotate_rule_leaves_supervisords_own_logs_to_it() -> None:
    """supervisord reopens nothing on a signal from the postrotate (SIGHUP would restart every
    program), so none of its files may match the rule."""
    head = next(line for line in RULE.read_text().splitlines() if line.endswith("{"))
    patterns = head.removesuffix("{").split()
    conf = supervisord_conf()
    childlogdir = conf.get("supervisord", "childlogdir")
    theirs = [
        conf.get("supervisord", "logfile"),
        f"{childlogdir}/sfm-stream-x-stdout---supervisor-abc123.log",  # an AUTO capture
        f"{childlogdir}/sfmd.out",
        f"{childlogdir}/stream-news.out",
    ]
    for path in theirs:
        assert not any(fnmatch.fnmatch(path, p) for p in patterns), (path, patterns)
    ours = ["/var/log/sfm/sfmd.log", "/var/log/sfm/stream-news.log"]
    for path in ours:
        assert any(fnmatch.fnmatch(path, p) for p in patterns), (path, patterns)
    assert int(conf.get("supervisord", "logfile_backups")) > 0
    assert conf.get("supervisord", "logfile_maxbytes") != "0"


def test_the_postrotate_reaches_sfms_own_supervisord_by_its_conf() -> None:
    text = RULE.read_text()
    assert "hup -c /etc/sfm/supervisord.conf" in text
    assert "[ -f /etc/sfm/supervisord.conf ]" in text
    assert unit_values(OWN_UNIT, "ExecStart")[-2:] == [
        "--configuration", "/etc/sfm/supervisord.conf"
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_its_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's supervisord.
    supervisord = Path(sys.executable).parent / "supervisord"
    assert supervisord.exists(), "supervisor is a test dependency"
    unit = tmp_path / "sfm-supervisord.service"
    unit.write_text(OWN_UNIT.read_text().replace("/usr/bin/supervisord", str(supervisord)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
