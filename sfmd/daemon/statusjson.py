"""Each task stream's STATUS JSON, kept between two pages and encoded again only in part.

GET /streams shows every stream. At 5,000 streams, building and encoding every STATUS again
took 30-40 ms of the event loop a page (6-8 µs a stream), while every other request and
every stream's read waited. Between two pages most of a stream's STATUS is as it was: a
message moves four of its fields, and a rotation two more, the open file and the last publish
(`MOVING`); its state, errors and coverage change a few times a day. So each stream's JSON is
kept in pieces around those six. It is encoded whole again only when anything else it shows
changed (`Kept.key`); otherwise the six values are written between the kept pieces (the three
counters, side by side, as one). Every stream rotates at the same boundary: encoded whole,
that was 5,000 STATUS objects again on the pages just after it. (The settings around it are
encoded once per spec already: `StreamSpec.view_json_open`.)

Only a task stream on a single host is kept (`Views._read_in_place`): its status and archive
are read where they are. Shared and process-isolated streams, and every stream of a cluster
member, are encoded whole each time.
"""

from __future__ import annotations

import operator
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from sfmd.archive import Archive
from sfmd.keptjson import kept_json
from sfmd.status import StreamStatus, epoch_iso

#: The STATUS fields a message or a rotation moves, in the order `StreamStatus.to_dict`
#: writes them.
MOVING = ("messages", "tweets", "bytes", "current_file", "last_message_at", "last_publish_at")
#: The stream's own status fields the rest of its STATUS is made of: a change to any of them
#: encodes the whole STATUS again. The archive's part is `Archive.shown_key`.
KEYED = (
    "state", "since", "reconnects", "reconnects_planned", "last_error", "down_since",
    "next_attempt",
)  # fmt: skip
_keyed = operator.attrgetter(*KEYED)

# Stand-ins for the moving values while the whole is encoded, found again in its JSON and cut
# out. The random part keeps a stream's own text (an error, a file name) from ever looking
# like one.
_TOKEN = secrets.token_hex(8)
_STAND_IN = {field: f"\x00{_TOKEN}:{field}" for field in MOVING}
_STAND_IN_JSON = tuple(orjson.dumps(_STAND_IN[field]) for field in MOVING)


class Kept:
    """One stream's STATUS JSON as pieces around the `MOVING` values, and what it was
    encoded from."""

    __slots__ = ("file", "file_json", "key", "moment", "moment_json", "pieces", "published",
                 "published_json")

    def __init__(self, key: tuple[Any, ...], pieces: tuple[bytes, ...]) -> None:
        self.key = key
        self.pieces = pieces
        # The last message's moment, the open file and the last publish as last written: they
        # move, but a page comes more often than most quiet streams' messages, and far more
        # often than their files.
        self.moment: float | None = None
        self.moment_json = b"null"
        self.file: Path | None = None
        self.file_json = b"null"
        self.published: float | None = None
        self.published_json = b"null"


class StatusJson:
    """The kept STATUS JSON of every task stream a page has shown (`of`); `keep_only` lets
    go of streams that are gone.

    `before` and `after` are kept on the first and last piece: what a page writes around
    every STATUS (a STREAM's `,"status":` and its closing brace). A page of 5,000 streams
    then has two pieces fewer to put together for each.
    """

    def __init__(self, before: bytes = b"", after: bytes = b"") -> None:
        self._kept: dict[str, Kept] = {}
        self._before = before
        self._after = after

    def __len__(self) -> int:
        return len(self._kept)

    def of(
        self, name: str, status: StreamStatus, earlier: StreamStatus | None, archive: Archive
    ) -> bytes:
        """What `orjson.dumps(status.plus(earlier).to_dict(archive.coverage_shown()))` gives
        for stream `name`: `status` is the running stream's own, `earlier` its earlier runs'
        counters (`Ledger.last`)."""
        return b"".join(self.pieces_of(name, status, earlier, archive))

    def pieces_of(
        self, name: str, status: StreamStatus, earlier: StreamStatus | None, archive: Archive,
        head: bytes = b"",
    ) -> tuple[bytes, ...]:
        """`of`, not yet joined and after `head` (a STREAM's settings): the kept pieces with
        the moving values between them. A page that keeps every stream's STREAM until it
        changes keeps these, not a copy of them."""
        key = (earlier, _keyed(status), archive.shown_key())
        live = status.plus(earlier)  # `status` itself, unless the stream ran before
        kept = self._kept.get(name)
        if kept is None or kept.key != key:
            shown = live.to_dict(archive.coverage_shown())
            shown.update(_STAND_IN)
            first, *between, last = _cut(orjson.dumps(shown))
            pieces = (self._before + first, *between, last + self._after)
            kept = self._kept[name] = Kept(key, pieces)
        return _moving_between(kept, live, archive, head)

    def moved(
        self, name: str, status: StreamStatus, earlier: StreamStatus | None, archive: Archive,
        head: bytes = b"",
    ) -> tuple[bytes, ...] | None:
        """`pieces_of` for a stream whose status and archive changed nothing but the
        `MOVING` fields since it was last kept (its notices say so): the kept pieces are used
        without comparing what they were encoded from. None if nothing is kept for it."""
        kept = self._kept.get(name)
        if kept is None:
            return None
        return _moving_between(kept, status.plus(earlier), archive, head)

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget every stream but `names` (those that still exist)."""
        wanted = set(names)
        for name in [n for n in self._kept if n not in wanted]:
            del self._kept[name]


def _moving_between(
    kept: Kept, live: StreamStatus, archive: Archive, head: bytes
) -> tuple[bytes, ...]:
    """`head`, then `kept`'s pieces with the `MOVING` values of `live` and `archive` between
    them."""
    moment = archive.last_written
    if moment != kept.moment:
        kept.moment = moment
        kept.moment_json = _moment_json(moment)
    current = archive.current_file
    if current is not kept.file:  # a new file is a new object
        kept.file = current
        kept.file_json = kept_json(str(current)) if current is not None else b"null"
    published = archive.last_published
    if published != kept.published:
        kept.published = published
        kept.published_json = _moment_json(published)
    p0, p1, p2, p3, p4 = kept.pieces
    return (head, p0, _COUNTERS % (live.messages, live.tweets, live.bytes), p1, kept.file_json,
            p2, kept.moment_json, p3, kept.published_json, p4)


#: The three counters as they stand side by side in a STATUS (`_cut` checks that they do).
_COUNTERS = b'%d,"tweets":%d,"bytes":%d'


def _moment_json(moment: float | None) -> bytes:
    return ('"' + epoch_iso(moment) + '"').encode() if moment is not None else b"null"


def _cut(encoded: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """`encoded` without its stand-ins: the pieces before, between and after them, the
    counters' three taken as one (`_COUNTERS`)."""
    pieces = []
    rest = encoded
    for stand_in in _STAND_IN_JSON:
        before, found, rest = rest.partition(stand_in)
        if not found:
            raise AssertionError("STATUS no longer writes the MOVING fields in their order")
        pieces.append(before)
    p0, tweets, size, p3, p4, p5 = pieces
    if (tweets, size) != (b',"tweets":', b',"bytes":'):
        raise AssertionError("STATUS no longer writes the MOVING counters side by side")
    return p0, p3, p4, p5, rest
