"""Resume points in a bucket, one per stream, written only by the holder of its connection.

A resume point is the stream's own opaque text (a Jetstream cursor, a Mastodon status id),
saved when its files are flushed so that a host taking the connection over resumes there.
Each is stored with the slot and epoch of the lease it was written under, and a write is a
compare-and-set on the key's revision after checking that epoch: a holder whose lease was
taken over (a newer epoch of the same slot wrote meanwhile) is refused with `StaleEpoch`, so a
host that froze and woke up cannot move its successor's point back. The lease itself is asked
first (`valid()`), so a holder that knows its lease is gone does not even try.

The check and the write are two requests, so a holder frozen between them can still land one
write after its lease ended. It is harmless: its successor resumes from the point it read at
takeover, and its own first write replaces the stale one (its epoch is higher).

Epochs compare only within a slot: every slot's epochs come from one bucket's revisions, so a
newer holder of the same slot always has a higher one. When a stream moves to another
connection (its credential changed), the first write under the new slot replaces the point
whatever its epoch; the old slot's holder stops the stream at its next reconcile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from sfmd.cluster.connection import BucketSpec, open_bucket
from sfmd.cluster.errors import StaleEpoch
from sfmd.cluster.keys import encode_key

BUCKET = "sfm_checkpoints"
#: Compare-and-set attempts before giving up on a key other writers keep changing.
TRIES = 5


class Fence(Protocol):
    """What a write must show: the lease it is made under (`lease.Lease` is one)."""

    slot: str
    epoch: int
    host: str

    def valid(self) -> bool: ...


@dataclass(frozen=True)
class Checkpoint:
    stream: str
    point: str
    slot: str
    epoch: int
    host: str
    written: str  # UTC ISO 8601, the writer's clock
    revision: int


class Checkpoints:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        # stream → (revision, slot, epoch) of this process's own last write: while the key
        # is still at that revision nobody else wrote, so the next point under the same lease
        # goes in one compare-and-set, without reading the key first.
        self._written: dict[str, tuple[int, str, int]] = {}

    @classmethod
    async def open(
        cls, js: JetStreamContext, *, replicas: int = 1, bucket: str = BUCKET
    ) -> Checkpoints:
        kv = await open_bucket(
            js, BucketSpec(bucket, "sfmd: resume points by stream", replicas=replicas)
        )
        return cls(kv)

    async def get(self, stream: str) -> Checkpoint | None:
        """The stream's newest resume point, or None if it has none."""
        try:
            entry = await self.kv.get(encode_key(stream))
        except KeyNotFoundError:
            return None
        return _checkpoint(stream, entry.value, entry.revision)

    async def put(self, stream: str, point: str, fence: Fence) -> Checkpoint:
        """Save `point` under `fence`'s lease; StaleEpoch if the lease is lost or a newer
        holder of the same slot has written. NATS's errors propagate (nothing was saved, or
        the save is unknown: the next flush writes again)."""
        key = encode_key(stream)
        mine = self._written.get(stream)
        if mine is not None and mine[1:] == (fence.slot, fence.epoch) and fence.valid():
            value, written = _value(point, fence)
            try:
                revision = await self.kv.update(key, value, last=mine[0])
            except KeyWrongLastSequenceError:
                self._written.pop(stream, None)  # someone else wrote: judge it below
            else:
                self._written[stream] = (revision, fence.slot, fence.epoch)
                return Checkpoint(stream, point, fence.slot, fence.epoch, fence.host, written,
                                  revision)
        for _ in range(TRIES):
            if not fence.valid():
                raise StaleEpoch(
                    f"the lease on {fence.slot!r} (epoch {fence.epoch}) is no longer this "
                    f"host's; the resume point of {stream!r} was not saved"
                )
            current = await self.get(stream)
            if current is not None and current.slot == fence.slot and current.epoch > fence.epoch:
                raise StaleEpoch(
                    f"the resume point of {stream!r} was written under epoch {current.epoch} "
                    f"of {fence.slot!r} by {current.host}, newer than this host's epoch "
                    f"{fence.epoch}; not overwritten"
                )
            value, written = _value(point, fence)
            try:
                if current is None:
                    revision = await self.kv.create(key, value)
                else:
                    revision = await self.kv.update(key, value, last=current.revision)
            except KeyWrongLastSequenceError:
                continue  # someone wrote between the read and the write: judge it again
            self._written[stream] = (revision, fence.slot, fence.epoch)
            return Checkpoint(stream, point, fence.slot, fence.epoch, fence.host, written,
                              revision)
        raise StaleEpoch(
            f"the resume point of {stream!r} kept changing under other writers; not saved"
        )

    async def forget(self, stream: str) -> None:
        """Drop a deleted stream's resume point (a new stream of that name starts afresh)."""
        self._written.pop(stream, None)
        await self.kv.purge(encode_key(stream))


def _value(point: str, fence: Fence) -> tuple[bytes, str]:
    """A point as stored, and when it was written (UTC, the writer's clock)."""
    written = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    value = json.dumps({
        "point": point, "slot": fence.slot, "epoch": fence.epoch, "host": fence.host,
        "written": written,
    }).encode()
    return value, written


def _checkpoint(stream: str, value: bytes | None, revision: int) -> Checkpoint:
    data = json.loads(value or b"{}")
    return Checkpoint(
        stream=stream,
        point=str(data["point"]),
        slot=str(data["slot"]),
        epoch=int(data["epoch"]),
        host=str(data["host"]),
        written=str(data.get("written", "")),
        revision=revision,
    )
