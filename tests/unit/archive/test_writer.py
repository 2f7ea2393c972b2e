"""The archive on real files: clock-driven rotation, exact bytes, order, restarts
(sfmd.archive.writer)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
import zlib
from datetime import datetime
from pathlib import Path

import pytest

from sfmd.archive import (
    ArchiveError,
    FileName,
    PublishedFile,
    interval_start,
    spread_offset,
    writer,
)
from tests.helpers.archive import (
    STREAM,
    Clock,
    batch,
    check_entry,
    content,
    final_files,
    make_archive,
    manifest,
    parts,
    wait_for,
)


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
    await wait_for(lambda: archive.current_file is not None)
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

    await wait_for(on_disk, timeout=2)
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
            # The stamp is taken just before write() reads the archive's clock: a message
            # stamped a moment before a boundary may belong to the interval after it.
            assert start - 0.005 <= json.loads(line)["t"] < start + 1
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
    await wait_for(lambda: bool(seen), timeout=3)  # no further write needed
    assert clock() >= start + 1
    [published] = seen
    assert published.start.timestamp() == start and published.end.timestamp() == start + 1
    assert archive.current_file is None and parts(tmp_path) == []
    # A whole interval passes with no message: no file for it.
    await wait_for(lambda: clock() >= start + 2.1, timeout=4)
    assert len(seen) == 1 and len(final_files(tmp_path)) == 1 and parts(tmp_path) == []
    assert await archive.close() is None
    check_entry(tmp_path, manifest(tmp_path)[0])


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
    await wait_for(lambda: bool(seen), timeout=5)
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
    await wait_for(lambda: archive.current_file is not None, timeout=3)
    old_part = archive.current_file
    clock.offset += 1.5  # into the next interval, seconds before this stream's turn
    await archive.write(batch("new", 1), 1)
    await wait_for(lambda: archive.current_file not in (None, old_part), timeout=3)
    await wait_for(lambda: len(parts(tmp_path)) == 2, timeout=3)
    assert seen == [] and manifest(tmp_path) == []  # the old file waits its turn
    # ... already sealed: a complete gzip (its compressor freed), which a crash now would
    # leave for recovery exactly as it is.
    assert old_part is not None
    assert gzip.decompress(old_part.read_bytes()) == b"".join(m + b"\n" for m in batch("old", 2))
    clock.offset += turn  # its turn comes
    await wait_for(lambda: len(seen) == 1, timeout=10)
    assert seen[0].messages == 2 and archive.current_file is not None
    await archive.close()
    old, new = manifest(tmp_path)
    assert check_entry(tmp_path, old) == b"".join(m + b"\n" for m in batch("old", 2))
    assert check_entry(tmp_path, new) == b"".join(m + b"\n" for m in batch("new", 1))
    assert datetime.fromisoformat(old["end"]) == datetime.fromisoformat(new["start"])


async def test_a_new_file_refused_at_a_boundary_sets_the_old_aside_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn-over's one trip (seal the old file, open the new, write): when the new file
    cannot be created, the old one still waits its turn complete, the batch is kept and
    written once the disk takes it, and both files are published whole."""
    from sfmd.archive import partfile

    clock = Clock()
    clock.align(1200, into=1199.0)
    archive = make_archive(tmp_path, save_interval=1200, clock=clock, publish_spread=120.0)
    await archive.open()
    await archive.write(batch("old", 2), 2)
    await wait_for(lambda: archive.current_file is not None, timeout=3)
    real_create = partfile._PartFile.create.__func__
    refusals = {"on": True, "made": 0}

    def create(cls: type, *args: object) -> object:
        if refusals["on"]:
            refusals["made"] += 1
            raise OSError(28, "No space left on device")
        return real_create(cls, *args)

    monkeypatch.setattr(partfile._PartFile, "create", classmethod(create))
    clock.offset += 1.5  # into the next interval, before this stream's turn
    await archive.write(batch("new", 3), 3)
    await wait_for(lambda: archive.error is not None, timeout=3)
    assert "cannot create a file in" in str(archive.error)
    assert len(parts(tmp_path)) == 1  # the old file, sealed, waiting its turn
    refusals["on"] = False  # the disk has room again
    await wait_for(lambda: archive.error is None and len(parts(tmp_path)) == 2, timeout=5)
    await archive.close()
    assert refusals["made"] >= 1 and parts(tmp_path) == []
    old, new = manifest(tmp_path)
    assert check_entry(tmp_path, old) == b"".join(m + b"\n" for m in batch("old", 2))
    assert check_entry(tmp_path, new) == b"".join(m + b"\n" for m in batch("new", 3))


