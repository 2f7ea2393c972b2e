"""`make demo` installs only what sfmd needs to run; `make test` adds the test tools, and
`make demo` then `make test` on a fresh clone works in that order (and the other).

`make -n` prints what make would run, in a folder holding only the Makefile and
pyproject.toml, as a fresh clone has them; what a step has already done is stood in for by
the files make itself checks (the venv's python, the stamps)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def plan(folder: Path, target: str) -> list[str]:
    """What `make -n TARGET` would run; as a make of its own, not a child of `make test`
    (whose MAKEFLAGS and MAKELEVEL would add "Entering directory" lines)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.splitlines()


def did(folder: Path, *paths: str) -> None:
    """Stand in for a step make has run: the files it leaves, newer than pyproject.toml."""
    later = time.time() + 5
    for path in paths:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
        os.utime(target, (later, later))


def fresh_clone(tmp_path: Path) -> Path:
    folder = tmp_path / "clone"
    folder.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, folder / name)
    return folder


def test_make_demo_installs_the_runtime_only_and_make_test_adds_the_test_tools(
    tmp_path: Path,
) -> None:
    folder = fresh_clone(tmp_path)
    demo = plan(folder, "demo")
    assert any(line.endswith("-m venv .venv") for line in demo), demo
    assert ".venv/bin/python -m pip install -q -e ." in demo, demo
    assert not any("[test" in line for line in demo), demo
    assert demo[-1] == ".venv/bin/sfmd demo"

    did(folder, ".venv/bin/python", ".venv/.runtime")  # make demo ran
    test = plan(folder, "test")
    assert not any("-m venv" in line for line in test), test
    assert ".venv/bin/python -m pip install -q -e '.[test]'" in test, test
    assert test[-1] == ".venv/bin/python -m pytest -q"

    did(folder, ".venv/.installed")  # make test ran: demo installs nothing more
    assert plan(folder, "demo") == [".venv/bin/sfmd demo"]


def test_make_test_on_a_fresh_clone_installs_everything_first(tmp_path: Path) -> None:
    test = plan(fresh_clone(tmp_path), "test")
    steps = [line for line in test if "pip install" in line or "-m venv" in line]
    assert [s.split()[-1] for s in steps] == [".venv", "pip", ".", "'.[test]'"], test


def test_the_runtime_needs_none_of_the_test_tools() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {d.split(">")[0].split("[")[0] for d in project["dependencies"]}
    tools = {d.split(">")[0].split("[")[0] for d in project["optional-dependencies"]["test"]}
    assert not runtime & tools
