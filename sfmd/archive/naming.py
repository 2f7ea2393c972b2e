"""Where an archive file lives and what it is called, from the UTC interval it holds.

`{stream}/YYYY/MM/DD/{stream}-{YYYYMMDDTHHMMSSZ}[.{seq}].jsonl[.gz]`: the name alone says
which stream and which interval a file holds, so a file can be described without opening it.
Intervals are aligned to UTC multiples of `save_interval`. A file is written under its final
name plus `.part` and gets the final name only by a rename; a second file for an interval
(after a restart or a failed write) takes the next free `.N` and never replaces the first.

The interval arithmetic is pure; the free-name checks and the rename touch the file system
and run in worker threads.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PART_SUFFIX = ".part"
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def interval_start(t: float, save_interval: int) -> int:
    """The UTC rotation boundary at or before `t` (epoch seconds)."""
    return int(t // save_interval) * save_interval


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a fixed width (milliseconds, "Z"), easy to sort and to parse."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def spread_offset(name: str, spread: float) -> float:
    """A stream's fixed place in [0, spread): 1,000 streams that all rotate on one boundary
    publish over `spread` seconds instead of in one burst that stalls the event loop."""
    return spread * (zlib.crc32(name.encode()) / 2**32)


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


@dataclass(frozen=True)
class FileName:
    """`{stream}-{YYYYMMDDTHHMMSSZ}[.{seq}].jsonl[.gz]`: the parts of an archive file's name."""

    stream: str
    start: int  # epoch seconds of the interval's start
    seq: int  # 0 for the first file of an interval, then 1, 2, ... after restarts
    compress: bool

    @property
    def filename(self) -> str:
        stamp = _utc(self.start).strftime(_STAMP_FORMAT)
        seq = f".{self.seq}" if self.seq else ""
        return f"{self.stream}-{stamp}{seq}.jsonl{'.gz' if self.compress else ''}"

    def directory(self, stream_dir: Path) -> Path:
        day = _utc(self.start)
        return stream_dir / f"{day.year:04d}" / f"{day.month:02d}" / f"{day.day:02d}"

    def with_seq(self, seq: int) -> FileName:
        return FileName(self.stream, self.start, seq, self.compress)

    @classmethod
    def parse(cls, filename: str) -> FileName | None:
        """The parts of a final file name (without `.part`), or None if it is not one."""
        compress = filename.endswith(".jsonl.gz")
        if not compress and not filename.endswith(".jsonl"):
            return None
        stem = filename[: -len(".jsonl.gz" if compress else ".jsonl")]
        stream, sep, rest = stem.rpartition("-")
        stamp, _, seq_text = rest.partition(".")
        if not sep or not stream or len(stamp) != 16 or stamp[8] != "T" or stamp[15] != "Z":
            return None
        if not (stamp[:8] + stamp[9:15]).isdigit():
            return None
        if seq_text and not (seq_text.isdigit() and seq_text[0] != "0"):
            return None
        try:
            start = datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return None
        return cls(stream, int(start.timestamp()), int(seq_text or 0), compress)


def _part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def _taken(directory: Path, name: FileName) -> bool:
    """Whether any file (either extension, final or `.part`) already claims this interval+seq."""
    for compress in (True, False):
        final = directory / FileName(name.stream, name.start, name.seq, compress).filename
        if os.path.lexists(final) or os.path.lexists(_part_path(final)):
            return True
    return False


def _next_free(directory: Path, name: FileName) -> FileName:
    seq = name.seq
    while _taken(directory, name.with_seq(seq)):
        seq += 1
    return name.with_seq(seq)


def _rename_final(part: Path, name: FileName) -> Path:
    """Rename a complete, fsynced `.part` to its final name (or the next free `.N`): the
    moment it is published. The caller fsyncs the folder to make the rename durable."""
    directory = part.parent
    final = directory / name.filename
    if os.path.lexists(final):
        final = directory / _next_free(directory, name.with_seq(name.seq + 1)).filename
    os.rename(part, final)
    return final
