"""Leftover `.part` files after a crash: published cut to their last whole line
(sfmd.archive.recovery)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest
import structlog

from sfmd.archive import (
    Deflate,
    FileName,
    PublishedFile,
    recover_part,
)
from sfmd.archive import recovery as recovery_module
from sfmd.sources.twitter.framing import MAX_MESSAGE_BYTES, count_tweets
from tests.helpers.archive import (
    STREAM,
    Clock,
    batch,
    check_entry,
    content,
    final_files,
    gzip_with_flushes,
    leftover,
    make_archive,
    manifest,
    parts,
    tweet,
)


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
