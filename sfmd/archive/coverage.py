"""Coverage: when a stream was collecting and when it was not, and what it asked for.

Every manifest line says, for the span it covers, the gaps in it (`{"from", "to", "reason",
"refilled"}`) and the provenance (what was asked for, from where, through which credential,
by which host and sfmd). `Coverage` is one stream's record of both: its connection reports
each change (`up`, `down`, `asked`), and the archive asks for the part that falls within each
line it writes (`gaps_within`, `provenance_within`), then lets go of what is written
(`written_until`).

A gap runs from the moment the stream should have been collecting but was not, until it
streams again. The seconds a first connection takes are not a gap when it succeeds at once;
a first connection that fails is a gap from the start. A stream is not collecting while its
connection is down (`backoff` with the error, `rate_limited`), while it reconnects for a new
filter (`reconnect`), while it is stopped (`stopped`) or while no sfmd ran it
(`daemon_down`, dated from the dead process's last sign of life).

What is not yet in the manifest is kept in a journal beside it (`.coverage.jsonl`, one JSON
object per line, rewritten after every manifest line), so that a crash loses none of it: the
next start reads it back to describe the recovered file and the downtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sfmd import __version__
from sfmd.archive.manifest import cluster_keys
from sfmd.status import epoch_iso

JOURNAL_NAME = ".coverage.jsonl"
#: Each run's last sign of life, one file per process: `{data_dir}/.alive/{run}`.
ALIVE_DIR = ".alive"

#: Reasons a stream was not collecting.
STOPPED = "stopped"
DAEMON_DOWN = "daemon_down"
BACKOFF = "backoff"
RATE_LIMITED = "rate_limited"
RECONNECT = "reconnect"
EVENT_REFUSED = "event_refused"  # an instant: one event not stored (too large, not JSON)

HOST = socket.gethostname()
#: This process among every run that ever wrote to a data folder: its sign of life's name.
RUN = f"{HOST}-{os.getpid()}-{int(time.time())}"
#: Who writes: the same for every line of this process.
WRITER = {"host": HOST, "sfmd": __version__, "run": RUN}
#: Revisions of every coverage in this process (`Coverage.revision`): none is given twice.
_REVISIONS = itertools.count(1)


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Gap:
    """A span in which the stream was not collecting; `end` is None while it lasts."""

    start: float
    reason: str
    end: float | None = None
    error: str | None = None
    refilled: str = "none"  # "all", "some" or "none": what a source could fetch again
    unrecoverable: tuple[str, ...] = ()  # what no refill can fetch (Mastodon: deletes, edits)

    def clipped(self, a: float, b: float) -> dict[str, Any] | None:
        """The part of this gap within [a, b], as a manifest entry, or None."""
        start, end = max(self.start, a), min(self.end if self.end is not None else b, b)
        instant = self.end == self.start and a <= self.start <= b
        if end <= start and not instant:
            return None
        entry: dict[str, Any] = {
            "from": epoch_iso(start), "to": epoch_iso(end), "reason": self.reason}
        if self.error:
            entry["error"] = self.error
        entry["refilled"] = self.refilled
        if self.unrecoverable:
            entry["unrecoverable"] = list(self.unrecoverable)
        return entry

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "reason": self.reason,
                "error": self.error, "refilled": self.refilled,
                "unrecoverable": list(self.unrecoverable)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gap:
        return cls(float(data["start"]), str(data["reason"]),
                   None if data.get("end") is None else float(data["end"]),
                   data.get("error"), str(data.get("refilled", "none")),
                   tuple(map(str, data.get("unrecoverable") or ())))


@dataclass
class Asked:
    """What the stream asked for from `since` on: its provenance."""

    since: float
    what: dict[str, Any]


@dataclass
class Coverage:
    """One stream's gaps and provenance not yet written to its manifest."""

    journal: Path | None = None
    gaps: list[Gap] = field(default_factory=list)
    asked: list[Asked] = field(default_factory=list)
    started: bool = False  # has streamed at least once in this run
    seconds: dict[str, float] = field(default_factory=dict)  # gap time by reason, this run
    writer: dict[str, str] = field(default_factory=lambda: dict(WRITER))
    _last_closed: Gap | None = None  # the latest gap, kept for the status once written
    connected_since: float | None = None  # when the current streaming began, if it is on
    began: float | None = None  # where the run's first line begins (the journal keeps it)
    # The hash of what this object last wrote to the journal: a save that would write the
    # same text again is skipped. Most saves are after a publish that changed nothing the
    # journal holds, and each is a write and a rename on the event loop: at 5,000 streams
    # they were a fifth of the loop's time while the daemon stopped.
    _saved: int | None = field(default=None, repr=False, compare=False)
    # Changes with every change to the gaps a status shows (each is saved: `_save`), and
    # differs from every other coverage's: what a status shown from it was made of
    # (`Archive.shown_key`).
    revision: int = field(default_factory=lambda: next(_REVISIONS), repr=False, compare=False)
    # Called after every change a status shows (`Archive.watch`).
    notice: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    # -- what the connection reports ----------------------------------------------------------

    def up(self, t: float) -> None:
        """The stream is streaming from `t`: the open gap, if any, ends."""
        self.started = True
        if self.connected_since is None:
            self.connected_since = t
            self._noticed()
        gap = self.open_gap
        if gap is not None:
            gap.end = max(t, gap.start)
            self.seconds[gap.reason] = self.seconds.get(gap.reason, 0.0) + gap.end - gap.start
            self._save()

    def down(self, t: float, reason: str, error: str | None = None, *, since: float | None = None
             ) -> None:
        """The stream stopped collecting at `t` (or at `since`, for a first connection that
        failed). A gap already open keeps its start and first reason."""
        if self.connected_since is not None:
            self.connected_since = None
            self._noticed()
        if self.open_gap is not None:
            return
        self.gaps.append(Gap(since if since is not None and not self.started else t,
                             reason, error=error))
        self._save()

    def refill(self, refilled: str, unrecoverable: tuple[str, ...] = ()) -> None:
        """The source fetched again what the latest gap missed: "all", "some" or "none";
        `unrecoverable` names what it cannot fetch at all."""
        closed = [g for g in self.gaps if g.end is not None and g.end > g.start]
        if closed:
            closed[-1].refilled = refilled
            closed[-1].unrecoverable = unrecoverable
            self._save()

    def instant(self, t: float, reason: str, error: str) -> None:
        """Something not stored at one moment (an event refused): a gap of no length."""
        self.gaps.append(Gap(t, reason, end=t, error=error))
        self._save()

    def asked_for(self, t: float, what: dict[str, Any]) -> None:
        """The stream asks for `what` from `t` on (a connection, a changed filter)."""
        if self.asked and self.asked[-1].what == what:
            return
        self.asked.append(Asked(t, what))
        self._save()

    @property
    def open_gap(self) -> Gap | None:
        # A plain loop: every status asks (GET /streams, /metrics), and a generator's setup
        # cost 3 µs a call, 10 % of the loop under the control API's load at 5,000 streams.
        for gap in reversed(self.gaps):
            if gap.end is None:
                return gap
        return None

    @property
    def last_gap(self) -> Gap | None:
        """The latest gap, open or closed, written to the manifest or not."""
        return self.gaps[-1] if self.gaps else self._last_closed

    def gap_seconds(self, now: float) -> dict[str, float]:
        """Seconds not collecting in this run, by reason, the open gap's so far included."""
        seconds = dict(self.seconds)
        gap = self.open_gap
        if gap is not None:
            seconds[gap.reason] = seconds.get(gap.reason, 0.0) + max(0.0, now - gap.start)
        return seconds

    def shown(self, now: float) -> dict[str, Any]:
        """What a stream's status says of its coverage: since when it streams, its last gap
        (`to` is null while it lasts), and the seconds of gaps by reason."""
        gap = self.last_gap
        last = None
        if gap is not None:
            last = {"from": epoch_iso(gap.start),
                    "to": epoch_iso(gap.end) if gap.end else None,
                    "reason": gap.reason, "error": gap.error, "refilled": gap.refilled}
            if gap.unrecoverable:
                last["unrecoverable"] = list(gap.unrecoverable)
        return {
            "connected_since": self.connected_since,
            "last_gap": last,
            "gap_seconds": self.gap_seconds(now),
        }

    # -- what the archive asks ----------------------------------------------------------------

    def gaps_within(self, a: float, b: float) -> list[dict[str, Any]]:
        return [entry for gap in self.gaps if (entry := gap.clipped(a, b)) is not None]

    def provenance_within(self, a: float, b: float) -> dict[str, Any]:
        """Who wrote the line, and the requests in effect during [a, b], each with when it
        began (a filter changed within the span shows both sets)."""
        sets = [s for i, s in enumerate(self.asked)
                if s.since <= b and (i + 1 == len(self.asked) or self.asked[i + 1].since > a)]
        requests = [{"since": epoch_iso(max(s.since, a)), **s.what} for s in sets]
        return {**self.writer, "requests": requests}

    def written_until(self, t: float) -> None:
        """Lines up to `t` are in the manifest: forget what ends before it. What a status
        shows stays as it was (the last gap is kept aside), so nobody is told of a change:
        every stream publishes at the same boundary, and each telling made the API's pages
        encode that stream's STATUS whole again."""
        shown = self.last_gap
        if self.gaps:
            self._last_closed = self.gaps[-1]
        self.gaps = [g for g in self.gaps if g.end is None or g.end > t]
        keep = [i for i, s in enumerate(self.asked) if s.since >= t]
        first = (keep[0] - 1) if keep else len(self.asked) - 1
        self.asked = self.asked[max(first, 0):]
        self._save(told=self.last_gap is not shown)

    # -- the journal --------------------------------------------------------------------------

    def _noticed(self) -> None:
        if self.notice is not None:
            self.notice()

    def _save(self, *, told: bool = True) -> None:
        """Rewrite the journal (write and rename; a crash keeps the old or the new one).
        `told`: what a status shows changed too (a new revision, and the notice)."""
        if told:
            self.revision = next(_REVISIONS)
            self._noticed()
        if self.journal is None:
            return
        lines = [json.dumps({"writer": self.writer, "began": self.began})]
        lines += [json.dumps({"gap": g.to_json()}) for g in self.gaps]
        lines += [json.dumps({"asked": {"since": s.since, "what": s.what}}) for s in self.asked]
        text = "".join(line + "\n" for line in lines)
        digest = hash(text)
        if digest == self._saved:
            return
        tmp = self.journal.with_name(self.journal.name + ".tmp")
        with contextlib.suppress(OSError):  # coverage is best effort: never stop the stream
            tmp.write_text(text)
            os.replace(tmp, self.journal)
            self._saved = digest

    @classmethod
    def load(cls, journal: Path) -> Coverage:
        """The journal a run left; entries that do not parse are skipped."""
        coverage = cls(journal)
        try:
            text = journal.read_text()
        except OSError:
            return coverage
        for line in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                entry = json.loads(line)
                if "writer" in entry:
                    coverage.writer = {str(k): str(v) for k, v in entry["writer"].items()}
                    began = entry.get("began")
                    coverage.began = float(began) if began is not None else None
                elif "gap" in entry:
                    coverage.gaps.append(Gap.from_json(entry["gap"]))
                elif "asked" in entry:
                    asked = entry["asked"]
                    coverage.asked.append(Asked(float(asked["since"]), dict(asked["what"])))
        return coverage


