"""The archive on real files: clock-driven rotation, exact bytes, manifest, recovery, failures."""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from sfmd.archive import (
    Archive,
    ArchiveError,
    Deflate,
    FileName,
    PublishedFile,
    interval_start,
    read_manifest,
    recover_part,
    spread_offset,
)
from sfmd.archive import disk as disk_module
from sfmd.archive import manifest as manifest_module
from sfmd.archive import partfile as partfile_module
from sfmd.archive import recovery as recovery_module
from sfmd.archive import writer as writer_module
from sfmd.sources.twitter.framing import MAX_MESSAGE_BYTES, count_tweets, is_tweet

STREAM = "s1"


# -- helpers ---------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


class Clock:
    """The wall clock plus an offset the test can move (jumps) or align to a boundary."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def align(self, save_interval: int, into: float) -> None:
        """Place "now" `into` seconds after a rotation boundary."""
        now = time.time()
        self.offset = into - (now % save_interval)


def tweet(label: str, i: int, size: int = 60) -> bytes:
    body = json.dumps({"id": i, "text": label}).encode()
    return body[:-1] + b', "pad": "' + b"x" * max(0, size - len(body) - 10) + b'"}'


def batch(label: str, n: int, size: int = 60) -> list[bytes]:
    return [tweet(label, i, size) for i in range(n)]


def final_files(data_dir: Path) -> list[Path]:
    """Published archive files (not `.part`, not the manifest), oldest first."""
    found = [(name, p) for p in data_dir.rglob("*") if (name := FileName.parse(p.name))]
    return [p for name, p in sorted(found, key=lambda item: (item[0].start, item[0].seq))]


def parts(data_dir: Path, pattern: str = "*.part") -> list[Path]:
    return sorted(data_dir.rglob(pattern))


def content(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def manifest(data_dir: Path) -> list[dict]:
    return read_manifest(data_dir / STREAM / "manifest.jsonl")


def check_entry(data_dir: Path, entry: dict) -> bytes:
    """A manifest line must describe its file exactly; returns the file's lines."""
    path = data_dir / entry["file"]
    assert not path.name.endswith(".part")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    data = content(path)
    lines = data.split(b"\n")
    assert lines.pop() == b"", "a file must end with a line end"
    assert entry["messages"] == len(lines)
    assert entry["tweets"] == sum(map(is_tweet, lines))
    assert entry["bytes"] == len(data)
    start = datetime.fromisoformat(entry["start"])
    end = datetime.fromisoformat(entry["end"])
    name = FileName.parse(path.name)
    assert name is not None and name.start == start.timestamp() <= end.timestamp()
    return data


def make_archive(data_dir: Path, **kwargs) -> Archive:
    settings = {
        "save_interval": 3600,
        "compress": True,
        "flush_interval": 0.05,
        "count": count_tweets,
        **kwargs,
    }
    return Archive(data_dir, STREAM, **settings)


