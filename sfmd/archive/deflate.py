"""How archive files are gzipped.

One setting serves the file being written and the repair of a leftover, so a repaired file
is compressed with the same level and window as the files written whole.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Deflate:
    """How output files are gzipped.

    A compressor's memory follows its window: zlib's default (32 KiB window, memLevel 8) holds
    about 256 KB per open file, which is 256 MB for 1,000 streams. Tweets are a few KB and
    repeat mostly their own keys, so a 4 KiB window (12 bits, memLevel 4, about 30 KB)
    makes files only about 2 % bigger (measured on tweet-shaped JSON, flushed every message).
    """

    level: int = 6
    window_bits: int = 12

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 9:
            raise ValueError("compress_level must be between 1 and 9")
        if not 10 <= self.window_bits <= 15:
            raise ValueError("compress_window must be between 10 and 15")

    def compressor(self) -> zlib._Compress:
        mem_level = max(1, min(8, self.window_bits - 8))
        return zlib.compressobj(self.level, zlib.DEFLATED, 16 + self.window_bits, mem_level)
