"""A failing disk: nothing torn is published, and the archive catches up once it works
(sfmd.archive.disk and the modules that write through it)."""

from __future__ import annotations

import errno
import os
import zlib
from pathlib import Path

import pytest

from sfmd.archive import ArchiveError, FileName, PublishedFile
from sfmd.archive import disk as disk_module
from sfmd.archive import manifest as manifest_module
from sfmd.archive import partfile as partfile_module
from sfmd.archive import recovery as recovery_module
from sfmd.archive import writer as writer_module
from tests.helpers.archive import (
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
    await wait_for(
        lambda: archive.current_file is not None and archive.current_file.stat().st_size
    )
    first_part = archive.current_file
    assert first_part is not None
    size_with_a = first_part.stat().st_size

    disk.failing = True
    await archive.write(b, 5)  # accepted: the failure is found when it is written
    await wait_for(lambda: archive.error is not None)
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
    await wait_for(lambda: archive.error is None)  # the retry succeeded on its own
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
    await wait_for(
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
    await wait_for(lambda: archive.published == 1)
    assert manifest(tmp_path) == []
    failing = False
    await archive.close()  # owes two lines, writes both
    assert [e["messages"] for e in manifest(tmp_path)] == [1, 1]