@dataclass(frozen=True)
class CoverageLine:
    """A manifest line for a span with nothing stored (`"file": null`): a quiet interval, or
    time the stream was stopped or no sfmd ran it."""

    start: float
    end: float
    gaps: list[dict[str, Any]]
    provenance: dict[str, Any]
    closed: bool = False

    def manifest_line(self) -> bytes:
        entry: dict[str, Any] = {
            "file": None,
            "start": epoch_iso(self.start),
            "end": epoch_iso(self.end),
            "messages": 0,
            "tweets": 0,
            "bytes": 0,
            "sha256": None,
            "gaps": self.gaps,
            "provenance": self.provenance,
            **cluster_keys(self.provenance),
        }
        if self.closed:
            entry["closed"] = True
        return json.dumps(entry).encode() + b"\n"


def alive_path(data_dir: Path, run: str) -> Path:
    return data_dir / ALIVE_DIR / run


def last_alive(data_dir: Path, run: str) -> float | None:
    """When the run last showed it was alive, from its file's content."""
    try:
        return float(alive_path(data_dir, run).read_text())
    except (OSError, ValueError):
        return None


def mark_alive(data_dir: Path, run: str, t: float) -> None:
    """Record that the run is alive at `t` (write and rename; no fsync: a lost update only
    makes a crash look a little earlier)."""
    path = alive_path(data_dir, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(repr(t))
    os.replace(tmp, path)


async def keep_alive(data_dir: Path, every: float) -> None:
    """Mark this run alive every `every` seconds until cancelled, then remove its mark (a run
    that stops cleanly says so in its manifest lines instead)."""
    try:
        while True:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(mark_alive, data_dir, RUN, time.time())
            await asyncio.sleep(every)
    finally:
        with contextlib.suppress(OSError):
            alive_path(data_dir, RUN).unlink()
        with contextlib.suppress(OSError):  # only when no other run left its mark there
            alive_path(data_dir, RUN).parent.rmdir()
