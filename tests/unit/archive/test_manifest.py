"""Manifest lines (sfmd.archive.manifest)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sfmd.archive import PublishedFile


def test_published_file_times_are_utc() -> None:
    moment = datetime(2024, 5, 1, 12, 15, tzinfo=UTC)
    line = PublishedFile(Path("x"), "x", moment, moment, 0, 0, 0, "").manifest_line()
    assert json.loads(line)["start"] == "2024-05-01T12:15:00.000Z"
