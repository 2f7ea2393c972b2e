"""What the daemon shows: each stream's STATUS, the API's STREAM JSON, metrics samples, and
systemd's one-line summary. Read-only: views never change what runs."""

from __future__ import annotations

import asyncio
import operator
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sfmd.daemon.shown import Shown
from sfmd.daemon.statusjson import StatusJson
from sfmd.keptjson import kept_json
from sfmd.registry import Mode, StreamSpec
from sfmd.status import (
    STATES,
    ConnectionSample,
    State,
    StreamSample,
    StreamStatus,
    describe_states,
)

if TYPE_CHECKING:
    from sfmd.daemon.app import Daemon
    from sfmd.runtime.tasks import StreamRunner



class Views:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        # Each task stream's STATUS JSON, between two pages, as a STREAM holds it.
        self.kept = StatusJson(before=_STATUS_KEY, after=_STREAM_END)
        # GET /streams' STREAM JSON and /health's state of each stream, kept between two
        # calls and made again for the streams that said they changed (`Shown`).
        self._pages = Shown(daemon.changes, self._view, move=self._moved_view)
        self._paging = asyncio.Lock()  # one page refreshes `_pages` at a time
        self._states = Shown(daemon.changes, self._state, counts=False)
        # /metrics: one page at a time.
        self._samples = Shown(daemon.changes, self._sample, move=self._moved_sample)

    def status_of(self, spec: StreamSpec) -> StreamStatus:
        """One stream's status, from whichever back end runs it (or the ledger)."""
        d = self.daemon
        if d.cluster is not None and spec.active:
            remote = d.cluster.remote_state(spec.name, spec.slot)
            if remote is not None:
                return _remote_status(remote[1], d.ledger.started)
        if spec.mode is Mode.PROCESS and spec.name not in d.ledger.failed:
            return d.processes.status(spec)
        running = d.shared.status(spec) or d.tasks.status(spec)
        if running is None:
            return d.ledger.status(spec.name)
        return d.ledger.running(spec.name, running)

    def _task_runner(self, spec: StreamSpec) -> StreamRunner | None:
        """The runner of a stream with a connection of its own in this daemon, if it runs."""
        d = self.daemon
        if spec.mode is Mode.PROCESS or d.shared.group_of(spec) is not None:
            return None
        return d.tasks.runners.get(spec.name)

    def _read_in_place(self, spec: StreamSpec) -> StreamRunner | None:
        """A task stream's runner, whose live status and archive the pages read as they are
        instead of copying them into one status: on a single host (a cluster member asks the
        cluster first)."""
        return self._task_runner(spec) if self.daemon.cluster is None else None

    def view_json(self, spec: StreamSpec) -> bytes:
        """A STREAM as the API returns it, as JSON: the settings come pre-encoded (once per
        spec); a task stream's status is kept between calls and encoded again only in part
        (`StatusJson`); any other's is encoded whole."""
        return b"".join(self._view(spec)[0])

    def _view(self, spec: StreamSpec) -> tuple[tuple[bytes, ...], bool]:
        """`view_json` in pieces, and whether they may be kept until the stream tells of a
        change: a task stream read in place is watched (`TaskBackend`), any other is not.
        Pieces, not their join: a page keeps every stream's, and the status pieces are
        `StatusJson`'s own, so they are not held twice."""
        runner = self._read_in_place(spec)
        if runner is not None:
            earlier = self.daemon.ledger.last.get(spec.name)
            return self.kept.pieces_of(spec.name, runner.stream.status, earlier, runner.archive,
                                       head=spec.view_json_open), True
        encoded = kept_json(self.status_of(spec).to_dict())  # kept until the next page
        cluster = self.daemon.cluster
        if cluster is not None:  # which host runs it
            host = cluster.holder(spec.slot) if spec.active else None
            return (spec.view_json_open, b',"host":', kept_json(host), _STATUS_KEY, encoded,
                    _STREAM_END), False
        return (spec.view_json_open, _STATUS_KEY, encoded, _STREAM_END), False

    def _moved_view(self, spec: StreamSpec, view: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """A kept STREAM whose stream took messages or rotated and changed nothing else
        since: its counters, open file and last message's and publish's moments written
        again between the kept pieces, without looking at the rest (`StatusJson.moved`)."""
        runner = self.daemon.tasks.runners.get(spec.name)
        if runner is not None:
            earlier = self.daemon.ledger.last.get(spec.name)
            view = self.kept.moved(spec.name, runner.stream.status, earlier, runner.archive,
                                   head=spec.view_json_open)
            if view is not None:
                return view
        return self._view(spec)[0]  # stopped meanwhile: its stop is the next page's change

    def state_of(self, spec: StreamSpec) -> tuple[State, str | None]:
        """A stream's state and last error, as `status_of` shows them, without copying its
        whole status: what /health and systemd's status line need of every stream."""
        return self._state(spec)[0]

    def _state(self, spec: StreamSpec) -> tuple[tuple[State, str | None], bool]:
        """`state_of`, and whether it may be kept until the stream tells of a change."""
        runner = self._task_runner(spec)
        if runner is not None:
            live = runner.stream.status
            return (live.state, live.last_error), self.daemon.cluster is None
        status = self.status_of(spec)
        return (status.state, status.last_error), False

    def states(self) -> list[tuple[State, str | None]]:
        """Every stream's `state_of`, in name order: kept between calls, and looked up again
        only for streams that changed since (`Shown`)."""
        return self._states.now(self.daemon.specs())

    async def listing(self) -> bytes:
        """GET /streams' body: each STREAM kept from the last page unless its stream changed
        since (`Shown`), the others made with turns for the rest of the loop (`turns`). A
        stream removed meanwhile shows as stopped, as it would have a moment later."""
        async with self._paging:
            specs = self.daemon.specs()
            views = await self._pages.refreshed(specs)
            page = b"".join((b'{"streams":[', b",".join(map(b"".join, views)), b"]}"))
        if len(self.kept) > len(specs):
            self.kept.keep_only(spec.name for spec in specs)
        return page

    async def listing_ahead(self) -> None:
        """Move GET /streams' kept STREAMs on ahead of the next page (`Shown.ahead`)."""
        async with self._paging:
            await self._pages.ahead(self.daemon.specs())

    async def samples(self) -> list[StreamSample]:
        """Every stream's metrics sample, in name order: kept between pages, and made again
        (with turns for the rest of the loop) for streams that changed since (`Shown`) or
        whose open gap grows with the clock. One page at a time: `Metrics.page`."""
        return await self._samples.refreshed(self._sampled())

    async def samples_ahead(self) -> list[StreamSample]:
        """The kept samples moved on ahead of the next `samples` (`Shown.ahead`). Its caller
        keeps the two apart, as it does two pages (`Metrics`)."""
        return await self._samples.ahead(self._sampled())

    def _sampled(self) -> list[StreamSpec]:
        """The streams /metrics shows: none while the daemon has no registry."""
        d = self.daemon
        return d.specs() if d.registry else []

    def _sample(self, spec: StreamSpec) -> tuple[StreamSample, bool]:
        """A stream's metrics sample, and whether it may be kept until the stream tells of a
        change: a task stream read in place, not in a gap (whose seconds grow)."""
        d = self.daemon
        runner = d.tasks.runners.get(spec.name)
        task = self._read_in_place(spec)
        if task is not None:
            status = d.ledger.running(spec.name, task.stream.status)
            gap_seconds = task.archive.gap_seconds()
            last_message_at = task.archive.last_written
            last_publish_at = task.archive.last_published
            keep = task.archive.coverage.open_gap is None
        else:
            status = self.status_of(spec)
            gap_seconds = status.gap_seconds
            last_message_at, last_publish_at = status.last_message_at, status.last_publish_at
            keep = False
        return StreamSample(
            name=spec.name,
            state=status.state.value,
            messages=status.messages,
            tweets=status.tweets,
            bytes=status.bytes,
            reconnects=status.reconnects,
            limit_undelivered=status.limit_undelivered,
            files_published=self._files_published(spec, runner),
            gap_seconds=gap_seconds,
            reconnects_planned=status.reconnects_planned,
            last_message_at=last_message_at,
            last_publish_at=last_publish_at,
        ), keep

    def _moved_sample(self, spec: StreamSpec, sample: StreamSample) -> StreamSample:
        """A kept sample whose stream took messages or rotated and changed nothing else
        since: its counters, files published and last message's and publish's moments read
        again, the rest as it was."""
        d = self.daemon
        runner = d.tasks.runners.get(spec.name)
        if runner is None:  # stopped meanwhile: its stop is the next page's change
            return self._sample(spec)[0]
        status = d.ledger.running(spec.name, runner.stream.status)
        archive = runner.archive
        return sample.moved_on(
            status.messages, status.tweets, status.bytes, self._files_published(spec, runner),
            archive.last_written, archive.last_published)

    def _files_published(self, spec: StreamSpec, runner: StreamRunner | None) -> int:
        """Files the stream published since the daemon started: its earlier runs' (the
        ledger's) and its running archive's, or its shared connection's."""
        d = self.daemon
        here = runner.archive.published if runner is not None else d.shared.published(spec)
        return d.ledger.published.get(spec.name, 0) + here

    def connections(self) -> Iterator[ConnectionSample]:
        for group in self.daemon.shared.groups.values():
            status = group.connection_status()
            yield ConnectionSample(
                name=status.name,
                messages=status.messages,
                unrouted=status.unrouted,
                errors=status.errors,
                reconnects=status.reconnects,
                rules=status.rules,
                reconnects_planned=status.reconnects_planned,
            )

    def status_line(self) -> str:
        """One line for systemd's STATUS, e.g. "12 streams: 11 streaming, 1 backoff"."""
        return describe_states(state.value for state, _ in self.states())

    def health(self) -> dict[str, Any]:
        """The daemon answers (`status` ok), and how its streams are: what a monitoring
        check needs in one call (`sfmctl health`)."""
        d = self.daemon
        specs = d.specs()
        states = self._states.now(specs)
        counts = Counter(map(_first, states))  # counted in C: thousands of streams
        failed = [
            {"name": spec.name, "last_error": error}
            for spec, (state, error) in zip(specs, states, strict=True)
            if state is State.FAILED
        ] if State.FAILED in counts else []
        return {
            "status": "ok",
            "streams": len(specs),
            "uptime": round(time.monotonic() - d.started, 3),
            "states": {state.value: n for state, n in counts.items()},
            "failed": failed,
        }


_first = operator.itemgetter(0)


#: Between a STREAM's settings (`StreamSpec.view_json_open`, encoded once per spec) and its
#: STATUS, and after the STATUS: kept on the STATUS's pieces (`StatusJson`) or written
#: around one encoded whole.
_STATUS_KEY = b',"status":'
_STREAM_END = b"}"


def _remote_status(state: str | None, since: datetime) -> StreamStatus:
    """A stream another host runs, as that host's last heartbeat said (its counters are
    that host's to show). Not listed there yet: it is being started (or taken over)."""
    known = state if state in STATES else State.CONNECTING.value
    return StreamStatus(state=State(known), since=since)
