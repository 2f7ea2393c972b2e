"""Checks on what a running daemon stored, against its manifest and what the fake API sent.

The fault, crash and full-disk tests share them: whatever went wrong, every published file
is whole and listed, and what is stored is an unbroken prefix of what each connection sent.
"""

from __future__ import annotations

import gzip
import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from sfmd.archive import FileName
from sfmd.fake import ConnectionRecord, FakeAPI, seq_of
from tests.helpers.files import manifest, read_published


def check_published(data: Path, name: str) -> list[dict[str, Any]]:
    """Every published file is whole and matches its manifest line; nothing is unlisted.

    Returns the manifest entries.
    """
    entries = manifest(data, name)
    listed = [e["file"] for e in entries]
    assert len(set(listed)) == len(listed), "a file is in the manifest twice"
    on_disk = sorted(
        p.relative_to(data).as_posix()
        for p in (data / name).rglob(f"{name}-*")
        if p.is_file()
    )
    assert not [p for p in on_disk if p.endswith(".part")], "a .part was left behind"
    assert sorted(listed) == on_disk, "published files and manifest lines differ"
    for entry in entries:
        check_entry(data, entry)
    return entries


def check_entry(data: Path, entry: dict[str, Any]) -> None:
    """One manifest line against its file: sha256 as stored, complete gzip, counts."""
    stored = (data / entry["file"]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == entry["sha256"], entry["file"]
    body = read_published(data, entry)  # gzip.decompress: raises on a torn or truncated gzip
    assert body.endswith(b"\n"), entry["file"]
    assert body.count(b"\n") == entry["messages"], entry["file"]
    assert len(body) == entry["bytes"], entry["file"]


def check_whole_file(path: Path) -> None:
    """A published file, listed or not yet, must be complete: gzip to its trailer, whole lines."""
    raw = path.read_bytes()
    body = gzip.decompress(raw) if path.name.endswith(".gz") else raw
    assert body.endswith(b"\n"), f"{path} does not end on a line end"


def check_prefixes(
    data: Path, stream: str, api: FakeAPI, records: list[ConnectionRecord]
) -> dict[int, tuple[int, int]]:
    """Stored byte-exact, once each, in order, and per connection an unbroken prefix of what
    it was sent (a crash or a refused write may cost a connection its tail, never a middle).

    Returns {connection: (messages stored, messages sent)}. For where loss is allowed: after
    SIGKILL and while the disk is full.
    """
    sent: dict[int, tuple[int, int, bytes]] = {}  # seq -> (connection, index, message)
    totals: dict[int, int] = {}
    for record in records:
        messages = api.sent_messages(record.conn)
        totals[record.conn] = len(messages)
        for index, message in enumerate(messages):
            sent[seq_of(message)] = (record.conn, index, message)
    by_conn: dict[int, list[int]] = defaultdict(list)
    last_seq = -1
    # Files in the order they were begun: interval, then the .N of a restart or a retry.
    for entry in sorted(manifest(data, stream), key=lambda e: _begun(e["file"])):
        for line in read_published(data, entry).split(b"\n")[:-1]:
            seq = seq_of(line)
            assert seq > last_seq, f"{stream}: message {seq} stored twice or out of order"
            last_seq = seq
            assert seq in sent, f"{stream}: stored a message the API never sent it"
            conn, index, message = sent[seq]
            assert line == message, f"{stream}: message {seq} altered"
            by_conn[conn].append(index)
    for conn, indexes in by_conn.items():
        assert indexes == list(range(len(indexes))), f"{stream}: a gap in connection {conn}"
    return {conn: (len(by_conn.get(conn, [])), total) for conn, total in totals.items()}


def _begun(relpath: str) -> tuple[int, int]:
    name = FileName.parse(Path(relpath).name)
    assert name is not None, relpath
    return name.start, name.seq
