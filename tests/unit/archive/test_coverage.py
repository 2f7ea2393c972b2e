"""Coverage in the manifest, on real files with a movable clock: every line's gaps and
provenance, the lines for spans with nothing stored, and how a run's end is read back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sfmd.archive import Archive
from sfmd.archive.coverage import Coverage, mark_alive, parse_iso
from tests.helpers.archive import STREAM, Clock, batch, make_archive, wait_for

HOUR = 3600
ASKED = {"source": "twitter", "endpoint": "http://h/1.1/statuses/filter.json",
         "credential": "alpha", "params": {"track": "cats"}}


def lines(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / STREAM / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def spans(entry: dict[str, Any]) -> tuple[float, float]:
    return parse_iso(entry["start"]), parse_iso(entry["end"])


def gap_spans(entry: dict[str, Any]) -> list[tuple[float, float, str]]:
    return [(parse_iso(g["from"]), parse_iso(g["to"]), g["reason"]) for g in entry["gaps"]]


async def live(tmp_path: Path, clock: Clock, **kwargs: Any) -> Archive:
    archive = make_archive(tmp_path, clock=clock, **kwargs)
    await archive.open()
    archive.asking(ASKED)
    archive.streaming()
    return archive


async def test_a_stream_with_no_fault_has_no_gaps_and_says_what_it_asked_for(
    tmp_path: Path,
) -> None:
    clock = Clock()
    clock.align(HOUR, into=100)
    archive = await live(tmp_path, clock)
    await archive.write(batch("m", 3), 3)
    await archive.close()
    [entry] = lines(tmp_path)
    assert entry["gaps"] == [] and entry["closed"] is True
    provenance = entry["provenance"]
    assert provenance["host"] and provenance["sfmd"] and provenance["run"]
    [request] = provenance["requests"]
    assert {k: request[k] for k in ASKED} == ASKED


async def test_a_backoff_is_a_gap_with_its_error(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(HOUR, into=100)
    archive = await live(tmp_path, clock)
    await archive.write(batch("m", 3), 3)
    down = clock()
    archive.not_streaming("backoff", "HTTP 503 Service Unavailable")
    clock.offset += 7
    archive.streaming()
    await archive.close()
    [entry] = lines(tmp_path)
    [(start, end, reason)] = gap_spans(entry)
    assert reason == "backoff" and entry["gaps"][0]["error"] == "HTTP 503 Service Unavailable"
    assert abs(start - down) < 0.01 and abs(end - (down + 7)) < 0.01
    assert entry["gaps"][0]["refilled"] == "none"


async def test_a_quiet_interval_gets_a_line_with_no_file(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(2, into=0.5)  # two-second intervals: a boundary comes soon
    opened = clock()
    archive = await live(tmp_path, clock, save_interval=2)
    await wait_for(lambda: bool(lines(tmp_path)), timeout=5, what="the quiet interval's line")
    await archive.close()
    quiet, last = lines(tmp_path)[0], lines(tmp_path)[-1]
    assert quiet["file"] is None and quiet["messages"] == 0 and quiet["gaps"] == []
    start, end = spans(quiet)
    assert abs(start - opened) < 0.05 and end % 2 == 0  # from the open to the boundary
    assert last["closed"] is True and last["file"] is None


async def test_a_stop_and_a_start_leave_a_stopped_gap(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(HOUR, into=100)
    archive = await live(tmp_path, clock)
    await archive.write(batch("a", 2), 2)
    await archive.close()
    stopped = spans(lines(tmp_path)[-1])[1]
    clock.offset += 30
    again = await live(tmp_path, clock)
    restarted = clock()
    await again.write(batch("b", 2), 2)
    await again.close()
    first, second = lines(tmp_path)
    assert first["gaps"] == [] and first["closed"] is True
    assert gap_spans(second) == [(stopped, restarted, "stopped")] or (
        abs(gap_spans(second)[0][0] - stopped) < 0.01
        and abs(gap_spans(second)[0][1] - restarted) < 0.01
    )


async def test_a_crash_is_daemon_down_from_the_last_sign_of_life(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(HOUR, into=100)
    clock.offset += HOUR  # ahead of the files' real mtimes, as a real clock always is
    archive = await live(tmp_path, clock)
    await archive.write(batch("a", 2), 2)
    await wait_for(lambda: bool(archive.current_file and archive.current_file.stat().st_size))
    archive.not_streaming("backoff", "network error")  # a gap open when the process dies
    clock.offset += 5
    died = clock()
    run = archive.coverage.writer["run"]
    mark_alive(tmp_path, run, died)
    part = archive.current_file
    assert part is not None
    os.utime(part, (died - 1, died - 1))  # its last write, on the moved clock
    archive._release_lock()  # the process is gone: no close, the .part stays
    if archive._writer is not None:
        archive._writer.cancel()
    clock.offset += 40
    again = make_archive(tmp_path, clock=clock)
    await again.open()
    again.streaming()
    back = clock()
    await again.close()
    entries = lines(tmp_path)
    recovered = entries[0]
    assert recovered["file"] and [g[2] for g in gap_spans(recovered)] == ["backoff"]
    down = [g for e in entries[1:] for g in gap_spans(e) if g[2] == "daemon_down"]
    assert len(down) == 1
    assert abs(down[0][0] - died) < 0.01 and abs(down[0][1] - back) < 0.01


async def test_a_filter_change_within_a_file_shows_both_requests(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(HOUR, into=100)
    archive = await live(tmp_path, clock)
    await archive.write(batch("a", 2), 2)
    clock.offset += 10
    changed = clock()
    archive.asking({**ASKED, "params": {"track": "dogs"}})
    await archive.write(batch("b", 2), 2)
    await archive.close()
    [entry] = lines(tmp_path)
    first, second = entry["provenance"]["requests"]
    assert first["params"] == {"track": "cats"} and second["params"] == {"track": "dogs"}
    assert abs(parse_iso(second["since"]) - changed) < 0.01


async def test_days_down_are_one_line_then_the_file_s_own(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(HOUR, into=100)
    archive = await live(tmp_path, clock)
    await archive.close()
    stopped = spans(lines(tmp_path)[-1])[1]
    clock.offset += 3 * 86400  # three days later
    again = await live(tmp_path, clock)
    await again.write(batch("b", 2), 2)
    await again.close()
    _, between, file_line = lines(tmp_path)
    assert between["file"] is None and spans(between)[0] == stopped
    assert spans(between)[1] % HOUR == 0 and spans(between)[1] > stopped + 2 * 86400
    assert [g[2] for g in gap_spans(between)] == ["stopped"]
    assert gap_spans(file_line)[0][0] == spans(between)[1]  # the gap goes on into the file


async def test_a_manifest_from_before_coverage_starts_without_a_gap(tmp_path: Path) -> None:
    (tmp_path / STREAM).mkdir()
    old = {"file": "s1/x.jsonl.gz", "start": "2024-01-01T00:00:00.000Z",
           "end": "2024-01-01T00:15:00.000Z", "messages": 1, "tweets": 1, "bytes": 9,
           "sha256": "0" * 64}
    (tmp_path / STREAM / "manifest.jsonl").write_text(json.dumps(old) + "\n")
    clock = Clock()
    clock.align(HOUR, into=100)
    archive = await live(tmp_path, clock)
    await archive.write(batch("b", 2), 2)
    await archive.close()
    assert lines(tmp_path)[1]["gaps"] == []


async def test_a_first_connection_that_fails_is_a_gap_from_the_start(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(HOUR, into=100)
    archive = make_archive(tmp_path, clock=clock)
    before = clock()
    await archive.open()
    opened = clock()
    clock.offset += 3
    archive.not_streaming("backoff", "HTTP 401")
    clock.offset += 4
    up_before = clock()
    archive.streaming()
    up_after = clock()
    await archive.write(batch("b", 1), 1)
    await archive.close()
    [(start, end, _)] = gap_spans(lines(tmp_path)[0])
    # From the open (not from the failure 3 s later) until it streamed, 7 s on.
    assert before - 0.001 <= start <= opened + 0.001
    assert up_before - 0.001 <= end <= up_after + 0.001


def test_the_journal_keeps_what_the_manifest_has_not_yet(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    coverage = Coverage(journal)
    coverage.up(10.0)
    coverage.down(20.0, "backoff", "boom")
    coverage.asked_for(5.0, {"params": {"a": "b"}})
    back = Coverage.load(journal)
    assert [(g.start, g.end, g.reason, g.error) for g in back.gaps] == [(20.0, None, "backoff",
                                                                          "boom")]
    assert back.asked[0].what == {"params": {"a": "b"}}
    coverage.up(30.0)
    coverage.written_until(40.0)
    assert Coverage.load(journal).gaps == []


def test_a_save_that_would_write_the_same_journal_again_is_skipped(tmp_path: Path) -> None:
    """Most saves follow a publish that changed nothing the journal holds: no file is
    rewritten then; any change is written as before."""
    journal = tmp_path / "j"
    coverage = Coverage(journal)
    coverage.down(20.0, "backoff", "boom")
    written, text = journal.stat(), journal.read_text()
    coverage.written_until(10.0)  # the open gap stays: the same journal
    coverage.written_until(15.0)
    assert (journal.stat().st_ino, journal.stat().st_mtime_ns) == (
        written.st_ino, written.st_mtime_ns)
    coverage.up(30.0)
    coverage.written_until(40.0)
    assert journal.read_text() != text
    assert Coverage.load(journal).gaps == []


def test_what_the_manifest_took_is_forgotten_without_changing_what_a_status_shows(
    tmp_path: Path,
) -> None:
    """Every stream writes its manifest at the same boundary: that tells nobody of a change,
    and what a status shows of the coverage stays as it was (the last gap too)."""
    told: list[int] = []
    coverage = Coverage(tmp_path / "j", notice=lambda: told.append(coverage.revision))
    coverage.up(10.0)
    coverage.down(20.0, "backoff", "boom")
    coverage.up(30.0)
    assert len(told) == 5  # connected, its gap, gone, its gap, connected again
    shown, revision = coverage.shown(50.0), coverage.revision
    for t in (25.0, 40.0, 60.0):  # the gap still open in the manifest's span, then behind it
        coverage.written_until(t)
        assert coverage.shown(50.0) == shown and coverage.revision == revision
    assert len(told) == 5 and Coverage.load(tmp_path / "j").gaps == []
    coverage.down(70.0, "stall")
    assert len(told) == 7 and coverage.revision != revision
