"""What cluster mode asks of the archive (sfmd.archive.writer): a fence that stops writes once
the lease is gone, marks that become durable only once their messages are in the file, the
host and epoch in the manifest, and every manifest line handed on."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from tests.helpers.archive import (
    STREAM,
    batch,
    content,
    final_files,
    make_archive,
    manifest,
    wait_for,
)


class Fence:
    host = "host-b"
    epoch = 42

    def __init__(self) -> None:
        self.ok = True

    def valid(self) -> bool:
        return self.ok


async def test_writes_stop_at_the_fence_and_lines_name_the_host_and_epoch(
    tmp_path: Path,
) -> None:
    fence = Fence()
    lines: list[bytes] = []
    archive = make_archive(tmp_path, fence=fence, on_manifest=lines.append)
    await archive.open()
    kept = batch("kept", 3)
    await archive.write(kept, 3)
    assert not archive.fenced
    fence.ok = False  # the lease is gone: another host holds the connection now
    assert archive.fenced
    await archive.write(batch("dropped", 2), 2)  # taken and dropped, not raised
    published = await archive.close()
    assert published is not None
    assert content(published.path) == b"".join(m + b"\n" for m in kept)
    [entry] = manifest(tmp_path)
    assert (entry["provenance"]["host"], entry["provenance"]["epoch"]) == ("host-b", 42)
    assert (entry["host"], entry["epoch"]) == ("host-b", 42)  # at the top level too
    # Every line the manifest got, in its order, the closing null line included.
    on_disk = (tmp_path / STREAM / "manifest.jsonl").read_bytes().splitlines(keepends=True)
    assert lines == on_disk and json.loads(lines[0])["file"] == entry["file"]


async def test_without_a_fence_nothing_changes(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    await archive.open()
    await archive.write(batch("a", 2), 2)
    assert not archive.fenced
    await archive.close()
    [entry] = manifest(tmp_path)
    assert "epoch" not in entry["provenance"]
    assert "epoch" not in entry and "host" not in entry


async def test_a_mark_is_durable_once_its_messages_are_in_the_file(tmp_path: Path) -> None:
    archive = make_archive(tmp_path, flush_interval=0.2)
    await archive.open()
    archive.mark("0")  # nothing queued: durable at once
    assert archive.durable_mark == "0"
    await archive.write(batch("a", 2), 2)
    archive.mark("7")
    assert archive.durable_mark == "0"  # queued in memory only
    await wait_for(lambda: archive.durable_mark == "7")
    assert archive.current_file is not None
    # Written when the mark moved (the open gzip member, read as far as it goes).
    written = zlib.decompressobj(31).decompress(archive.current_file.read_bytes())
    assert written.count(b"\n") == 2
    await archive.close()
    assert len(final_files(tmp_path)) == 1
