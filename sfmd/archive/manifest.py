"""The fixity manifest: one JSON line per published file (name, interval, counts, sha256), with
the gaps in its span and its provenance (see `coverage`), and a line with `"file": null` for
a span with nothing stored.

A line is appended only after its file is complete, fsynced and renamed, and the manifest is
fsynced after every append, so each line describes a file that is on disk as described. A
crash between the rename and the append leaves a file without a line; the next `open()` of
the archive finds it and appends the line. Lines are never rewritten: a torn last line (a
crash mid-append) stays where it is, the next append starts on a line of its own, and readers
skip what does not parse.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sfmd.archive.disk import _write_all
from sfmd.archive.naming import iso_utc
from sfmd.durable import fsync_dir

MANIFEST_NAME = "manifest.jsonl"


def cluster_keys(provenance: dict[str, Any] | None) -> dict[str, Any]:
    """In cluster mode (the provenance names the lease's epoch) a line also carries `host`
    and `epoch` at its top level, where one reading every host's manifests looks first;
    nothing on a single host."""
    if not provenance or "epoch" not in provenance:
        return {}
    return {"host": provenance.get("host"), "epoch": provenance["epoch"]}


@dataclass(frozen=True)
class PublishedFile:
    """A complete file under its final name, as described by its manifest line."""

    path: Path
    relpath: str  # relative to data_dir, with "/" separators: the manifest's "file"
    start: datetime
    end: datetime
    messages: int
    tweets: int
    bytes: int  # uncompressed, line ends included
    sha256: str  # of the file as stored
    gaps: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] | None = None
    closed: bool = False  # the last line of a run that ended cleanly (a stop, a shutdown)

    def manifest_line(self) -> bytes:
        entry: dict[str, Any] = {
            "file": self.relpath,
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "messages": self.messages,
            "tweets": self.tweets,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "gaps": self.gaps,
            "provenance": self.provenance,
            **cluster_keys(self.provenance),
        }
        if self.closed:
            entry["closed"] = True
        return json.dumps(entry).encode() + b"\n"


class ManifestLine(Protocol):
    """Anything the manifest holds a line for: a published file, or a span with none."""

    def manifest_line(self) -> bytes: ...


def append_manifest(manifest: Path, files: Sequence[ManifestLine]) -> None:
    """Append one line per file and fsync; a torn last line (crash mid-append) is left alone
    and a new line is started after it, so what was recorded before is never rewritten."""
    fd = os.open(manifest, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        data = (b"\n" if torn else b"") + b"".join(f.manifest_line() for f in files)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # don't leave half a line behind us
            raise
    finally:
        os.close(fd)
    if size == 0:
        fsync_dir(manifest.parent)


def read_manifest(manifest: Path) -> list[dict[str, Any]]:
    """The manifest's file entries (not the `"file": null` ones); torn or foreign lines are
    skipped."""
    try:
        raw = manifest.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for line in raw.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            entries.append(entry)
    return entries


def last_entry(manifest: Path, tail: int = 1 << 16) -> dict[str, Any] | None:
    """The manifest's last whole entry, file or not, read from its end: a manifest grows for
    years and 1,000 streams open at once."""
    try:
        with open(manifest, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail))
            raw = f.read()
    except FileNotFoundError:
        return None
    for line in reversed(raw.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line, or the cut-off first one
        if isinstance(entry, dict) and "end" in entry and "file" in entry:
            return entry
    return None
