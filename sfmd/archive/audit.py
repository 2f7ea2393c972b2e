"""The fixity audit: is every file the manifest lists on disk exactly as described?

For each stream folder: every file line's file exists, has the recorded sha256, byte count
(uncompressed) and line count, and is a complete gzip when compressed; no published file is
missing from the manifest; no line of the manifest is torn; and, when no archive holds the
folder (no sfmd runs the stream), no `.part` is older than `save_interval`.

Files are read in worker threads, a few at once: hashlib and zlib release the GIL on large
buffers, so the audit uses every core instead of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmd.archive.manifest import MANIFEST_NAME
from sfmd.archive.naming import PART_SUFFIX, FileName

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    stream: str
    file: str  # relative to data_dir, or the manifest's
    problem: str

    def to_json(self) -> dict[str, str]:
        return {"stream": self.stream, "file": self.file, "problem": self.problem}


@dataclass
class Audit:
    streams: int = 0
    files: int = 0
    bytes: int = 0  # as stored
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "streams": self.streams,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass(frozen=True)
class _Found:
    """What a file holds, read back."""

    sha256: str
    size: int
    bytes: int  # uncompressed
    lines: int
    problem: str | None = None  # why it cannot be read whole


def read_back(path: Path) -> _Found:
    """Hash, decompress and count a published file in one pass."""
    sha = hashlib.sha256()
    size = total = lines = 0
    last = b"\n"
    gz = path.name.endswith(".gz")
    inflater = zlib.decompressobj(wbits=31) if gz else None
    problem = None
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
            if inflater is not None and problem is None:
                try:
                    data = inflater.decompress(chunk)
                except zlib.error as e:
                    problem = f"not a valid gzip: {e}"
                    continue
                if inflater.unused_data:
                    problem = "bytes after the end of the gzip stream"
            else:
                data = chunk
            if data:
                total += len(data)
                lines += data.count(b"\n")
                last = data[-1:]
    if inflater is not None and problem is None and not inflater.eof:
        problem = "the gzip stream is cut short (no end marker)"
    if problem is None and total and last != b"\n":
        problem = "the last line has no line end"
    return _Found(sha.hexdigest(), size, total, lines, problem)


def _entries(manifest: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, entry or None when the line is torn) for every non-empty line."""
    try:
        raw = manifest.read_bytes()
    except FileNotFoundError:
        return
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            yield number, None
            continue
        yield number, entry if isinstance(entry, dict) else None


def _held(stream_dir: Path) -> bool:
    """Whether an archive holds the stream's folder (an sfmd runs the stream now)."""
    try:
        fd = os.open(stream_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def audit(
    data_dir: Path,
    names: list[str] | None = None,
    *,
    save_interval: float = 900,
    workers: int | None = None,
    now: float | None = None,
) -> Audit:
    """Audit the named streams (every folder with a manifest when None)."""
    began = time.monotonic()
    now = time.time() if now is None else now
    result = Audit()
    if names is None:
        names = sorted(p.parent.name for p in data_dir.glob(f"*/{MANIFEST_NAME}"))
    checks: list[tuple[str, str, dict[str, Any], Path]] = []
    for name in names:
        stream_dir = data_dir / name
        if not (stream_dir / MANIFEST_NAME).exists():
            result.problems.append(Problem(name, f"{name}/{MANIFEST_NAME}", "no manifest"))
            continue
        result.streams += 1
        listed: set[str] = set()
        for number, entry in _entries(stream_dir / MANIFEST_NAME):
            if entry is None or "file" not in entry:
                result.problems.append(Problem(
                    name, f"{name}/{MANIFEST_NAME}", f"line {number} is torn or not a manifest "
                    "entry (a crash mid-append leaves one; later lines are still read)"))
                continue
            rel = entry["file"]
            if rel is None:
                continue  # a span with nothing stored
            listed.add(rel)
            checks.append((name, rel, entry, data_dir / rel))
        result.problems += _unlisted(data_dir, stream_dir, name, listed)
        if not _held(stream_dir):
            result.problems += _stale_parts(data_dir, stream_dir, name, save_interval, now)
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        for (name, rel, entry, _path), found in zip(
            checks, pool.map(lambda c: _read(c[3]), checks), strict=True
        ):
            result.files += 1
            if isinstance(found, str):
                result.problems.append(Problem(name, rel, found))
                continue
            result.bytes += found.size
            result.problems += [Problem(name, rel, p) for p in _compare(entry, found)]
    result.seconds = time.monotonic() - began
    return result


def _read(path: Path) -> _Found | str:
    try:
        return read_back(path)
    except FileNotFoundError:
        return "listed in the manifest but missing"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"


def _compare(entry: dict[str, Any], found: _Found) -> list[str]:
    problems = []
    if found.problem:
        problems.append(found.problem)
    if entry.get("sha256") != found.sha256:
        problems.append(f"sha256 is {found.sha256}, the manifest says {entry.get('sha256')}")
    if entry.get("bytes") != found.bytes:
        problems.append(f"holds {found.bytes} bytes, the manifest says {entry.get('bytes')}")
    if entry.get("messages") != found.lines:
        problems.append(f"holds {found.lines} lines, the manifest says {entry.get('messages')}")
    return problems


def _unlisted(data_dir: Path, stream_dir: Path, name: str, listed: set[str]) -> list[Problem]:
    problems = []
    for dirpath, dirnames, filenames in os.walk(stream_dir):
        dirnames.sort()
        for filename in sorted(filenames):
            parsed = FileName.parse(filename)
            if parsed is None or parsed.stream != name:
                continue
            rel = Path(dirpath, filename).relative_to(data_dir).as_posix()
            if rel not in listed:
                problems.append(Problem(name, rel, "published but not in the manifest"))
    return problems


def _stale_parts(
    data_dir: Path, stream_dir: Path, name: str, save_interval: float, now: float
) -> list[Problem]:
    problems = []
    for part in sorted(stream_dir.rglob(f"*{PART_SUFFIX}")):
        age = now - part.stat().st_mtime
        if age > save_interval:
            problems.append(Problem(
                name, part.relative_to(data_dir).as_posix(),
                f"a .part {age:.0f} s old while no sfmd runs the stream: the next start "
                "recovers it",
            ))
    return problems
