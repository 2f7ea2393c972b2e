"""The blocking primitives the archive's files are written with; they run in worker threads.

`os.write` may take only part of what it is given, so `_write_all` loops until all of it is
written or an error is raised; a caller that must not leave half a batch behind cuts its file
back itself. A new folder is fsynced into its parent: without that, a power loss can take the
folder, and every file in it, away.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sfmd.durable import fsync_dir


def _makedirs_durable(directory: Path) -> None:
    """mkdir -p, fsyncing each parent whose entries changed, so a new day's folder survives."""
    missing: list[Path] = []
    path = directory
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
