"""Where a Mastodon stream resumes: the newest status id up to which it is complete.

Mastodon has no replay, so after every reconnect and restart the stream fills its gap from
its REST timeline, from this point less `fill_overlap`. The point is the newest status id
stored (read back from the stream's files), except while a fill is unfinished: then live
frames already stored are newer than what is complete, so the point is the one the fill
started from. That point is kept in a small record beside the stream's files,
`.mastodon-resume.json`, written durably before the stream subscribes again and replaced
when the fill finishes; a fill cut short by a crash, a stop or a long rate-limit wait is
resumed from it. For a stream that has stored nothing yet, the record holds the id of the
moment it first subscribed: a quiet hashtag is complete from then on too.

`Seen` remembers the ids stored around the fill, so a status that arrives both live and by
the fill (or twice by overlapping fills) is stored once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sfmd.archive.tail import file_lines, newest_files
from sfmd.durable import write_atomically
from sfmd.sources.mastodon.statuses import NotAFrame, parse_frame, update_id

RECORD_NAME = ".mastodon-resume.json"


@dataclass(frozen=True)
class Record:
    complete_to: int  # every status up to this id is stored (but for late ones: the overlap)
    filling: bool  # a fill from `complete_to` has not finished


def load_record(stream_dir: Path) -> Record | None:
    try:
        data = json.loads((stream_dir / RECORD_NAME).read_bytes())
        return Record(int(data["complete_to"]), bool(data["filling"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: the files alone say where to resume


def save_record(stream_dir: Path, record: Record) -> None:
    """Replace the record durably (blocking: run it in a worker thread)."""
    data = json.dumps({"complete_to": str(record.complete_to), "filling": record.filling})
    write_atomically(stream_dir / RECORD_NAME, data.encode() + b"\n")


def read_back(stream_dir: Path, record: Record | None, overlap: int
              ) -> tuple[int | None, list[int]]:
    """The newest status id the stream stored, and every stored id the next fill can meet
    again (at or above its resume point less `overlap`), from its newest files, newest file
    first until one lies wholly below that floor. Blocking: run it in a worker thread."""
    newest: int | None = None
    found: list[int] = []
    for path in reversed(newest_files(stream_dir)):
        ids = [i for i in map(_line_id, file_lines(path)) if i is not None]
        if not ids:
            continue
        newest = max(newest or 0, max(ids))
        found.extend(ids)
        point = resume_point(record, newest)
        if point is not None and max(ids) < point - overlap:
            break
    point = resume_point(record, newest)
    if point is None:
        return newest, []
    return newest, [i for i in found if i >= point - overlap]


def _line_id(line: bytes) -> int | None:
    """The status id of a stored `update` line; None for any other line."""
    if b'"update"' not in line:
        return None
    try:
        return update_id(parse_frame(line))
    except NotAFrame:
        return None


def resume_point(record: Record | None, newest_stored: int | None) -> int | None:
    """Where a fill starts (before the overlap): an unfinished fill's start, else the newest
    id stored or the record's, whichever is newer; None for a stream that never ran."""
    if record is not None and record.filling:
        return record.complete_to
    candidates = [i for i in (newest_stored, record and record.complete_to) if i is not None]
    return max(candidates) if candidates else None


class Seen:
    """Status ids stored lately. Ids under a floor can no longer come again (the fill has
    moved past them, and live frames are new), so they are forgotten when the floor rises."""

    def __init__(self) -> None:
        self._ids: set[int] = set()

    def __contains__(self, status_id: int) -> bool:
        return status_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, status_id: int) -> None:
        self._ids.add(status_id)

    def forget_below(self, floor: int) -> None:
        self._ids = {i for i in self._ids if i >= floor}
