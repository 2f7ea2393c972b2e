"""Reading back what the daemon stored: manifests, published files, lines still in `.part`s."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any


def manifest_lines(data_dir: Path, name: str) -> list[dict[str, Any]]:
    """Every line of the stream's manifest: its published files and the spans with none."""
    path = data_dir / name / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def manifest(data_dir: Path, name: str) -> list[dict[str, Any]]:
    """The manifest's lines for published files, in order; none before the first one."""
    return [entry for entry in manifest_lines(data_dir, name) if entry["file"] is not None]


def read_published(data_dir: Path, entry: dict[str, Any]) -> bytes:
    """A manifest entry's file, unpacked: gzip.decompress raises on a torn or truncated gzip."""
    raw = (data_dir / entry["file"]).read_bytes()
    return gzip.decompress(raw) if entry["file"].endswith(".gz") else raw


def stored_messages(data_dir: Path, name: str) -> list[bytes]:
    """Every message in the stream's published files, in manifest (publish) order."""
    out: list[bytes] = []
    for entry in manifest(data_dir, name):
        body = read_published(data_dir, entry)
        assert body.endswith(b"\n") or not body, f"{entry['file']} does not end in a newline"
        out += body.split(b"\n")[:-1]
    return out


def complete_lines(path: Path) -> int:
    """Whole lines in an archive file, published or still open: an open gzip has no trailer,
    so it is read as the sync-flushed prefix it is."""
    raw = path.read_bytes()
    if ".gz" in path.name:
        raw = zlib.decompressobj(wbits=31).decompress(raw)
    return raw.count(b"\n")


def messages_on_disk(data_dir: Path, name: str) -> int:
    """Complete lines in published and open (.part) files: what a stop can no longer lose."""
    # The pattern leaves out manifest.jsonl.
    return sum(complete_lines(p) for p in (data_dir / name).rglob(f"{name}-*.jsonl*"))


def part_lines(data_dir: Path) -> int:
    """Complete lines in every open `.part` file under data_dir, of any stream."""
    return sum(complete_lines(p) for p in data_dir.rglob("*.part"))


def messages_everywhere(data_dir: Path, name: str) -> list[bytes]:
    """Every complete message in the stream's files, published or still open (a killed
    host's `.part`s, which only its next start would publish), file by file."""
    out: list[bytes] = []
    for path in sorted((data_dir / name).rglob(f"{name}-*.jsonl*")):
        raw = path.read_bytes()
        if ".gz" in path.name:
            raw = zlib.decompressobj(wbits=31).decompress(raw)
        out += raw.split(b"\n")[:-1]
    return out
