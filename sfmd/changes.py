"""Which streams changed what they show, told by the streams themselves.

GET /streams and /health show every stream. At 5,000 streams, looking at each one again for
every request cost the event loop 12-30 ms a request, although between two requests most
streams show what they showed before. So a task stream's status and archive say when
anything they show changes (`StreamStatus.watch`, `Archive.watch`), and each view that keeps
what it showed makes again only the streams named since it last looked (`take`).

A notice is one `set.add` of a name: a message gives four. Nothing here imports sfmd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


class Changes:
    """Names of the streams that changed since each reader last looked.

    Notices go to one set; a reader's `take` hands them to every reader's own set first, so
    one notice costs the same however many views keep what they showed.
    """

    def __init__(self) -> None:
        self._new: set[str] = set()  # never replaced: notices hold its `add`
        self._readers: list[set[str]] = []

    def notice_for(self, name: str) -> Callable[[], None]:
        """What a stream calls when anything it shows changes."""
        return functools.partial(self._new.add, name)

    def touch(self, name: str) -> None:
        """Stream `name` changed in a way its own notices do not tell: it started, stopped,
        or its status and archive became other objects."""
        self._new.add(name)

    def forget(self, name: str) -> None:
        """Stream `name` is gone: no reader needs it, and a daemon whose streams come and go
        with new names while nobody asks keeps no trace of them."""
        self._new.discard(name)
        for names in self._readers:
            names.discard(name)

    def reader(self) -> set[str]:
        """A new reader's set of names, for `take`: it starts out knowing nothing changed,
        so a reader begins by making every stream it shows."""
        names: set[str] = set()
        self._readers.append(names)
        return names

    def take(self, reader: set[str]) -> set[str]:
        """The names that changed since `reader` last took them (and the reader's set emptied)."""
        new = self._new
        if new:
            for names in self._readers:
                names |= new
            new.clear()
        taken = set(reader)
        reader.clear()
        return taken
