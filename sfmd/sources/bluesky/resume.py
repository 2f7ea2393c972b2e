"""Where a Jetstream stream resumes: read back from what it durably stored.

The resume point is the newest `time_us` in the stream's files, never a side file that could
disagree with them. At start-up it is read from the newest published files (a crash's `.part`
is recovered and published before this runs); while the stream runs it follows each stored
event. Every (re)connect asks the instance to replay from `newest - rewind`, and what comes
again is recognised by identity and dropped: so nothing is lost and nothing stored twice,
across reconnects, restarts and `kill -9`.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from sfmd.archive.tail import file_lines, newest_files
from sfmd.sources.bluesky.events import Identity, NotAnEvent, identity, parse


class ResumePoint:
    """The newest event stored and the identities of those stored in the last `rewind`."""

    def __init__(self, rewind_us: int) -> None:
        self.rewind_us = rewind_us
        self.newest: int | None = None
        self._recent: dict[Identity, int] = {}  # identity → time_us
        # The same identities in the order they were stored: events come in time order
        # (a replay, then the live tail), so the oldest are at the left.
        self._order: deque[tuple[int, Identity]] = deque()

    @property
    def cursor(self) -> int | None:
        """Where to ask the instance to replay from; None: the live tail."""
        return None if self.newest is None else max(0, self.newest - self.rewind_us)

    def seen(self, key: Identity) -> bool:
        return key in self._recent

    def stored(self, key: Identity, time_us: int) -> None:
        self._recent[key] = time_us
        self._order.append((time_us, key))
        if self.newest is None or time_us > self.newest:
            self.newest = time_us
        self._prune()

    def _prune(self) -> None:
        """Forget identities older than the replay can bring back: from the left, so each is
        looked at once however dense the events (an event stored out of order is kept until
        the ones before it go)."""
        assert self.newest is not None
        floor = self.newest - 2 * self.rewind_us
        order, recent = self._order, self._recent
        while order and order[0][0] < floor:
            time_us, key = order.popleft()
            if recent.get(key) == time_us:
                del recent[key]

    @classmethod
    def from_files(cls, stream_dir: Path, rewind_us: int) -> ResumePoint:
        point = cls(rewind_us)
        for path in reversed(newest_files(stream_dir)):
            lines = file_lines(path)
            newest = max((t for t in map(_time_us, lines) if t is not None), default=None)
            if newest is None:
                continue
            if point.newest is None:
                point.newest = newest
            floor = point.newest - 2 * rewind_us
            for line in lines:
                t = _time_us(line)
                if t is not None and t >= floor:
                    try:
                        key = identity(parse(line), line)
                    except NotAnEvent:
                        continue
                    point._recent[key] = t
                    point._order.append((t, key))
            if newest < floor:
                break  # older files hold nothing the replay can bring back
        point._order = deque(sorted(point._order, key=lambda entry: entry[0]))
        return point


def _time_us(line: bytes) -> int | None:
    """An event's time_us without parsing the whole line: it stands near the start."""
    at = line.find(b'"time_us":')
    if at < 0:
        return None
    end = at + 10
    stop = end
    while stop < len(line) and 48 <= line[stop] <= 57:
        stop += 1
    return int(line[end:stop]) if stop > end else None
