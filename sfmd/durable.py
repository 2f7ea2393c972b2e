"""Writes that survive a crash or a power loss: one place for the fsync-and-rename dance.

The registry, the supervisor confs and the archive all need "the old file or the new one,
never a mix", and a rename only lasts once its folder is synced too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: Path, data: bytes, *, temp_prefix: str | None = None, mode: int | None = None
) -> None:
    """Replace `path` so a crash at any moment leaves the old file or the new one, never a mix.

    The temp file sits beside `path` (same filesystem, so the rename is atomic), named
    `{temp_prefix}…tmp` (default `.{name}.…tmp`), which no `*.conf` or `*.json` glob matches.
    If syncing the folder fails, the error propagates although the new file may already be in
    place: the caller keeps its old state, and its next write puts the whole state down again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = temp_prefix if temp_prefix is not None else f".{path.name}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