async def test_the_open_file_is_written_while_the_finished_one_waits_to_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish (three fsyncs) can wait seconds for the pool when thousands of streams
    publish at once; the shared tick goes on writing the new interval's file meanwhile, so
    those seconds' messages are not all held in memory. Both files come out whole."""

    from sfmd.archive import writer

    clock = Clock()
    clock.align(1200, into=1199.0)
    archive = make_archive(
        tmp_path, save_interval=1200, compress=False, clock=clock, publish_spread=120.0
    )
    await archive.open()
    await archive.write(batch("old", 2), 2)
    clock.offset += 1.5  # into the next interval, before this stream's turn
    await archive.write(batch("new", 1), 1)
    await wait_for(lambda: len(parts(tmp_path)) == 2, timeout=3)
    new_part = archive.current_file
    assert new_part is not None

    publishing, release = threading.Event(), threading.Event()
    real_complete = writer._complete

    def slow_complete(*args: object) -> object:
        publishing.set()
        release.wait(10)
        return real_complete(*args)

    monkeypatch.setattr(writer, "_complete", slow_complete)
    clock.offset += spread_offset(STREAM, 120.0)  # the finished file's turn: the writer
    await wait_for(publishing.is_set, timeout=10)  # sees it within its longest sleep, 5 s
    try:
        await archive.write(batch("meanwhile", 3), 3)
        wanted = b"".join(m + b"\n" for m in batch("meanwhile", 3))
        await wait_for(lambda: new_part.read_bytes().endswith(wanted), timeout=3)
        assert manifest(tmp_path) == []  # the finished file is still being published
    finally:
        release.set()
    await wait_for(lambda: len(manifest(tmp_path)) == 1, timeout=5)
    await archive.close()
    old, new = manifest(tmp_path)
    assert check_entry(tmp_path, old) == b"".join(m + b"\n" for m in batch("old", 2))
    assert check_entry(tmp_path, new) == b"".join(
        m + b"\n" for m in [*batch("new", 1), *batch("meanwhile", 3)])


async def test_close_publishes_a_file_still_waiting_its_turn(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(1200, into=1199.0)
    archive = make_archive(tmp_path, save_interval=1200, clock=clock, publish_spread=120.0)
    await archive.open()
    await archive.write(batch("old", 2), 2)
    clock.offset += 1.5
    await archive.write(batch("new", 3), 3)
    await wait_for(lambda: len(parts(tmp_path)) == 2, timeout=3)
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
    await wait_for(lambda: archive.current_file is not None)
    part = archive.current_file
    clock.offset -= 5
    await archive.write(batch("b", 2), 2)
    await wait_for(lambda: part is not None and part.stat().st_size > 30)
    assert archive.current_file == part and archive.published == 0
    clock.offset += 5 + 600
    await wait_for(lambda: archive.published == 1, timeout=2)
    [entry] = manifest(tmp_path)
    assert check_entry(tmp_path, entry) == b"".join(
        m + b"\n" for m in batch("a", 2) + batch("b", 2)
    )
    start = datetime.fromisoformat(entry["start"]).timestamp()
    assert datetime.fromisoformat(entry["end"]).timestamp() == start + 2  # clamped to the boundary
    await archive.close()


async def test_a_quiet_writer_is_not_woken_to_look_at_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between its deadlines a writer sleeps: its timer, not the task, reads the wall clock
    every `_max_sleep` (here 1 s) for a jump (`test_clock_jumps`). Waking the task to look
    was, at 5,000 quiet streams, a thousand wake-ups a second that found nothing to do."""

    class CountingClock(Clock):
        reads = 0

        def __call__(self) -> float:
            self.reads += 1
            return super().__call__()

    steps: list[float] = []
    step = writer.Archive._step

    async def counted(self: writer.Archive, loop: asyncio.AbstractEventLoop) -> None:
        steps.append(loop.time())
        await step(self, loop)

    monkeypatch.setattr(writer.Archive, "_step", counted)
    clock = CountingClock()
    clock.align(4, into=0.2)
    archive = make_archive(tmp_path, save_interval=4, clock=clock, publish_spread=0.0)
    await archive.open()
    await archive.write(batch("a", 2), 2)
    await wait_for(lambda: archive.current_file is not None and archive.current_file.stat().st_size)
    await wait_for(lambda: not archive._pending and archive._shared is None)
    del steps[:]
    reads = clock.reads
    await wait_for(lambda: clock.reads >= reads + 2, timeout=3)  # two looks, a second apart
    assert steps == []
    assert archive.published == 0  # its interval is not over: nothing was due
    clock.offset += 600  # a jump ahead is still noticed, without a message
    await wait_for(lambda: archive.published == 1, timeout=3)
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
