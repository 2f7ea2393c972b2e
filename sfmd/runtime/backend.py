"""What every back end shares: the `Backend` shape, and the `Ledger` of streams not running.

A back end runs the streams of one `Mode`: `tasks` (a connection of its own, in this daemon),
`shared` (members of a connection shared per credential) and `processes` (one supervisord
program each). The daemon hands every back end the whole registry (`Desired`) in two passes,
all stops first and then all starts, so a stream moving between back ends lets go of its
connection on one side before the other side takes it.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sfmd.logs import get_logger
from sfmd.registry import Mode, StreamSpec
from sfmd.status import State, StreamStatus


class Desired:
    """The registry as one reconcile pass hands it to every back end: every stream, and each
    mode's active streams by name, sorted out once for the pass.

    Filtering every stream in each back end, twice a pass, took about a millisecond a loop
    at 5,000 streams, and an API change runs a whole pass before it answers.

    `scope` is None for a whole pass. A pass after one stream's change (`changed`) names
    that stream alone: every other stream is as the pass before left it, so a back end that
    plans stream by stream (the task back end) need look at no other.
    """

    def __init__(self, specs: Sequence[StreamSpec]) -> None:
        self.specs = specs
        self.scope: frozenset[str] | None = None
        self._active: dict[Mode, dict[str, StreamSpec]] = {mode: {} for mode in Mode}
        for spec in specs:
            if spec.active:
                self._active[spec.mode][spec.name] = spec

    def active(self, mode: Mode) -> dict[str, StreamSpec]:
        """The streams that should run in `mode`, by name, in name order (as `specs`)."""
        return self._active[mode]

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """Every stream's name, active or not."""
        return frozenset(spec.name for spec in self.specs)

    def changed(self, name: str, spec: StreamSpec | None) -> Desired:
        """This pass's registry with stream `name` now `spec` (None: deleted), scoped to it.

        Made from this one in a few copies of C-level containers, where a whole pass reads
        every stream in Python: at 5,000 streams that was 9 of a PATCH's 11 ms on the loop.
        Nothing here is changed: the two passes may share what did not change.
        """
        specs = list(self.specs)
        at = bisect.bisect_left(specs, name, key=_name)
        if at < len(specs) and specs[at].name == name:
            if spec is None:
                del specs[at]
            else:
                specs[at] = spec
        elif spec is not None:
            specs.insert(at, spec)
        after = Desired.__new__(Desired)
        after.specs = specs
        after.scope = frozenset((name,))
        after._active = dict(self._active)
        stays = spec.mode if spec is not None and spec.active else None
        for mode, streams in self._active.items():
            if name in streams and mode is not stays:
                after._active[mode] = streams = dict(streams)
                del streams[name]
        if stays is not None and spec is not None:
            streams = after._active[stays] = dict(after._active[stays])
            last = next(reversed(streams), None)
            fresh = name not in streams
            streams[name] = spec  # where it was, or last
            if fresh and last is not None and name < last:  # back in name order
                after._active[stays] = dict(sorted(streams.items(), key=_first))
        return after


_name = operator.attrgetter("name")
_first = operator.itemgetter(0)


class Backend(Protocol):
    async def stop_unwanted(self, desired: Desired) -> None:
        """Stop what runs here and should not (or should run differently)."""

    async def start_wanted(self, desired: Desired, *, jitter: float = 0.0) -> None:
        """Start what should run here and does not."""

    def status(self, spec: StreamSpec) -> StreamStatus | None:
        """The status of a stream running here, or None."""

    async def close(self) -> None:
        """Stop everything this back end runs in this process (daemon shutdown)."""


class Ledger:
    """What the daemon knows of streams that are not running: why those that should run cannot
    (`failed`: since when, and the reason), and the last status of those that stopped, so
    `show` still tells what they collected.

    It also keeps each stream's counters across its stops and starts: a back end's status
    counts from its own start, `running` adds what the stream's earlier runs counted, so a
    stream's totals (and the /metrics counters) start from 0 only when the daemon starts."""

    def __init__(self) -> None:
        self.failed: dict[str, tuple[datetime, str]] = {}
        self.last: dict[str, StreamStatus] = {}  # with the earlier runs' counters added
        self.published: dict[str, int] = {}  # files the stream's earlier runs published
        self.retry_at: dict[str, datetime] = {}  # a crashed task's restart, while it waits
        # A stream stopped since before this daemon began has been stopped at least this
        # long; its true moment is not known here, and "now" would say it just stopped.
        self.started = datetime.now(UTC)

    def fail(self, name: str, reason: str) -> None:
        """Mark `name` failed; logged once per new reason, `since` kept across repeats."""
        since, earlier = self.failed.get(name, (datetime.now(UTC), None))
        if earlier != reason:
            get_logger(stream=name).error("stream_failed", reason=reason)
        self.failed[name] = (since, reason)

    def restarting(self, name: str, reason: str, retry_in: float | None = None) -> None:
        """A failure that is being dealt with (a crashed task, started again in `retry_in`
        seconds): shown, not logged again."""
        now = datetime.now(UTC)
        self.failed[name] = (now, reason)
        if retry_in is not None:
            self.retry_at[name] = now + timedelta(seconds=retry_in)

    def clear(self, name: str) -> None:
        self.failed.pop(name, None)
        self.retry_at.pop(name, None)

    def keep_failures_of(self, wanted: Callable[[str], bool]) -> None:
        """Forget the failures of streams no longer meant to run (`wanted(name)` is false):
        asked of the failed streams only, not of every stream in the registry."""
        for name in [n for n in self.failed if not wanted(n)]:
            del self.failed[name]
            self.retry_at.pop(name, None)

    def stopped(self, name: str, status: StreamStatus, published: int = 0) -> None:
        """Remember a stopped stream's counters: `status` is its back end's, from the run
        that ended, and `published` the files that run published; the earlier runs' are
        added."""
        self.published[name] = self.published.get(name, 0) + published
        self.last[name] = dataclasses.replace(
            status.plus(self.last.get(name)), state=State.STOPPED, since=datetime.now(UTC),
            connection=None, connected_since=None, down_since=None, next_attempt=None,
        )

    def running(self, name: str, status: StreamStatus) -> StreamStatus:
        """A running stream's status (its back end's, counted from this run) with its earlier
        runs' counters added."""
        return status.plus(self.last.get(name))

    def forget(self, name: str) -> None:
        self.last.pop(name, None)
        self.published.pop(name, None)
        self.failed.pop(name, None)
        self.retry_at.pop(name, None)

    def status(self, name: str) -> StreamStatus:
        """The status of a stream that runs nowhere: failed (down since it failed), or
        stopped with its counters."""
        base = self.last.get(name) or StreamStatus(since=self.started)
        failure = self.failed.get(name)
        if failure is None:
            return base
        since, reason = failure
        return dataclasses.replace(
            base, state=State.FAILED, since=since, last_error=reason, current_file=None,
            down_since=since, next_attempt=self.retry_at.get(name),
        )