def gzip_with_flushes(lines: list[bytes], torn: bytes = b"") -> tuple[bytes, list[int]]:
    """A gzip stream sync-flushed after every line, and the offset after each flush.

    With `torn`, a last line without its line end is flushed too and the stream is left
    without its trailer, as a crash would leave it.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    out, flushed = b"", []
    for chunk in [line + b"\n" for line in lines] + ([torn] if torn else []):
        out += compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)
        flushed.append(len(out))
    return (out if torn else out + compressor.flush(zlib.Z_FINISH)), flushed


def leftover(data_dir: Path, start: int, data: bytes, compress: bool, seq: int = 0) -> Path:
    name = FileName(STREAM, start, seq, compress)
    directory = name.directory(data_dir / STREAM)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name.filename + ".part")
    path.write_bytes(data)
    return path


# -- names -----------------------------------------------------------------------------------


def test_names_and_intervals() -> None:
    assert interval_start(1_700_000_123.9, 900) == 1_700_000_100
    assert interval_start(1_700_000_100, 900) == 1_700_000_100
    name = FileName("my-stream", 1_700_000_100, 0, True)
    assert name.filename == "my-stream-20231114T221500Z.jsonl.gz"
    assert name.directory(Path("d")) == Path("d/2023/11/14")
    assert name.with_seq(2).filename == "my-stream-20231114T221500Z.2.jsonl.gz"
    assert FileName("x", 0, 1, False).filename == "x-19700101T000000Z.1.jsonl"
    for text in (name.filename, name.with_seq(12).filename, "x-19700101T000000Z.1.jsonl"):
        parsed = FileName.parse(text)
        assert parsed is not None and parsed.filename == text
    for junk in (
        "manifest.jsonl",
        "x-20231314T220000Z.jsonl",  # month 13
        "x-20231114T220000Z.01.jsonl",
        "x-20231114T220000.jsonl",
        "-20231114T220000Z.jsonl",
        "x-20231114T220000Z.jsonl.part",
    ):
        assert FileName.parse(junk) is None, junk


# -- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
async def test_files_are_complete_and_byte_exact(tmp_path: Path, compress: bool) -> None:
    seen: list[PublishedFile] = []
    archive = make_archive(
        tmp_path, compress=compress, on_publish=seen.append, fsync_interval=0.001
    )
    assert await archive.open() == []
    sent: list[bytes] = []
    for n in range(50):
        messages = [*batch(f"b{n}", 20), b'{"delete":{"status":{"id":1}}}']
        await archive.write(messages, 20)
        sent += messages
    big = b'{"text":"' + os.urandom(600_000).hex().encode() + b'"}'  # a 1.2 MB line
    await archive.write([big], 1)
    sent.append(big)
    await wait_until(lambda: archive.current_file is not None)
    assert archive.current_file is not None and archive.current_file.name.endswith(".part")
    published = await archive.close()
    assert published is not None and seen == [published]
    assert archive.published == 1 and archive.current_file is None
    assert parts(tmp_path) == []
    assert final_files(tmp_path) == [published.path]
    assert published.path.name.endswith(".jsonl.gz" if compress else ".jsonl")
    assert content(published.path) == b"".join(m + b"\n" for m in sent)
    [entry] = manifest(tmp_path)
    check_entry(tmp_path, entry)
    assert (
        entry["file"]
        == published.relpath
        == f"{STREAM}/" + "/".join(published.path.relative_to(tmp_path / STREAM).parts)
    )
    assert (entry["messages"], entry["tweets"]) == (len(sent), 50 * 20 + 1)
    assert published.sha256 == entry["sha256"]
    assert await archive.close() is None  # idempotent
    with pytest.raises(ArchiveError, match="not open"):
        await archive.write([b"{}"], 0)


@pytest.mark.parametrize("compress", [False, True])
async def test_close_right_after_write_stores_everything(tmp_path: Path, compress: bool) -> None:
    """close() may land while the writer is busy (opening the file, writing a batch)."""
    for n in range(8):
        archive = make_archive(tmp_path / str(n), compress=compress, flush_interval=10)
        await archive.open()
        sent = batch(f"r{n}", 5 + n)
        await archive.write(sent, len(sent))
        for _ in range(n):
            await asyncio.sleep(0)  # let the writer get to a different point each round
        published = await archive.close()
        assert published is not None and content(published.path) == b"".join(
            m + b"\n" for m in sent
        )


async def test_data_reaches_the_os_within_the_flush_interval(tmp_path: Path) -> None:
    """What a SIGKILL could lose is only what sits in memory: flushed data is in the .part."""
    archive = make_archive(tmp_path, compress=True, flush_interval=0.1)
    await archive.open()
    await archive.write(batch("a", 3), 3)

    def on_disk() -> bool:
        part = archive.current_file
        return part is not None and part.exists() and part.stat().st_size > 0

    await wait_until(on_disk, within=2)
    assert archive.current_file is not None
    torn = archive.current_file.read_bytes()
    assert zlib.decompressobj(31).decompress(torn) == b"".join(m + b"\n" for m in batch("a", 3))
    await archive.close()


async def test_rotation_on_boundaries_while_data_flows(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(1, into=0.8)
    archive = make_archive(tmp_path, save_interval=1, clock=clock)
    await archive.open()
    first = interval_start(clock(), 1)
    sent: list[bytes] = []
    i = 0
    while clock() < first + 2.15:  # three intervals with data in each
        message = json.dumps({"i": i, "t": clock()}).encode()
        await archive.write([message], 1)
        sent.append(message)
        i += 1
        await asyncio.sleep(0.005)
    await archive.close()
    entries = manifest(tmp_path)
    assert [datetime.fromisoformat(e["start"]).timestamp() for e in entries] == [
        first,
        first + 1,
        first + 2,
    ]
    stored = b""
    for entry in entries:
        data = check_entry(tmp_path, entry)
        start = datetime.fromisoformat(entry["start"]).timestamp()
        for line in data.splitlines():  # each message sits in its own interval's file
            assert start <= json.loads(line)["t"] < start + 1
        stored += data
    assert stored == b"".join(m + b"\n" for m in sent)
    ends = [datetime.fromisoformat(e["end"]).timestamp() for e in entries]
    assert ends[:2] == [first + 1, first + 2]  # closed on the boundary
    assert parts(tmp_path) == []


async def test_quiet_stream_is_published_on_time_and_empty_intervals_leave_nothing(
    tmp_path: Path,
) -> None:
    clock = Clock()
    clock.align(1, into=0.8)
    seen: list[PublishedFile] = []
    archive = make_archive(tmp_path, save_interval=1, clock=clock, on_publish=seen.append)
    await archive.open()
    start = interval_start(clock(), 1)
    await archive.write(batch("quiet", 2), 2)
    await wait_until(lambda: bool(seen), within=3)  # no further write needed
    assert clock() >= start + 1
    [published] = seen
    assert published.start.timestamp() == start and published.end.timestamp() == start + 1
    assert archive.current_file is None and parts(tmp_path) == []
    # A whole interval passes with no message: no file for it.
    await wait_until(lambda: clock() >= start + 2.1, within=4)
    assert len(seen) == 1 and len(final_files(tmp_path)) == 1 and parts(tmp_path) == []
    assert await archive.close() is None
    check_entry(tmp_path, manifest(tmp_path)[0])


def test_spread_offsets_are_fixed_per_name_and_fill_the_window() -> None:
    offsets = [spread_offset(f"s{i:04d}", 2.0) for i in range(1000)]
    assert offsets == [spread_offset(f"s{i:04d}", 2.0) for i in range(1000)]
    assert all(0 <= o < 2.0 for o in offsets)
    # Spread out, not bunched: every tenth of the window holds some streams.
    assert {int(o * 5) for o in offsets} == set(range(10))
    assert spread_offset("s0001", 0.0) == 0.0


async def test_a_quiet_stream_publishes_at_its_place_in_the_spread(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(60, into=59.0)
    seen: list[tuple[float, PublishedFile]] = []
    archive = make_archive(
        tmp_path, save_interval=60, clock=clock, publish_spread=600.0,
        on_publish=lambda f: seen.append((clock(), f)),
    )  # fmt: skip
    delay = spread_offset(STREAM, 6.0)  # the spread is at most save_interval / 10
    assert 0.2 < delay < 2
    await archive.open()
    start = interval_start(clock(), 60)
    await archive.write(batch("quiet", 2), 2)
    await wait_until(lambda: bool(seen), within=5)
    [(when, published)] = seen
    assert when >= start + 60 + delay
    # The file still covers exactly its interval.
    assert published.start.timestamp() == start and published.end.timestamp() == start + 60
    await archive.close()


async def test_a_busy_stream_writes_the_next_interval_while_the_last_file_waits_its_turn(
    tmp_path: Path,
) -> None:
    """The spread holds for streams with messages too: the new interval's file opens and
    fills at once; the finished one is published at the stream's turn, not before."""
    clock = Clock()
    clock.align(1200, into=1199.0)
    seen: list[PublishedFile] = []
    archive = make_archive(
        tmp_path, save_interval=1200, clock=clock, publish_spread=120.0, on_publish=seen.append
    )
    turn = spread_offset(STREAM, 120.0)  # the spread is at most save_interval / 10
    assert turn > 5
    await archive.open()
    await archive.write(batch("old", 2), 2)
    await wait_until(lambda: archive.current_file is not None, within=3)
    old_part = archive.current_file
    clock.offset += 1.5  # into the next interval, seconds before this stream's turn
    await archive.write(batch("new", 1), 1)
    await wait_until(lambda: archive.current_file not in (None, old_part), within=3)
    await wait_until(lambda: len(parts(tmp_path)) == 2, within=3)
    assert seen == [] and manifest(tmp_path) == []  # the old file waits its turn
    # ... already sealed: a complete gzip (its compressor freed), which a crash now would
    # leave for recovery exactly as it is.
    assert old_part is not None
    assert gzip.decompress(old_part.read_bytes()) == b"".join(m + b"\n" for m in batch("old", 2))
    clock.offset += turn  # its turn comes
    await wait_until(lambda: len(seen) == 1, within=10)
    assert seen[0].messages == 2 and archive.current_file is not None
    await archive.close()
    old, new = manifest(tmp_path)
    assert check_entry(tmp_path, old) == b"".join(m + b"\n" for m in batch("old", 2))
    assert check_entry(tmp_path, new) == b"".join(m + b"\n" for m in batch("new", 1))
    assert datetime.fromisoformat(old["end"]) == datetime.fromisoformat(new["start"])


