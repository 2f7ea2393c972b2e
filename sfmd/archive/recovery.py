"""Reading back what a crash left: as far as the bytes allow, complete lines only.

A leftover `.part` holds everything handed to the OS before a SIGKILL, and after a power loss
whatever had reached the disk. It may end in a torn line, a gzip stream without its trailer,
zeros or garbage: recovery keeps every complete line before the damage, publishes them under
the file's final name and removes a leftover with no complete line. A repair never destroys
the only copy: a gzip leftover is rewritten under a temporary name that replaces it only
once complete and fsynced. Published files that have no manifest line yet (a crash between
the rename and the append) are found and described from their bytes. Which lines are content
items (the manifest's "tweets") is the caller's `count` to say: the archive does not know
what its lines hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from sfmd.archive.deflate import Deflate
from sfmd.archive.disk import _write_all
from sfmd.archive.manifest import MANIFEST_NAME, PublishedFile, read_manifest
from sfmd.archive.naming import PART_SUFFIX, FileName, _rename_final, _utc
from sfmd.durable import fsync_dir

#: How many of the given lines (without their line ends) are content items: the manifest's
#: "tweets". The archive stores lines without knowing what they hold; its caller knows.
CountItems = Callable[[list[bytes]], int]

#: The longest message the archive is given (32 MiB, the limit of the sources' framing).
_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
_TMP_SUFFIX = ".tmp"  # a repaired copy of a leftover, before it replaces the leftover
_READ_CHUNK = 1 << 20
_MAX_LINE = 2 * _MAX_MESSAGE_BYTES  # a longer "line" in a leftover can only be garbage
_GZIP_WBITS = 31  # zlib's gzip container, not a raw deflate stream


class _Lines:
    """Splits a byte stream into complete lines and counts them; a torn last line is held back."""

    def __init__(self, count: CountItems, sink: Callable[[bytes], None] | None = None) -> None:
        self.messages = 0
        self.tweets = 0
        self.bytes = 0  # of complete lines, line ends included
        self._count = count
        self._sink = sink
        self._tail: list[bytes] = []
        self.tail_bytes = 0

    @property
    def overflow(self) -> bool:
        return self.tail_bytes > _MAX_LINE

    def feed(self, data: bytes) -> None:
        cut = data.rfind(b"\n") + 1
        if not cut:
            if data:
                self._tail.append(data)
                self.tail_bytes += len(data)
            return
        whole = b"".join([*self._tail, data[:cut]]) if self._tail else data[:cut]
        self._tail = [data[cut:]] if cut < len(data) else []
        self.tail_bytes = len(data) - cut
        lines = whole.split(b"\n")
        lines.pop()
        self.messages += len(lines)
        self.tweets += self._count(lines)
        self.bytes += len(whole)
        if self._sink is not None:
            self._sink(whole)


class _Inflater:
    """Decompresses gzip as far as it goes, stopping quietly at damage or at the end of the data.

    Output decoded before the damage is kept: a failing chunk is replayed in small pieces from
    a copy of the decoder's state taken before it.
    """

    def __init__(self) -> None:
        self._d = zlib.decompressobj(_GZIP_WBITS)
        self.damaged = False

    @property
    def complete(self) -> bool:
        """Everything fed so far was whole gzip members, trailers and checksums included."""
        return self._d.eof and not self.damaged

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        while data and not self.damaged:
            if self._d.eof:  # another member follows (we never write one, gzip allows it)
                self._d = zlib.decompressobj(_GZIP_WBITS)
            saved = self._d.copy()
            try:
                out.append(self._d.decompress(data))
            except zlib.error:
                self._d = saved
                out.append(self._salvage(data))
                self.damaged = True
                break
            data = self._d.unused_data if self._d.eof else b""
        return b"".join(out)

    def _salvage(self, data: bytes) -> bytes:
        out = []
        pos, step = 0, 4096
        while pos < len(data):
            piece = data[pos : pos + step]
            saved = self._d.copy()
            try:
                out.append(self._d.decompress(piece))
            except zlib.error:
                if step == 1:
                    break
                self._d, step = saved, 1  # replay the failing piece a byte at a time
                continue
            pos += len(piece)
            if self._d.eof:
                break
        return b"".join(out)


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_READ_CHUNK):
        yield chunk


def _scan(path: Path, compress: bool, count: CountItems) -> tuple[_Lines, str, bool]:
    """Count a file's complete lines and hash it as stored; also say whether it is whole."""
    lines = _Lines(count)
    sha = hashlib.sha256()
    inflater = _Inflater() if compress else None
    with open(path, "rb") as f:
        for chunk in _chunks(f):
            sha.update(chunk)
            lines.feed(inflater.feed(chunk) if inflater else chunk)
    whole = lines.tail_bytes == 0 and (inflater is None or inflater.complete)
    return lines, sha.hexdigest(), whole


