"""Where a Mastodon stream resumes, read back from its files and its record
(sfmd.sources.mastodon.resume, .statuses)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from sfmd.sources.mastodon import resume
from sfmd.sources.mastodon.statuses import backfill_line, id_at, ms_of, overlap_ids, update_id


def frame(status_id: int, event: str = "update") -> bytes:
    payload = json.dumps({"id": str(status_id), "content": "<p>hi</p>"})
    if event != "update":
        payload = str(status_id)
    return json.dumps({"stream": ["hashtag", "a"], "event": event, "payload": payload}).encode()


def publish(stream_dir: Path, name: str, lines: list[bytes]) -> None:
    """A published file and its manifest line, as the archive leaves them."""
    stream_dir.mkdir(parents=True, exist_ok=True)
    path = stream_dir / name
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))
    with open(stream_dir / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"file": f"{stream_dir.name}/{name}"}) + "\n")


def test_ids_are_time_based() -> None:
    assert ms_of(id_at(1_700_000_000_123)) == 1_700_000_000_123
    assert overlap_ids(60) == 60_000 << 16


def test_a_filled_status_is_stored_in_the_shape_of_a_streamed_update() -> None:
    line = json.loads(backfill_line(["hashtag", "a"], {"id": "7", "content": "x"}))
    assert line["event"] == "update" and line["backfill"] is True
    assert line["stream"] == ["hashtag", "a"] and json.loads(line["payload"])["id"] == "7"
    assert update_id(line) == 7
    assert update_id({"event": "delete", "payload": "7"}) is None


def test_the_resume_point_is_the_newest_update_stored(tmp_path: Path) -> None:
    d = tmp_path / "s"
    base = id_at(1_700_000_000_000)
    publish(d, "a.gz", [frame(base + 1), frame(base + 5)])
    publish(d, "b.gz", [frame(base + 9), frame(base + 3), frame(99, "delete")])  # a late one
    newest, ids = resume.read_back(d, None, overlap=6)
    assert newest == base + 9
    assert resume.resume_point(None, newest) == base + 9
    assert sorted(ids) == [base + 3, base + 5, base + 9]  # at or above 9 - 6


def test_an_unfinished_fill_keeps_its_start_whatever_came_live(tmp_path: Path) -> None:
    d = tmp_path / "s"
    base = id_at(1_700_000_000_000)
    publish(d, "a.gz", [frame(base + 100)])  # stored live while the fill ran
    resume.save_record(d, resume.Record(base + 10, filling=True))
    record = resume.load_record(d)
    assert record == resume.Record(base + 10, True)
    newest, ids = resume.read_back(d, record, overlap=5)
    assert resume.resume_point(record, newest) == base + 10
    assert ids == [base + 100]  # still met again by the fill: it must not be stored twice
    # Finished: the newest stored wins over an older record, and a newer record over files.
    assert resume.resume_point(resume.Record(base + 10, False), newest) == base + 100
    assert resume.resume_point(resume.Record(base + 500, False), newest) == base + 500
    assert resume.resume_point(None, None) is None


def test_a_broken_record_is_ignored(tmp_path: Path) -> None:
    (tmp_path / resume.RECORD_NAME).write_text("{not json")
    assert resume.load_record(tmp_path) is None
    assert resume.load_record(tmp_path / "missing") is None


def test_seen_forgets_what_can_no_longer_come_again() -> None:
    seen = resume.Seen()
    for i in (5, 1, 9):
        seen.add(i)
    seen.forget_below(5)
    assert 1 not in seen and 5 in seen and 9 in seen and len(seen) == 2
