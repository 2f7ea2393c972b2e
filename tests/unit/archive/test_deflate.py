"""The compressor's settings (sfmd.archive.deflate)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from sfmd.archive import Deflate


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
