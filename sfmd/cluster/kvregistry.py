"""The stream registry on a NATS KV bucket: cluster mode's sibling of `registry.store`.

The whole registry is one document in one key, the same JSON as the file (`store.render`),
zlib-compressed past `COMPRESS_FROM` bytes. One key makes every change atomic with a single
compare-and-set on its revision, and keeps the rules that span streams (one active stream per
exclusive slot, unique names) exact across hosts without locks: a change is checked against
the document at revision r and written with `last=r`; if another host wrote meanwhile, the
write is refused by NATS, the document is read again and the change checked again on it. A
change to *another* stream is simply applied again on top; a change to the *same* stream that
the caller based its change on is a `Conflict` (409), which the caller checks again or
answers. Nothing is ever lost: every write either lands on the newest document or fails.

The cost is that every change rewrites the document: about 300 bytes a stream, so 1,000 streams
is 300 KB raw, within NATS's default max_payload (1 MB) even before zlib shrinks it several-fold.
Changes are rare (people type them) and reads are served from memory.

A re-read validates only the streams whose line changed (1,000 unchanged streams are not
checked again), so a host that lost a race re-reads in about a millisecond and retries.

The interface matches `registry.store.Registry` for reading (get, list, in, len, holder_of,
check_credential_free: synchronous, from the copy in memory), while changes are coroutines
(they await NATS) and `refresh()` brings the copy up to date; the caller refreshes on a timer
and before it checks a change. Watches would only be hints, so none is used.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Callable, Collection

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from sfmd.cluster.connection import BucketSpec, open_bucket
from sfmd.cluster.errors import Conflict, Unavailable
from sfmd.cluster.lease import NATS_FAILURES
from sfmd.logs import get_logger
from sfmd.registry.fields import ValidationError
from sfmd.registry.spec import StreamSpec
from sfmd.registry.store import (
    FORMAT_VERSION,
    Holders,
    check_credential_free,
    parse,
    render,
)

log = get_logger()

BUCKET = "sfm_registry"
KEY = "streams"
#: Documents bigger than this are stored zlib-compressed (a JSON document starts with "{",
#: a zlib stream never does).
COMPRESS_FROM = 64 * 1024
#: Seconds a change keeps being checked again on a newer document before it is refused as a
#: conflict. Compare-and-set is not fair: a host writing changes back to back (a script adding
#: hundreds of streams) wins every race while it writes, so a change from another host waits
#: for a pause rather than giving up after a few tries.
RETRY_FOR = 5.0

Check = Callable[["KVRegistry"], None]

# The frame `store.render` writes around the streams' lines (joined by ",\n").
_HEAD = f'{{"version": {FORMAT_VERSION}, "streams": [\n'
_TAIL = "\n]}\n"


class KVRegistry:
    """The streams by name, kept in one bucket key; every change a compare-and-set."""

    def __init__(
        self,
        kv: KeyValue,
        bucket: str,
        *,
        credentials: Collection[str] | None = None,
        retry_for: float = RETRY_FOR,
    ) -> None:
        self.kv = kv
        self.where = f"NATS bucket {bucket} key {KEY}"
        self.credentials = credentials
        self.retry_for = retry_for
        self.raced = 0  # writes refused because another change got in first (for metrics)
        self.revision = 0  # of the document in memory; 0: no document yet
        self._streams: dict[str, StreamSpec] = {}
        self._holders_of: tuple[dict[str, StreamSpec], Holders] | None = None
        # This host's changes go one at a time, so retries are spent only on other hosts'.
        self._writing = asyncio.Lock()

    def __repr__(self) -> str:
        return f"KVRegistry({self.where!r}, {len(self._streams)} streams, rev {self.revision})"

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        credentials: Collection[str] | None = None,
        replicas: int = 1,
        bucket: str = BUCKET,
    ) -> KVRegistry:
        """The bucket (created if missing) and its document read; RegistryError if the
        document is there but cannot be trusted."""
        kv = await open_bucket(
            js,
            BucketSpec(bucket, "sfmd: the stream registry", history=5, replicas=replicas),
        )
        registry = cls(kv, bucket, credentials=credentials)
        await registry.refresh()
        return registry

    # -- reading (from memory, as the file registry) --------------------------------------------

    def get(self, name: str) -> StreamSpec:
        return self._streams[name]

    def list(self) -> list[StreamSpec]:
        return [self._streams[name] for name in sorted(self._streams)]

    def __contains__(self, name: object) -> bool:
        return name in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def holder_of(self, spec: StreamSpec) -> StreamSpec | None:
        """Another active stream holding the connection `spec` would need, if any."""
        return self._holders().holder_of(spec)

    def check_credential_free(self, spec: StreamSpec) -> None:
        """Refuse making `spec` active on a slot another active stream holds (API 409)."""
        check_credential_free(self._holders(), spec)

    def _holders(self) -> Holders:
        """The holders of the document in memory, made once per document read."""
        if self._holders_of is None or self._holders_of[0] is not self._streams:
            self._holders_of = (self._streams, Holders(self._streams.values()))
        return self._holders_of[1]

    def remove_leftovers(self) -> list[object]:
        """Nothing to clean up: a write to a bucket is whole or absent."""
        return []

    async def refresh(self) -> bool:
        """Read the document if it changed; whether it did. RegistryError if unreadable."""
        try:
            entry = await self.kv.get(KEY)
        except KeyNotFoundError:
            if self._writing.locked():
                return False  # this host's first change may be landing: it says what is
            changed = self.revision != 0 or bool(self._streams)
            self.revision, self._streams = 0, {}
            return changed
        if entry.revision <= self.revision:
            # The same document, or an older one read while this host's own change landed
            # (revisions only grow): what is in memory is at least as new.
            return False
        self._streams = self._parse(_unpack(entry.value or b""))
        self.revision = entry.revision
        return True

    def _parse(self, document: bytes) -> dict[str, StreamSpec]:
        """The document's streams, validating again only the lines that changed: checking
        1,000 streams takes tens of milliseconds, and a host that lost a race must re-read
        and retry quickly or the host that won keeps winning. A document not in the shape
        `render` writes (edited by hand) is parsed whole, as is one whose names clash."""
        text = document.decode("utf-8", errors="replace")
        if not (text.startswith(_HEAD) and text.endswith(_TAIL)):
            return parse(self.where, document, self.credentials)
        body = text[len(_HEAD):-len(_TAIL)]
        lines = body.split(",\n") if body else []
        known = {spec.registry_line: spec for spec in self._streams.values()}
        fresh = [line for line in lines if line not in known]
        specs = [known[line] for line in lines if line in known]
        if fresh:
            new = _HEAD + ",\n".join(fresh) + _TAIL
            specs += parse(self.where, new.encode("utf-8"), self.credentials).values()
        streams = {spec.name: spec for spec in specs}
        if len(streams) != len(lines):
            return parse(self.where, document, self.credentials)  # names the repeat
        return streams

    # -- changing (a compare-and-set each) -------------------------------------------------------

    async def add(self, spec: StreamSpec, *, check: Check | None = None) -> None:
        """Store a new stream. Refused (ValidationError) if the name is taken or its slot held
        by another active stream, judged on the newest document; `check` runs the caller's own
        checks there too (admission's), each time the change is tried."""

        def change(streams: dict[str, StreamSpec]) -> dict[str, StreamSpec]:
            if spec.name in streams:
                raise ValidationError(
                    "name_taken", "name", f"a stream named {spec.name!r} already exists"
                )
            self.check_credential_free(spec)
            return {**streams, spec.name: spec}

        await self._change(change, check)

    async def replace(
        self,
        spec: StreamSpec,
        *,
        based_on: StreamSpec | None = None,
        check: Check | None = None,
    ) -> None:
        """Store new settings for an existing stream (KeyError if there is none). With
        `based_on` (the settings the change was made from), a stream that changed meanwhile
        on any host is a Conflict (409): the change is not applied over settings its author
        never saw. Changes to other streams meanwhile are kept and the change goes on top."""

        def change(streams: dict[str, StreamSpec]) -> dict[str, StreamSpec]:
            if spec.name not in streams:
                raise KeyError(spec.name)
            if based_on is not None and streams[spec.name] != based_on:
                raise Conflict(
                    f"stream {spec.name!r} was changed meanwhile (on this host or another); "
                    "nothing was changed: read it again and retry"
                )
            self.check_credential_free(spec)
            return {**streams, spec.name: spec}

        await self._change(change, check)

    async def remove(self, name: str) -> None:
        """Delete a stream (KeyError if there is none)."""

        def change(streams: dict[str, StreamSpec]) -> dict[str, StreamSpec]:
            rest = dict(streams)
            del rest[name]
            return rest

        await self._change(change, None)

    async def _change(
        self,
        change: Callable[[dict[str, StreamSpec]], dict[str, StreamSpec]],
        check: Check | None,
    ) -> None:
        """Apply `change` to the newest document and write it with a compare-and-set; on a
        refused write read again and redo (checks included), for up to `retry_for` seconds."""
        async with self._writing:
            await self._change_once_alone(change, check)

    async def _change_once_alone(
        self,
        change: Callable[[dict[str, StreamSpec]], dict[str, StreamSpec]],
        check: Check | None,
    ) -> None:
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            if check is not None:
                check(self)
            streams = change(dict(self._streams))
            value = _pack(render(streams))
            try:
                if self.revision == 0:
                    revision = await self.kv.create(KEY, value)
                else:
                    revision = await self.kv.update(KEY, value, last=self.revision)
            except KeyWrongLastSequenceError:
                self.raced += 1
                attempt += 1
                if time.monotonic() >= deadline:
                    break
                try:
                    await self.refresh()
                except NATS_FAILURES as e:
                    raise Unavailable(
                        f"NATS did not answer ({type(e).__name__}); nothing was changed"
                    ) from None
                # Two hosts that keep colliding fall out of step: a random pause, growing
                # from a few ms to 50 ms at most.
                await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))
                continue
            except NATS_FAILURES as e:  # the CAS refusal is one of them too: caught above
                raise Unavailable(
                    f"NATS did not confirm the change ({type(e).__name__}); it may not have "
                    "been applied: read the stream back before trying again"
                ) from None
            self._streams, self.revision = streams, revision
            return
        log.warning("registry_write_gave_up", attempts=attempt, seconds=self.retry_for)
        raise Conflict(
            f"the registry kept changing on other hosts while this change was tried for "
            f"{self.retry_for:g} s ({attempt} times); nothing was changed: try again"
        )


def _pack(document: bytes) -> bytes:
    return document if len(document) < COMPRESS_FROM else zlib.compress(document, 6)


def _unpack(value: bytes) -> bytes:
    if value[:1] == b"{" or not value:
        return value
    try:
        return zlib.decompress(value)
    except zlib.error:
        return value  # parse() names it as not valid JSON
