"""The fixity audit on real files: a clean archive passes, and each kind of damage is found
and named."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pytest

from sfmd.archive.audit import audit
from tests.helpers.archive import STREAM, Clock, batch, make_archive

HOUR = 3600


async def archive_with_files(tmp_path: Path, compress: bool = True) -> list[str]:
    """Three published files (three intervals) and their manifest lines."""
    clock = Clock()
    clock.align(HOUR, into=100)
    archive = make_archive(tmp_path, clock=clock, compress=compress)
    await archive.open()
    for i in range(3):
        await archive.write(batch(f"b{i}", 5), 5)
        clock.offset += HOUR
    await archive.close()
    lines = (tmp_path / STREAM / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line)["file"] for line in lines if json.loads(line)["file"]]


@pytest.mark.parametrize("compress", [True, False])
async def test_a_clean_archive_passes(tmp_path: Path, compress: bool) -> None:
    files = await archive_with_files(tmp_path, compress)
    result = audit(tmp_path)
    assert result.clean, result.problems
    assert (result.streams, result.files) == (1, len(files)) and len(files) == 3
    assert result.bytes == sum((tmp_path / f).stat().st_size for f in files)


def problems_of(tmp_path: Path) -> dict[str, str]:
    """Each damaged file's problems, joined: one damage often breaks several checks."""
    result = audit(tmp_path, save_interval=60)
    assert not result.clean
    found: dict[str, list[str]] = {}
    for problem in result.problems:
        found.setdefault(problem.file, []).append(problem.problem)
    return {file: "; ".join(problems) for file, problems in found.items()}


async def test_a_flipped_byte_is_found(tmp_path: Path) -> None:
    victim = (await archive_with_files(tmp_path))[1]
    path = tmp_path / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    found = problems_of(tmp_path)
    assert list(found) == [victim] and "sha256" in found[victim]


async def test_a_truncated_file_is_found(tmp_path: Path) -> None:
    victim = (await archive_with_files(tmp_path))[0]
    path = tmp_path / victim
    path.write_bytes(path.read_bytes()[:-12])
    found = problems_of(tmp_path)
    assert "cut short" in found[victim] or "not a valid gzip" in found[victim]


async def test_a_missing_file_is_found(tmp_path: Path) -> None:
    victim = (await archive_with_files(tmp_path))[2]
    (tmp_path / victim).unlink()
    assert problems_of(tmp_path) == {victim: "listed in the manifest but missing"}


async def test_an_extra_unlisted_file_is_found(tmp_path: Path) -> None:
    first = (await archive_with_files(tmp_path))[0]
    extra = (tmp_path / first).with_name(Path(first).name.replace(".jsonl", ".7.jsonl"))
    extra.write_bytes(gzip.compress(b'{"x":1}\n'))
    rel = extra.relative_to(tmp_path).as_posix()
    assert problems_of(tmp_path) == {rel: "published but not in the manifest"}


async def test_a_torn_manifest_line_is_found_and_later_lines_still_read(tmp_path: Path) -> None:
    files = await archive_with_files(tmp_path)
    manifest = tmp_path / STREAM / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(lines[0] + '{"file": "s1/torn.jso\n' + "".join(lines[1:]))
    result = audit(tmp_path)
    [problem] = result.problems
    assert problem.file == f"{STREAM}/manifest.jsonl" and "line 2 is torn" in problem.problem
    assert result.files == len(files)


async def test_an_old_part_while_nothing_runs_is_found(tmp_path: Path) -> None:
    await archive_with_files(tmp_path)
    part = tmp_path / STREAM / "leftover-20260101T000000Z.jsonl.gz.part"
    part.write_bytes(b"")
    os.utime(part, (time.time() - 7200, time.time() - 7200))
    found = problems_of(tmp_path)
    assert "a .part" in found[part.relative_to(tmp_path).as_posix()]


async def test_lines_from_before_coverage_are_audited_too(tmp_path: Path) -> None:
    files = await archive_with_files(tmp_path)
    manifest = tmp_path / STREAM / "manifest.jsonl"
    old = []
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        if entry["file"]:
            old.append(json.dumps({k: entry[k] for k in ("file", "start", "end", "messages",
                                                          "tweets", "bytes", "sha256")}))
    manifest.write_text("\n".join(old) + "\n")
    result = audit(tmp_path)
    assert result.clean and result.files == len(files)
