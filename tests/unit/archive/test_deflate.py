"""The compressor's settings (sfmd.archive.deflate)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import pytest

from sfmd.archive import Deflate
from sfmd.archive.deflate import gzip_trailer


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


def test_fresh_raw_compressors_between_sync_flushes_make_one_gzip_stream() -> None:
    """Blocks from a new compressor after another's sync flush continue one gzip stream: a
    file may drop its compressor between batches (a quiet stream holds none), and every
    prefix ending on a flush reads back whole, as a crash would leave it."""
    deflate = Deflate(6, 12)
    lines = [os.urandom(300).hex().encode() + b"\n" for _ in range(6)]
    out, ends, crc = deflate.gzip_header(), [], 0
    kept = None
    for i, line in enumerate(lines):
        # batches 2 and 3 share one compressor, as a busy stream's do; the rest start fresh
        compressor = kept if i == 3 and kept is not None else deflate.raw_compressor()
        kept = compressor if i == 2 else None
        out += compressor.compress(line) + compressor.flush(zlib.Z_SYNC_FLUSH)
        crc = zlib.crc32(line, crc)
        ends.append(len(out))
    whole = b"".join(lines)
    out += deflate.raw_compressor().flush(zlib.Z_FINISH) + gzip_trailer(crc, len(whole))
    assert gzip.decompress(out) == whole
    reference = deflate.compressor()
    assert out[:10] == (reference.compress(b"") + reference.flush())[:10]  # zlib's header
    for n, end in enumerate(ends, start=1):
        assert zlib.decompressobj(31).decompress(out[:end]) == b"".join(lines[:n])
