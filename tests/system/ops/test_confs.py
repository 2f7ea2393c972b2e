"""A conf writer killed between write and rename leaves nothing broken in the include glob."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sfmd.ops.confs import conf_path, sync_confs
from tests.helpers.confs import PREFIX, included, render
from tests.helpers.paths import REPO


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
        [sys.executable, "-c", script, str(path), render("news")], cwd=REPO, timeout=30
    )
    assert proc.returncode == -signal.SIGKILL
    [leftover] = os.listdir(tmp_path)
    assert leftover.startswith(".") and leftover.endswith(".tmp")
    assert not included(tmp_path)
    assert sync_confs(tmp_path, PREFIX, {"news": render("news")}) == (["news"], [])
    assert os.listdir(tmp_path) == [path.name]
