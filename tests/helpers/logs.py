"""The daemon's JSON log, `log/sfmd.log` under the test's home folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def log_path(home: Path) -> Path:
    """Where a daemon configured by `write_config(home, ...)` logs."""
    return home / "log" / "sfmd.log"


def log_text(home: Path) -> str:
    """The whole log as text: for tests that look for a word anywhere in it."""
    return log_path(home).read_text()


def read_log(
    path: Path, stream: str | None = None, *, missing_ok: bool = False
) -> list[dict[str, Any]]:
    """A JSON log file's events (of one stream, if named).

    A missing file fails the test unless `missing_ok`: then it is a log nothing wrote yet.
    """
    if missing_ok and not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if stream is None or e.get("stream") == stream]


def log_events(
    home: Path, stream: str | None = None, *, missing_ok: bool = False
) -> list[dict[str, Any]]:
    """`read_log` of the daemon's log under `home`."""
    return read_log(log_path(home), stream, missing_ok=missing_ok)
