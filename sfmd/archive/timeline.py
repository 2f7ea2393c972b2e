"""A stream's coverage over a period, read from its manifest alone.

`sfmctl coverage` uses this while the daemon runs or not: it reads files, not the socket. The
period's time falls in three kinds: **connected** (a line covers it and no gap does),
**gaps** (a line's gap covers it, with the reason), and **not recorded** (no line covers it:
the stream did not exist yet, was deleted, or its lines predate coverage). Lines written
before coverage existed have no `gaps`: their time counts as connected, and the report says
how many such lines it read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sfmd.archive.coverage import parse_iso
from sfmd.archive.manifest import MANIFEST_NAME
from sfmd.status import epoch_iso

Span = tuple[float, float]


def manifest_entries(stream_dir: Path) -> Iterator[dict[str, Any]]:
    """Every line of a stream's manifest that parses, files and null lines alike."""
    try:
        raw = (stream_dir / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        return
    for line in raw.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn line (a crash mid-append) or something foreign
        if isinstance(entry, dict) and "start" in entry and "end" in entry and "file" in entry:
            yield entry


def union(spans: Iterable[Span]) -> list[Span]:
    """Overlapping or touching spans merged, in order."""
    merged: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def clip(spans: Iterable[Span], a: float, b: float) -> list[Span]:
    return [(max(s, a), min(e, b)) for s, e in spans if min(e, b) > max(s, a)]


def length(spans: Iterable[Span]) -> float:
    return sum(e - s for s, e in spans)


@dataclass
class Day:
    day: str
    files: int = 0
    messages: int = 0
    tweets: int = 0
    gap_seconds: float = 0.0


@dataclass
class Report:
    stream: str
    since: float
    until: float
    recorded: float = 0.0  # seconds some line covers
    connected: float = 0.0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    days: list[Day] = field(default_factory=list)
    without_coverage: int = 0  # lines from before coverage: no gaps known

    @property
    def percent(self) -> float | None:
        return round(100 * self.connected / self.recorded, 3) if self.recorded else None

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "since": epoch_iso(self.since),
            "until": epoch_iso(self.until),
            "recorded_seconds": round(self.recorded, 3),
            "connected_seconds": round(self.connected, 3),
            "not_recorded_seconds": round(self.until - self.since - self.recorded, 3),
            "connected_percent": self.percent,
            "gaps": self.gaps,
            "days": [vars(day) | {"gap_seconds": round(day.gap_seconds, 3)} for day in self.days],
            "lines_without_coverage": self.without_coverage,
        }


def report(
    stream_dir: Path, since: float | None = None, until: float | None = None
) -> Report:
    """The coverage of the stream in `stream_dir` over [since, until], by default from its
    first line's start to its last line's end."""
    entries = list(manifest_entries(stream_dir))
    spans = [(parse_iso(e["start"]), parse_iso(e["end"])) for e in entries]
    a = since if since is not None else min((s for s, _ in spans), default=0.0)
    b = until if until is not None else max((e for _, e in spans), default=a)
    result = Report(stream_dir.name, a, max(a, b))
    recorded = clip(union(spans), a, b)
    gap_spans: list[Span] = []
    for entry in entries:
        if "gaps" not in entry:
            result.without_coverage += 1
        for gap in entry.get("gaps") or ():
            start, end = parse_iso(gap["from"]), parse_iso(gap["to"])
            if min(end, b) > max(start, a):
                gap_spans.append((start, end))
                result.gaps.append({**gap, "seconds": round(end - start, 3)})
    gaps = clip(union(gap_spans), a, b)
    result.recorded = length(recorded)
    result.connected = result.recorded - length(clip(gaps, a, b))
    result.gaps = _joined(result.gaps)
    result.days = _days(entries, gaps, a, b)
    return result


def _joined(gaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per gap: a gap that crosses lines is written once per line it crosses, and
    its latest piece knows best what was refilled (a replay after a reconnect is judged when
    its first event arrives, after the earlier lines were written)."""
    out: list[dict[str, Any]] = []
    for gap in sorted(gaps, key=lambda g: parse_iso(g["from"])):
        last = out[-1] if out else None
        if (
            last is not None
            and last["reason"] == gap["reason"]
            and last.get("error") == gap.get("error")
            and parse_iso(gap["from"]) <= parse_iso(last["to"])
        ):
            if parse_iso(gap["to"]) > parse_iso(last["to"]):
                last["to"] = gap["to"]
            last["seconds"] = round(parse_iso(last["to"]) - parse_iso(last["from"]), 3)
            last["refilled"] = gap.get("refilled", last.get("refilled"))
            if "unrecoverable" in gap:
                last["unrecoverable"] = gap["unrecoverable"]
            continue
        out.append(dict(gap))
    return out


def _days(entries: list[dict[str, Any]], gaps: list[Span], a: float, b: float) -> list[Day]:
    days: dict[str, Day] = {}

    def day_of(t: float) -> Day:
        key = datetime.fromtimestamp(t, UTC).date().isoformat()
        return days.setdefault(key, Day(key))

    for entry in entries:
        start = parse_iso(entry["start"])
        if entry["file"] is None or not a <= start < b:
            continue
        day = day_of(start)
        day.files += 1
        day.messages += int(entry.get("messages", 0))
        day.tweets += int(entry.get("tweets", 0))
    for start, end in gaps:  # a gap's seconds go to the days they fall on
        t = start
        while t < end:
            midnight = datetime.fromtimestamp(t, UTC).replace(hour=0, minute=0, second=0,
                                                              microsecond=0)
            next_day = (midnight + timedelta(days=1)).timestamp()
            day_of(t).gap_seconds += min(end, next_day) - t
            t = next_day
    return [days[key] for key in sorted(days)]