def _repair_plain(part: Path, count: CountItems) -> tuple[_Lines, str] | None:
    """Cut a plain leftover back to its last complete line, in place.

    A NUL byte ends the good part: JSON never holds a raw NUL, and some filesystems fill the
    unwritten tail of a file with zeros after a power loss.
    """
    sha = hashlib.sha256()
    lines = _Lines(count, sha.update)
    with open(part, "r+b") as f:
        for chunk in _chunks(f):
            nul = chunk.find(b"\0")
            lines.feed(chunk if nul < 0 else chunk[:nul])
            if nul >= 0 or lines.overflow:
                break
        if lines.messages == 0:
            return None
        if lines.bytes < os.fstat(f.fileno()).st_size:
            f.truncate(lines.bytes)
        os.fsync(f.fileno())
    return lines, sha.hexdigest()


def _repair_gzip(part: Path, deflate: Deflate, count: CountItems) -> tuple[_Lines, str] | None:
    """Rewrite a gzip leftover as a fresh, complete gzip of its complete lines.

    The copy is built under a temporary name, fsynced and renamed over the leftover, so a
    crash during the repair leaves the old leftover or the repaired one, never neither.
    """
    tmp = part.with_name(part.name + _TMP_SUFFIX)
    sha = hashlib.sha256()
    compressor = deflate.compressor()
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:

        def sink(data: bytes) -> None:
            compressed = compressor.compress(data)
            sha.update(compressed)
            _write_all(out, compressed)

        lines = _Lines(count, sink)
        inflater = _Inflater()
        with open(part, "rb") as src:
            for chunk in _chunks(src):
                lines.feed(inflater.feed(chunk))
                if inflater.damaged or inflater.complete or lines.overflow:
                    break
        if lines.messages:
            tail = compressor.flush(zlib.Z_FINISH)
            sha.update(tail)
            _write_all(out, tail)
            os.fsync(out)
    except BaseException:
        os.close(out)
        tmp.unlink()
        raise
    os.close(out)
    if not lines.messages:
        tmp.unlink()
        return None
    os.replace(tmp, part)
    fsync_dir(part.parent)
    return lines, sha.hexdigest()


def recover_part(
    part: Path, data_dir: Path, deflate: Deflate, count: CountItems
) -> PublishedFile | None:
    """Publish a leftover `.part` cut back to its last complete line; None if nothing was left
    (the leftover is then removed). Raises OSError if the disk fails; the leftover then stays.
    `count` says how many of the recovered lines are content items (the manifest's "tweets")."""
    name = FileName.parse(part.name.removesuffix(PART_SUFFIX))
    if name is None:
        raise ValueError(f"{part.name} is not an archive file name")
    end = max(os.stat(part).st_mtime, name.start)
    if name.compress:
        repaired = _repair_gzip(part, deflate, count)
    else:
        repaired = _repair_plain(part, count)
    if repaired is None:
        part.unlink()
        fsync_dir(part.parent)
        return None
    lines, sha = repaired
    final = _rename_final(part, name)
    fsync_dir(final.parent)
    return PublishedFile(
        path=final,
        relpath=final.relative_to(data_dir).as_posix(),
        start=_utc(name.start),
        end=_utc(end),
        messages=lines.messages,
        tweets=lines.tweets,
        bytes=lines.bytes,
        sha256=sha,
    )


def _leftovers(stream_dir: Path, stream: str) -> tuple[list[Path], list[Path]]:
    """Every `.part` under the stream's folder, oldest first, and the ones we don't recognise.

    Stale repair copies are dropped first; one whose leftover is gone is the only copy left,
    so it is put back in the leftover's place instead.
    """
    parts: list[tuple[int, int, str, Path]] = []
    unknown: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(stream_dir):
        dirnames.sort()
        for filename in filenames:
            path = Path(dirpath, filename)
            if filename.endswith(PART_SUFFIX + _TMP_SUFFIX):
                part = path.with_name(filename.removesuffix(_TMP_SUFFIX))
                if os.path.lexists(part):
                    path.unlink()
                    continue
                os.replace(path, part)
                path, filename = part, part.name
            if not filename.endswith(PART_SUFFIX):
                continue
            name = FileName.parse(filename.removesuffix(PART_SUFFIX))
            if name is None or name.stream != stream:
                unknown.append(path)
            else:
                parts.append((name.start, name.seq, filename, path))
    return [p for *_, p in sorted(parts)], unknown


def _unrecorded(
    data_dir: Path, stream_dir: Path, stream: str, count: CountItems
) -> list[PublishedFile]:
    """Published files that have no manifest line (a crash between rename and append)."""
    recorded = {entry["file"] for entry in read_manifest(stream_dir / MANIFEST_NAME)}
    found: list[tuple[int, int, Path, FileName]] = []
    for dirpath, _dirnames, filenames in os.walk(stream_dir):
        for filename in filenames:
            name = FileName.parse(filename)
            path = Path(dirpath, filename)
            if name is None or name.stream != stream:
                continue
            if path.relative_to(data_dir).as_posix() not in recorded:
                found.append((name.start, name.seq, path, name))
    files = []
    for _start, _seq, path, name in sorted(found):
        lines, sha, _whole = _scan(path, name.compress, count)
        files.append(
            PublishedFile(
                path=path,
                relpath=path.relative_to(data_dir).as_posix(),
                start=_utc(name.start),
                end=_utc(max(os.stat(path).st_mtime, name.start)),
                messages=lines.messages,
                tweets=lines.tweets,
                bytes=lines.bytes,
                sha256=sha,
            )
        )
    return files
