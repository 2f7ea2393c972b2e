"""How archive files are gzipped.

One setting serves the file being written and the repair of a leftover, so a repaired file
is compressed with the same level and window as the files written whole.
"""

from __future__ import annotations

import struct
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

    @property
    def _mem_level(self) -> int:
        return max(1, min(8, self.window_bits - 8))

    def compressor(self) -> zlib._Compress:
        """A whole gzip stream: header, deflate blocks and trailer, all by zlib."""
        return zlib.compressobj(self.level, zlib.DEFLATED, 16 + self.window_bits, self._mem_level)

    def raw_compressor(self) -> zlib._Compress:
        """Deflate blocks only, for a file that writes its own gzip header and trailer
        (`gzip_header`, `gzip_trailer`). Blocks from one compressor that end on a sync flush
        may be followed by a fresh compressor's: the file stays one gzip stream, and a
        compressor need not stay alive (and hold its memory) between two writes."""
        return zlib.compressobj(self.level, zlib.DEFLATED, -self.window_bits, self._mem_level)

    def gzip_header(self) -> bytes:
        """The 10 bytes zlib writes before a gzip stream at this level (no name, no time)."""
        xfl = 2 if self.level == 9 else 4 if self.level < 2 else 0
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([xfl, 3])  # 3: Unix


def gzip_trailer(crc: int, size: int) -> bytes:
    """The 8 bytes that end a gzip stream: CRC-32 and length (mod 2**32) of what it holds."""
    return struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)
