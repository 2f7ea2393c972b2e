"""The .part being written (sfmd.archive.partfile): a quiet stream holds no compressor and
no open descriptor between batches."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import pytest

from sfmd.archive import Deflate
from sfmd.archive.partfile import FINAL_BLOCK, KEEP_COMPRESSOR, _PartFile


def test_a_small_batch_frees_its_compressor_and_the_file_stays_one_gzip_stream(
    tmp_path: Path,
) -> None:
    part = _PartFile.create(tmp_path, "s", 0, True, Deflate(6, 12), fsync_every=60)
    small = [os.urandom(200).hex().encode() + b"\n" for _ in range(3)]
    big = os.urandom(KEEP_COMPRESSOR).hex().encode() + b"\n"
    part.append(small[0], 1, 1)
    assert part._compressor is None  # a quiet stream's memory: no zlib state between writes
    assert part._fd is None  # nor a descriptor
    part.append(big, 1, 1)
    assert part._compressor is not None  # a busy stream keeps its history
    assert part._fd is not None  # and its file open
    part.append(small[1], 1, 1)
    part.append(small[2], 1, 1)
    part.finish()
    assert gzip.decompress(part.path.read_bytes()) == small[0] + big + small[1] + small[2]
    assert part.committed == part.path.stat().st_size


def test_a_file_with_no_batch_is_an_empty_gzip_stream(tmp_path: Path) -> None:
    part = _PartFile.create(tmp_path, "s", 0, True, Deflate(6, 12), fsync_every=60)
    part.finish()
    assert gzip.decompress(part.path.read_bytes()) == b""


def test_a_parked_file_is_cut_back_to_its_last_whole_batch_when_abandoned(
    tmp_path: Path,
) -> None:
    part = _PartFile.create(tmp_path, "s", 0, False, Deflate(6, 12), fsync_every=60)
    part.append(b"one\n", 1, 1)
    assert part._fd is None
    with part.path.open("ab") as f:  # what a write cut short leaves behind
        f.write(b"tw")
    assert part.abandon()
    assert part.path.read_bytes() == b"one\n"


def test_a_parked_file_is_synced_through_a_new_descriptor(tmp_path: Path) -> None:
    part = _PartFile.create(tmp_path, "s", 0, False, Deflate(6, 12), fsync_every=0)
    part.append(b"one\n", 1, 1)  # fsync_every=0: synced at every batch, then parked
    part.append(b"two\n", 1, 1)
    assert part._fd is None
    part.finish()
    assert part.path.read_bytes() == b"one\ntwo\n"
    assert part.committed == 8


@pytest.mark.parametrize("level", [1, 6, 9])
@pytest.mark.parametrize("window", [10, 12, 15])
def test_the_final_block_is_what_a_fresh_compressor_finishes_with(level: int, window: int) -> None:
    """Sealing writes FINAL_BLOCK instead of making a compressor for it: the same bytes."""
    deflate = Deflate(level=level, window_bits=window)
    assert deflate.raw_compressor().flush(zlib.Z_FINISH) == FINAL_BLOCK
