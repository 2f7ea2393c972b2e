"""A stream's coverage over a period, from its manifest alone: connected share, gaps once
each, files per day, and old lines without coverage still read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sfmd.archive.timeline import report

T0 = "2026-12-01T00:00:00.000Z"


def line(start: str, end: str, *, file: str | None = "f", messages: int = 10,
         gaps: list[dict[str, Any]] | None = None, old: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": file, "start": start, "end": end, "messages": messages,
                             "tweets": messages, "bytes": 1, "sha256": "x"}
    if not old:
        entry |= {"gaps": gaps or [], "provenance": {}}
    return entry


def gap(a: str, b: str, reason: str = "backoff", **extra: str) -> dict[str, Any]:
    return {"from": a, "to": b, "reason": reason, "refilled": "none", **extra}


def stream(tmp_path: Path, *entries: dict[str, Any], torn: bool = False) -> Path:
    folder = tmp_path / "news"
    folder.mkdir()
    text = "".join(json.dumps(e) + "\n" for e in entries)
    (folder / "manifest.jsonl").write_text(text + ('{"file": "x", "sta' if torn else ""))
    return folder


def test_connected_share_gaps_and_days(tmp_path: Path) -> None:
    folder = stream(
        tmp_path,
        line(T0, "2026-12-01T12:00:00.000Z", gaps=[gap("2026-12-01T11:00:00Z",
                                                       "2026-12-01T12:00:00Z", error="HTTP 503")]),
        line("2026-12-01T12:00:00.000Z", "2026-12-02T00:00:00.000Z", file=None, messages=0,
             gaps=[gap("2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z", error="HTTP 503")]),
        line("2026-12-02T00:00:00.000Z", "2026-12-02T06:00:00.000Z",
             gaps=[gap("2026-12-02T01:00:00Z", "2026-12-02T01:30:00Z", "stopped")]),
        torn=True,
    )
    result = report(folder)
    assert result.recorded == 30 * 3600
    assert result.connected == 30 * 3600 - 2.5 * 3600
    [backoff, stopped] = result.gaps  # the 503 crossing two lines is one gap
    assert (backoff["from"], backoff["to"], backoff["seconds"]) == (
        "2026-12-01T11:00:00Z", "2026-12-01T13:00:00Z", 7200)
    assert stopped["reason"] == "stopped"
    first, second = result.days
    assert (first.day, first.files, first.messages, first.gap_seconds) == (
        "2026-12-01", 1, 10, 7200)
    assert (second.files, second.gap_seconds) == (1, 1800)
    assert result.to_json()["connected_percent"] == round(100 * 27.5 / 30, 3)


def test_a_period_clips_and_counts_what_no_line_covers(tmp_path: Path) -> None:
    folder = stream(tmp_path, line(T0, "2026-12-01T01:00:00.000Z",
                                   gaps=[gap("2026-12-01T00:30:00Z", "2026-12-01T01:00:00Z")]))
    since = report(folder).since
    result = report(folder, since + 45 * 60, since + 2 * 3600)
    assert result.recorded == 15 * 60 and result.connected == 0
    assert result.to_json()["not_recorded_seconds"] == 3600
    [day] = result.days  # the file began before the period; its gap falls within it
    assert (day.files, day.gap_seconds) == (0, 900)


def test_lines_from_before_coverage_are_read_and_counted(tmp_path: Path) -> None:
    folder = stream(tmp_path, line(T0, "2026-12-01T00:15:00.000Z", old=True),
                    line("2026-12-01T00:15:00.000Z", "2026-12-01T00:30:00.000Z"))
    result = report(folder)
    assert result.without_coverage == 1 and result.connected == 1800 and result.gaps == []
