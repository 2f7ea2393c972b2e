"""Reading back what a stream stored last: the newest published files and their lines.

Sources that resume from their own files (Jetstream's cursor, Mastodon's newest status id)
read them here, never from a side file that could disagree with the archive. Reading is kept
apart from writing: nothing here changes a file.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from sfmd.archive.manifest import MANIFEST_NAME

_TAIL = 1 << 18  # the manifest's last lines are enough to find the newest files


def newest_files(stream_dir: Path, count: int = 8) -> list[Path]:
    """The files of the manifest's last `count` lines that name one, oldest first."""
    try:
        with open(stream_dir / MANIFEST_NAME, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - _TAIL))
            raw = f.read()
    except FileNotFoundError:
        return []
    files: list[Path] = []
    for line in raw.splitlines():
        try:
            entry: Any = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            files.append(stream_dir.parent / entry["file"])
    return files[-count:]


def file_lines(path: Path) -> list[bytes]:
    """A published file's lines (gunzipped); none when it cannot be read."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (OSError, EOFError, gzip.BadGzipFile):
        return []
    return data.split(b"\n")[:-1]
