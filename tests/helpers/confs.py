"""Supervisor confs for tests: sfmd's renderer with fixed settings, and supervisor's view."""

from __future__ import annotations

import configparser
import glob
import os
import pwd
import sys
from pathlib import Path
from typing import Any

from sfmd.config import load_config
from sfmd.ops.confs import render_program
from sfmd.registry import validate_stream

#: Generated confs name the user running the tests: supervisord switches users only as root,
#: and as root it may "switch" to root.
TEST_USER = pwd.getpwuid(os.getuid()).pw_name

PREFIX = "sfm-stream-"


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


def included(folder: Path) -> list[str]:
    """What common `[include] files` patterns match, found as supervisord finds them (the
    glob module, which skips hidden names; pathlib's glob would not)."""
    return [
        os.path.basename(p)
        for g in ("*.conf", "*.ini", "*")
        for p in glob.glob(os.path.join(folder, g))
    ]


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
