"""Which streams changed what they show, told by the streams themselves.

GET /streams and /health show every stream. At 5,000 streams, looking at each one again for
every request cost the event loop 12-30 ms a request, although between two requests most
streams show what they showed before. So a task stream's status and archive say when
anything they show changes (`StreamStatus.watch`, `Archive.watch`), and each view that keeps
what it showed makes again only the streams named since it last looked (`take`). A message
only moves a stream's counters and its last message's moment on, and a rotation its open
file, files published and last publish: they have a notice of their own, so a view can write
those values alone (`GET /streams`, `/metrics`) or ignore them (`/health`).

A notice is one `set.add` of a name: a message gives four. Nothing here imports sfmd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


class Reader:
    """One view's names of the streams that changed (`changed`) and of those a message or a
    rotation only moved on (`moved`: counters, files, moments), since it last took them."""

    __slots__ = ("changed", "moved")

    def __init__(self) -> None:
        self.changed: set[str] = set()
        self.moved: set[str] = set()


class Changes:
    """Names of the streams that changed since each reader last looked.

    Notices go to two sets, one for any change and one for what a message or a rotation
    moves on; a reader's `take` hands them to every reader first, so one notice costs the
    same however many views keep what they showed.
    """

    def __init__(self) -> None:
        # Never replaced: notices hold their `add`.
        self._changed: set[str] = set()
        self._moved: set[str] = set()
        self._readers: list[Reader] = []

    def notices_for(self, name: str) -> tuple[Callable[[], None], Callable[[], None]]:
        """What a stream calls when anything it shows changes, and when a message or a
        rotation only moved its counters, its files and their moments on."""
        return functools.partial(self._changed.add, name), functools.partial(self._moved.add, name)

    def touch(self, name: str) -> None:
        """Stream `name` changed in a way its own notices do not tell: it started, stopped,
        or its status and archive became other objects."""
        self._changed.add(name)

    def forget(self, name: str) -> None:
        """Stream `name` is gone: no reader needs it, and a daemon whose streams come and go
        with new names while nobody asks keeps no trace of them."""
        self._changed.discard(name)
        self._moved.discard(name)
        for reader in self._readers:
            reader.changed.discard(name)
            reader.moved.discard(name)

    def reader(self) -> Reader:
        """A new reader, for `take`: it starts out knowing nothing changed, so a reader begins
        by making every stream it shows."""
        reader = Reader()
        self._readers.append(reader)
        return reader

    def take(self, reader: Reader) -> tuple[set[str], set[str]]:
        """The names that changed, and those only moved on, since `reader` last took them
        (the reader emptied)."""
        if self._changed:
            for each in self._readers:
                each.changed |= self._changed
            self._changed.clear()
        if self._moved:
            for each in self._readers:
                each.moved |= self._moved
            self._moved.clear()
        changed, moved = reader.changed, reader.moved
        reader.changed, reader.moved = set(), set()
        return changed, moved - changed
