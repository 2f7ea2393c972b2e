"""Archives on real files for the archive's own tests: a movable clock, messages, checks."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import time
import zlib
from datetime import datetime
from pathlib import Path

from sfmd.archive import Archive, FileName, read_manifest
from sfmd.sources.twitter.framing import count_tweets, is_tweet
from tests.helpers.waits import wait_until

STREAM = "s1"

#: The archive's own waits: a short default deadline, and a fine poll, since writes land in
#: milliseconds. Only the deadline a test passes as `timeout` differs from call to call.
wait_for = functools.partial(wait_until, timeout=5.0, interval=0.01)


class Clock:
    """The wall clock plus an offset the test can move (jumps) or align to a boundary."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def align(self, save_interval: int, into: float) -> None:
        """Place "now" `into` seconds after a rotation boundary."""
        now = time.time()
        self.offset = into - (now % save_interval)


def tweet(label: str, i: int, size: int = 60) -> bytes:
    body = json.dumps({"id": i, "text": label}).encode()
    return body[:-1] + b', "pad": "' + b"x" * max(0, size - len(body) - 10) + b'"}'


def batch(label: str, n: int, size: int = 60) -> list[bytes]:
    return [tweet(label, i, size) for i in range(n)]


def final_files(data_dir: Path) -> list[Path]:
    """Published archive files (not `.part`, not the manifest), oldest first."""
    found = [(name, p) for p in data_dir.rglob("*") if (name := FileName.parse(p.name))]
    return [p for name, p in sorted(found, key=lambda item: (item[0].start, item[0].seq))]


def parts(data_dir: Path, pattern: str = "*.part") -> list[Path]:
    return sorted(data_dir.rglob(pattern))


def content(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def manifest(data_dir: Path) -> list[dict]:
    return read_manifest(data_dir / STREAM / "manifest.jsonl")


def check_entry(data_dir: Path, entry: dict) -> bytes:
    """A manifest line must describe its file exactly; returns the file's lines."""
    path = data_dir / entry["file"]
    assert not path.name.endswith(".part")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    data = content(path)
    lines = data.split(b"\n")
    assert lines.pop() == b"", "a file must end with a line end"
    assert entry["messages"] == len(lines)
    assert entry["tweets"] == sum(map(is_tweet, lines))
    assert entry["bytes"] == len(data)
    start = datetime.fromisoformat(entry["start"])
    end = datetime.fromisoformat(entry["end"])
    name = FileName.parse(path.name)
    assert name is not None and name.start == start.timestamp() <= end.timestamp()
    return data


def make_archive(data_dir: Path, **kwargs) -> Archive:
    settings = {
        "save_interval": 3600,
        "compress": True,
        "flush_interval": 0.05,
        "count": count_tweets,
        **kwargs,
    }
    return Archive(data_dir, STREAM, **settings)


def gzip_with_flushes(lines: list[bytes], torn: bytes = b"") -> tuple[bytes, list[int]]:
    """A gzip stream sync-flushed after every line, and the offset after each flush.

    With `torn`, a last line without its line end is flushed too and the stream is left
    without its trailer, as a crash would leave it.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    out, flushed = b"", []
    for chunk in [line + b"\n" for line in lines] + ([torn] if torn else []):
        out += compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)
        flushed.append(len(out))
    return (out if torn else out + compressor.flush(zlib.Z_FINISH)), flushed


def leftover(data_dir: Path, start: int, data: bytes, compress: bool, seq: int = 0) -> Path:
    name = FileName(STREAM, start, seq, compress)
    directory = name.directory(data_dir / STREAM)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name.filename + ".part")
    path.write_bytes(data)
    return path
