"""The file being written: `NAME.part`, appended batch by batch, published by a rename.

A file is written as `NAME.part`, completed, fsynced and renamed; only then is its line
appended to `manifest.jsonl`. Nothing published is ever overwritten or appended to. Every
batch is written whole or cut back, so a `.part` always ends on a line end (gzipped, on a
sync flush) and what a crash leaves of it reads back up to its last batch. The blocking
methods run in the archive's worker threads, one call at a time per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfmd.archive.deflate import Deflate, gzip_trailer
from sfmd.archive.disk import _makedirs_durable, _write_all
from sfmd.archive.manifest import ManifestLine, PublishedFile, append_manifest
from sfmd.archive.naming import FileName, _next_free, _part_path, _rename_final, _utc
from sfmd.durable import fsync_dir

#: A compressor and the file's descriptor are kept between two batches only after a batch
#: at least this big: a busy stream keeps the history its next batch compresses against and
#: its file open, a quiet one (a message or two a second) frees the compressor's memory
#: (about 30 KB at the default window, 30 MB for 1,000 quiet streams) and its descriptor (so
#: 5,000 streams fit under a limit of 20,000), and opens both again for its next batch. The
#: file stays one gzip stream either way (see `Deflate.raw_compressor`).
KEEP_COMPRESSOR = 64 << 10
#: An empty final deflate block (fixed Huffman codes, just the end-of-block code): what a
#: fresh compressor's Z_FINISH writes, without making one (its tables are tens of KB, set
#: up and zeroed for two bytes; at a boundary every stream seals a file).
FINAL_BLOCK = b"\x03\x00"


class _PartFile:
    """One open `.part`. Its blocking methods run in a worker thread, one call at a time.

    `committed` is the size after the last batch that was written whole: a failed write is
    cut back to it, so the file always ends on a line end (and, gzipped, on a sync flush).
    A gzipped file's header, CRC-32 and trailer are written here, around zlib's raw
    deflate blocks, so that a quiet stream holds no compressor between batches; nor an open
    descriptor (`_fd` is None while parked, and reopened for appending when needed).
    """

    def __init__(
        self, path: Path, name: FileName, fd: int, deflate: Deflate, fsync_every: float
    ) -> None:
        self.path = path
        self.name = name
        self._fd: int | None = fd
        self._deflate = deflate if name.compress else None
        self._compressor: zlib._Compress | None = None
        self._crc = 0  # CRC-32 of what was compressed so far, for the gzip trailer
        self._started = False  # the gzip header is written
        self._sha = hashlib.sha256()
        self.sha256 = ""
        self.messages = 0
        self.tweets = 0
        self.bytes = 0
        self.committed = 0
        self._fsync_every = fsync_every
        self._synced_at = time.monotonic()
        self._entry_synced = False
        self._sealed = False
        self._closed = False  # finished or abandoned: never opened again

    @classmethod
    def create(
        cls,
        stream_dir: Path,
        stream: str,
        start: int,
        compress: bool,
        deflate: Deflate,
        fsync_every: float,
    ) -> _PartFile:
        name = FileName(stream, start, 0, compress)
        directory = name.directory(stream_dir)
        _makedirs_durable(directory)
        while True:
            name = _next_free(directory, name)
            path = _part_path(directory / name.filename)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:  # claimed between the check and the open
                name = name.with_seq(name.seq + 1)
                continue
            return cls(path, name, fd, deflate, fsync_every)

    def _file(self) -> int:
        """The descriptor, opened again (for appending) if it was parked."""
        if self._fd is None:
            assert not self._closed, "a finished or abandoned file is not written to"
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return self._fd

    def _park(self) -> None:
        """Close the descriptor between two batches (what was written stays in the page
        cache; the next fsync, through a new descriptor, covers it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _write(self, data: bytes) -> None:
        _write_all(self._file(), data)
        self._sha.update(data)

    def append(self, data: bytes, messages: int, tweets: int) -> None:
        """Write whole lines; gzip is sync-flushed so that a crash leaves a readable prefix."""
        assert not self._sealed, "a sealed file takes no more lines"
        if self._deflate is None:
            self._write(data)
            stored = len(data)
        else:
            compressor = self._compressor or self._deflate.raw_compressor()
            out = b"" if self._started else self._deflate.gzip_header()
            out += compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            self._compressor = compressor if len(data) >= KEEP_COMPRESSOR else None
            self._write(out)
            self._started = True
            self._crc = zlib.crc32(data, self._crc)
            stored = len(out)
        self.committed += stored
        self.messages += messages
        self.tweets += tweets
        self.bytes += len(data)
        if time.monotonic() - self._synced_at >= self._fsync_every:
            self._sync()
        if len(data) < KEEP_COMPRESSOR:
            self._park()

    def _sync(self) -> None:
        os.fsync(self._file())
        if not self._entry_synced:
            fsync_dir(self.path.parent)
            self._entry_synced = True
        self._synced_at = time.monotonic()

    def seal(self) -> None:
        """Write the gzip trailer, which frees the compressor's memory: the file is complete
        but not yet synced. A finished interval's file waiting for its turn to be published
        is sealed at once, so a stream never holds two compressors."""
        if self._deflate is not None and not self._sealed:
            trailer = b"" if self._started else self._deflate.gzip_header()
            if self._compressor is not None:
                trailer += self._compressor.flush(zlib.Z_FINISH)
            else:  # the blocks so far end on a sync flush: a fresh compressor is not needed
                trailer += FINAL_BLOCK
            trailer += gzip_trailer(self._crc, self.bytes)
            self._compressor = None
            self._write(trailer)
            self.committed += len(trailer)
        self._sealed = True

    def finish(self) -> None:
        """Complete the file (gzip trailer), fsync and close it: it may then be renamed."""
        self.seal()
        os.fsync(self._file())
        self._park()
        self._closed = True
        self.sha256 = self._sha.hexdigest()

    def abandon(self) -> bool:
        """After a failure: cut back to the last whole batch and close. Returns whether the
        file holds messages worth recovering; an empty one is removed."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.committed)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        elif not self._closed:  # parked between batches
            with contextlib.suppress(OSError):
                os.truncate(self.path, self.committed)
        self._closed = True
        if self.messages:
            return True
        with contextlib.suppress(OSError):
            self.path.unlink()
        return False


@dataclass(frozen=True)
class Described:
    """What a file's manifest line says besides the file: see `coverage`."""

    gaps: list[dict[str, Any]]
    provenance: dict[str, Any]
    closed: bool = False


@dataclass
class _Completion:
    """What `_complete` did: `step` names the step that failed ("complete" or "publish"), if
    one did; a failed fsync of the folder or manifest append leaves the file published."""

    published: PublishedFile | None = None
    step: str | None = None
    error: OSError | None = None
    fsync_error: OSError | None = None
    manifest_error: OSError | None = None


def _complete(
    part: _PartFile,
    end: float,
    data_dir: Path,
    manifest: Path,
    owed: list[ManifestLine],
    described: Described,
) -> _Completion:
    """Finish and fsync a `.part`, rename it, fsync its folder and append its manifest line
    (after any `owed` ones): publishing, in the order that keeps every step recoverable."""
    try:
        part.finish()
    except OSError as exc:
        return _Completion(step="complete", error=exc)
    try:
        final = _rename_final(part.path, part.name)
    except OSError as exc:
        return _Completion(step="publish", error=exc)
    done = _Completion()
    try:
        fsync_dir(final.parent)
    except OSError as exc:
        done.fsync_error = exc
    done.published = PublishedFile(
        path=final,
        relpath=final.relative_to(data_dir).as_posix(),
        start=_utc(part.name.start),
        end=_utc(end),
        messages=part.messages,
        tweets=part.tweets,
        bytes=part.bytes,
        sha256=part.sha256,
        gaps=described.gaps,
        provenance=described.provenance,
        closed=described.closed,
    )
    try:
        append_manifest(manifest, [*owed, done.published])
    except OSError as exc:
        done.manifest_error = exc
    return done