async def test_close_publishes_a_file_still_waiting_its_turn(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(1200, into=1199.0)
    archive = make_archive(tmp_path, save_interval=1200, clock=clock, publish_spread=120.0)
    await archive.open()
    await archive.write(batch("old", 2), 2)
    clock.offset += 1.5
    await archive.write(batch("new", 3), 3)
    await wait_until(lambda: len(parts(tmp_path)) == 2, within=3)
    await archive.close()
    assert parts(tmp_path) == []
    assert [e["messages"] for e in manifest(tmp_path)] == [2, 3]


async def test_a_write_after_a_boundary_goes_to_the_new_file(tmp_path: Path) -> None:
    """Before the timer runs (here: a clock jump), the next write already belongs to the new
    interval, and the old file is published first."""
    clock = Clock()
    clock.align(60, into=10)
    archive = make_archive(tmp_path, save_interval=60, compress=False, clock=clock)
    await archive.open()
    await archive.write(batch("old", 3), 3)
    clock.offset += 60
    await archive.write(batch("new", 2), 2)
    await archive.close()
    old, new = manifest(tmp_path)
    assert check_entry(tmp_path, old) == b"".join(m + b"\n" for m in batch("old", 3))
    assert check_entry(tmp_path, new) == b"".join(m + b"\n" for m in batch("new", 2))
    assert datetime.fromisoformat(new["start"]) == datetime.fromisoformat(old["end"])


async def test_clock_jumps(tmp_path: Path) -> None:
    """Backwards: keep filling the open file (no file for an earlier interval). Forwards:
    the open file is published soon after, not a whole sleep later."""
    clock = Clock()
    clock.align(2, into=0.1)
    archive = make_archive(tmp_path, save_interval=2, clock=clock)
    await archive.open()
    await archive.write(batch("a", 2), 2)
    await wait_until(lambda: archive.current_file is not None)
    part = archive.current_file
    clock.offset -= 5
    await archive.write(batch("b", 2), 2)
    await wait_until(lambda: part is not None and part.stat().st_size > 30)
    assert archive.current_file == part and archive.published == 0
    clock.offset += 5 + 600
    await wait_until(lambda: archive.published == 1, within=2)
    [entry] = manifest(tmp_path)
    assert check_entry(tmp_path, entry) == b"".join(
        m + b"\n" for m in batch("a", 2) + batch("b", 2)
    )
    start = datetime.fromisoformat(entry["start"]).timestamp()
    assert datetime.fromisoformat(entry["end"]).timestamp() == start + 2  # clamped to the boundary
    await archive.close()


async def test_restarts_within_an_interval_never_overwrite(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(3600, into=100)
    names = []
    for compress in (True, True, False, True):
        archive = make_archive(tmp_path, compress=compress, clock=clock)
        await archive.open()
        await archive.write(batch(f"run{len(names)}", 2), 2)
        published = await archive.close()
        assert published is not None
        names.append(published.path.name)
    stamp = FileName(STREAM, interval_start(clock(), 3600), 0, True).filename[: -len(".jsonl.gz")]
    assert names == [
        f"{stamp}.jsonl.gz",
        f"{stamp}.1.jsonl.gz",
        f"{stamp}.2.jsonl",
        f"{stamp}.3.jsonl.gz",
    ]
    for n, entry in enumerate(manifest(tmp_path)):
        assert check_entry(tmp_path, entry) == b"".join(m + b"\n" for m in batch(f"run{n}", 2))


async def test_write_order_is_kept_under_concurrency_and_backpressure(tmp_path: Path) -> None:
    archive = make_archive(tmp_path, batch_bytes=2048, max_pending_bytes=8192)
    await archive.open()

    async def writer(task: int) -> None:
        for n in range(60):
            await archive.write(
                [json.dumps([task, n, k]).encode() + b" " * 80 for k in range(3)], 0
            )

    await asyncio.gather(*(writer(t) for t in range(6)))
    await archive.close()
    [entry] = manifest(tmp_path)
    rows = [json.loads(line) for line in check_entry(tmp_path, entry).splitlines()]
    assert len(rows) == 6 * 60 * 3
    for task in range(6):
        assert [(n, k) for t, n, k in rows if t == task] == [
            (n, k) for n in range(60) for k in range(3)
        ]
    for i in range(0, len(rows), 3):  # one call's messages stay together
        assert rows[i][:2] == rows[i + 1][:2] == rows[i + 2][:2]


async def test_one_archive_per_stream_directory(tmp_path: Path) -> None:
    first = make_archive(tmp_path)
    await first.open()
    second = make_archive(tmp_path)
    with pytest.raises(ArchiveError, match="in use"):
        await second.open()
    await first.close()
    third = make_archive(tmp_path)
    await third.open()
    await third.close()
    assert await make_archive(tmp_path).close() is None  # never opened


# -- recovery --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
async def test_recovery_publishes_leftovers_cut_to_the_last_line(
    tmp_path: Path, compress: bool
) -> None:
    lines = [*batch("x", 5), b'{"limit":{"track":3}}']
    whole = b"".join(m + b"\n" for m in lines)
    start = 1_700_000_000 - 1_700_000_000 % 900
    if compress:
        data, _ = gzip_with_flushes(lines, torn=b'{"torn": "this line never ends')
    else:
        data = whole + b'{"torn": "this'
    path = leftover(tmp_path, start, data, compress)
    os.utime(path, (start + 123.5, start + 123.5))
    # A published file already holds this interval's first name: the leftover takes .1
    taken = path.with_name(path.name.removesuffix(".part"))
    taken.write_bytes(b"")
    seen: list[PublishedFile] = []
    archive = make_archive(tmp_path, on_publish=seen.append)
    with structlog.testing.capture_logs() as logs:
        recovered = await archive.open()
    published = [f for f in recovered if f.path != taken]
    assert [f.path.name for f in published] == [FileName(STREAM, start, 1, compress).filename]
    [result] = published
    assert content(result.path) == whole
    assert (result.messages, result.tweets, result.bytes) == (6, 5, len(whole))
    assert result.start.timestamp() == start and result.end.timestamp() == start + 123.5
    assert parts(tmp_path) == []
    entries = {e["file"]: e for e in manifest(tmp_path)}
    assert check_entry(tmp_path, entries[result.relpath]) == whole
    assert entries[result.relpath]["end"] == "2023-11-14T22:02:03.500Z"
    events = [e for e in logs if e["event"] == "recovered" and e.get("file") == result.relpath]
    assert events and events[0]["messages"] == 6 and events[0]["stream"] == STREAM
    assert b"torn" not in repr(logs).encode() and b'"text"' not in repr(logs).encode()
    assert archive.published == len(recovered) and seen == recovered
    await archive.close()


def test_torn_gzip_at_every_offset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not under test here
    lines = [tweet("torn", i, size=40 + 17 * i) for i in range(10)]
    data, flushed = gzip_with_flushes(lines)
    start = 1_600_000_200
    near_flushes = {cut for end in [0, *flushed] for cut in range(end - 6, end + 7)}
    cuts = sorted(c for c in near_flushes | set(range(0, len(data) + 1, 2)) if 0 <= c <= len(data))
    assert len(cuts) > 150
    for cut in cuts:
        part = leftover(tmp_path, start, data[:cut], compress=True)
        result = recover_part(part, tmp_path, Deflate(6), count_tweets)
        assert not part.exists()
        must_have = sum(1 for end in flushed if end <= cut)  # lines fully flushed before the cut
        if result is None:
            assert must_have == 0, cut
            assert list(tmp_path.rglob("*.jsonl*")) == []
            continue
        stored = result.path.read_bytes()
        assert hashlib.sha256(stored).hexdigest() == result.sha256
        got = gzip.decompress(stored).split(b"\n")
        assert got.pop() == b""
        assert must_have <= len(got) and got == lines[: len(got)], cut
        assert (result.messages, result.bytes) == (len(got), sum(len(g) + 1 for g in got))
        result.path.unlink()


def test_recovery_keeps_lines_as_long_as_the_framing_allows() -> None:
    """The archive has its own copy of the message size limit; it must not fall below the
    framing's, or recovery would take the longest messages for garbage."""
    assert recovery_module._MAX_MESSAGE_BYTES >= MAX_MESSAGE_BYTES


def test_damaged_leftovers_keep_what_came_before_the_damage(tmp_path: Path) -> None:
    lines = batch("z", 30)
    data, flushed = gzip_with_flushes(lines)
    whole = b"".join(m + b"\n" for m in lines)
    cases = {
        "zeros": (data[: flushed[19]] + bytes(5000), True, 20),
        "garbage": (data[: flushed[9]] + b"\xff" * 64 + data[flushed[9] :], True, 10),
        "plain zeros": (whole[:500] + bytes(300) + whole[800:], False, None),
    }
    for n, (torn, compress, expect) in enumerate(cases.values()):
        part = leftover(tmp_path, 1_600_000_000 + 3600 * n, torn, compress)
        result = recover_part(part, tmp_path, Deflate(1), count_tweets)
        assert result is not None
        got = content(result.path)
        if expect is None:  # plain: everything before the first NUL, to the last line end
            expect_bytes = whole[: whole.rfind(b"\n", 0, 500) + 1]
            assert got == expect_bytes
        else:
            assert got == b"".join(m + b"\n" for m in lines[:expect])


async def test_leftovers_without_a_complete_line_are_removed(tmp_path: Path) -> None:
    gz, flushed = gzip_with_flushes([b'{"a":1}'])
    leftover(tmp_path, 1_600_000_000, b'{"no line end', compress=False)
    leftover(tmp_path, 1_600_000_900, gz[: flushed[0] - 6], compress=True)
    leftover(tmp_path, 1_600_001_800, b"", compress=True)
    leftover(tmp_path, 1_600_002_700, b"not gzip at all\n", compress=True)
    archive = make_archive(tmp_path)
    assert await archive.open() == []
    assert parts(tmp_path) == [] and final_files(tmp_path) == [] and manifest(tmp_path) == []
    await archive.close()


async def test_stale_repair_copies_are_resolved(tmp_path: Path) -> None:
    """A crash mid-repair leaves `X.part.tmp`: dropped if the leftover is still there, put
    back in its place if it is the only copy."""
    gz, _ = gzip_with_flushes(batch("r", 3))
    both = leftover(tmp_path, 1_600_000_000, gz, compress=True)
    both.with_name(both.name + ".tmp").write_bytes(b"half a copy")
    alone = leftover(tmp_path, 1_600_003_600, gz, compress=True)
    alone.rename(alone.with_name(alone.name + ".tmp"))
    archive = make_archive(tmp_path)
    recovered = await archive.open()
    assert [f.messages for f in recovered] == [3, 3]
    assert parts(tmp_path) == [] and parts(tmp_path, "*.tmp") == []
    await archive.close()


async def test_manifest_reconcile_and_torn_manifest_line(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(3600, into=100)
    archive = make_archive(tmp_path, clock=clock)
    await archive.open()
    await archive.write(batch("m", 4), 4)
    published = await archive.close()
    assert published is not None
    # A crash between the rename and the manifest append, and a torn line from another crash.
    manifest_path = tmp_path / STREAM / "manifest.jsonl"
    manifest_path.write_bytes(b'{"file": "s1/torn.jsonl", "mess')
    archive = make_archive(tmp_path, clock=clock)
    with structlog.testing.capture_logs() as logs:
        recovered = await archive.open()
    assert [f.relpath for f in recovered] == [published.relpath]
    assert recovered[0].sha256 == published.sha256 and recovered[0].messages == 4
    assert any(e["event"] == "recovered" and e["file"] == published.relpath for e in logs)
    raw = manifest_path.read_bytes().split(b"\n")
    assert raw[0] == b'{"file": "s1/torn.jsonl", "mess' and raw[-1] == b""
    assert [json.loads(line)["file"] for line in raw[1:-1]] == [published.relpath]
    # Later appends stay on lines of their own.
    await archive.write(batch("n", 1), 1)
    await archive.close()
    entries = manifest(tmp_path)
    assert len(entries) == 2
    for entry in entries:
        check_entry(tmp_path, entry)
    # A third start finds nothing to add.
    archive = make_archive(tmp_path, clock=clock)
    assert await archive.open() == []
    await archive.close()


def test_a_sigkilled_writer_loses_nothing_that_was_flushed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, zlib
        from pathlib import Path
        from sfmd.archive import Archive
        from sfmd.sources.twitter.framing import count_tweets

        async def main():
            archive = Archive(Path(sys.argv[1]), "s1", save_interval=3600, compress=True,
                              flush_interval=0.05, count=count_tweets)
            await archive.open()
            for n in range(100):
                await archive.write([b'{"n": %d}' % n], 1)
            def on_disk():
                part = archive.current_file
                raw = part.read_bytes() if part is not None else b""
                return zlib.decompressobj(31).decompress(raw).count(b"\\n")

            while on_disk() < 100:  # every message handed to the OS, none left in memory
                await asyncio.sleep(0.01)
            print("flushed", flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"flushed\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(parts(tmp_path)) == 1

    async def reopen() -> list[PublishedFile]:
        archive = make_archive(tmp_path)
        try:
            return await archive.open()
        finally:
            await archive.close()

    [recovered] = asyncio.run(reopen())
    assert content(recovered.path) == b"".join(b'{"n": %d}\n' % n for n in range(100))
    assert parts(tmp_path) == []


# -- failing disks ---------------------------------------------------------------------------


class FailingDisk:
    """Replaces the archive's write primitive: when failing, writes half, then ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = False
        self.real = disk_module._write_all
        # Each module that writes files looks the primitive up in its own namespace.
        for user in (manifest_module, partfile_module, recovery_module):
            monkeypatch.setattr(user, "_write_all", self)

    def __call__(self, fd: int, data: bytes) -> None:
        if not self.failing:
            return self.real(fd, data)
        self.real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("compress", [False, True])
async def test_a_full_disk_raises_publishes_nothing_torn_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    disk = FailingDisk(monkeypatch)
    archive = make_archive(tmp_path, compress=compress)
    await archive.open()
    a, b, c, d = (batch(label, 5, size=200) for label in "abcd")
    await archive.write(a, 5)
    await wait_until(
        lambda: archive.current_file is not None and archive.current_file.stat().st_size
    )
    first_part = archive.current_file
    assert first_part is not None
    size_with_a = first_part.stat().st_size

    disk.failing = True
    await archive.write(b, 5)  # accepted: the failure is found when it is written
    await wait_until(lambda: archive.error is not None)
    with pytest.raises(ArchiveError, match="No space left on device") as failure:
        await archive.write(c, 5)  # refused while earlier messages wait
    assert str(first_part) in str(failure.value)
    assert final_files(tmp_path) == []
    assert parts(tmp_path) == [first_part]  # cut back to its last whole batch, kept for recovery
    assert first_part.stat().st_size == size_with_a
    raw = first_part.read_bytes()
    readable = zlib.decompressobj(31).decompress(raw) if compress else raw
    assert readable == b"".join(m + b"\n" for m in a)

    disk.failing = False
    await wait_until(lambda: archive.error is None)  # the retry succeeded on its own
    await archive.write(d, 5)
    published = await archive.close()
    assert published is not None and parts(tmp_path) == []
    entries = manifest(tmp_path)
    stored = {e["file"]: check_entry(tmp_path, e) for e in entries}
    assert sorted(stored.values()) == sorted(
        [b"".join(m + b"\n" for m in a), b"".join(m + b"\n" for m in b + d)]
    )
    assert stored[published.relpath] == b"".join(m + b"\n" for m in b + d)
    assert FileName.parse(published.path.name).seq == 1  # type: ignore[union-attr]


async def test_a_failing_publish_leaves_the_part_for_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FailingDisk(monkeypatch)
    archive = make_archive(tmp_path, compress=True)
    await archive.open()
    await archive.write(batch("p", 7), 7)
    await wait_until(
        lambda: archive.current_file is not None and archive.current_file.stat().st_size
    )
    disk.failing = True  # the gzip trailer cannot be written
    with pytest.raises(ArchiveError, match="No space left"):
        await archive.close()
    assert final_files(tmp_path) == [] and len(parts(tmp_path)) == 1
    assert manifest(tmp_path) == []
    disk.failing = False
    archive = make_archive(tmp_path)
    [recovered] = await archive.open()
    assert content(recovered.path) == b"".join(m + b"\n" for m in batch("p", 7))
    await archive.close()


async def test_a_failing_manifest_is_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = manifest_module.append_manifest
    failing = True

    def append(path: Path, files: list[PublishedFile]) -> None:
        if failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(path, files)

    # A publish appends from partfile._complete; recovered and owed lines from the writer.
    for user in (partfile_module, writer_module):
        monkeypatch.setattr(user, "append_manifest", append)
    clock = Clock()
    clock.align(60, into=5)
    archive = make_archive(tmp_path, save_interval=60, clock=clock)
    await archive.open()
    await archive.write(batch("one", 1), 1)
    clock.offset += 60
    await archive.write(batch("two", 1), 1)
    await wait_until(lambda: archive.published == 1)
    assert manifest(tmp_path) == []
    failing = False
    await archive.close()  # owes two lines, writes both
    assert [e["messages"] for e in manifest(tmp_path)] == [1, 1]


def test_published_file_times_are_utc() -> None:
    moment = datetime(2024, 5, 1, 12, 15, tzinfo=UTC)
    line = PublishedFile(Path("x"), "x", moment, moment, 0, 0, 0, "").manifest_line()
    assert json.loads(line)["start"] == "2024-05-01T12:15:00.000Z"


def test_compress_window_reaches_the_compressor(tmp_path: Path) -> None:
    """Repeats 8 KiB apart are found by a 32 KiB window and missed by a 1 KiB one."""
    block = os.urandom(4096).hex().encode() + b"\n"  # 8 KiB, incompressible within itself
    sizes = {}
    for bits in (10, 15):
        compressor = Deflate(6, bits).compressor()
        data = compressor.compress(block * 20) + compressor.flush()
        assert gzip.decompress(data) == block * 20
        sizes[bits] = len(data)
    assert sizes[15] * 5 < sizes[10]


@pytest.mark.parametrize(("level", "bits"), [(0, 12), (10, 12), (6, 9), (6, 16)])
def test_deflate_refuses_out_of_range(level: int, bits: int) -> None:
    with pytest.raises(ValueError, match="between"):
        Deflate(level, bits)
