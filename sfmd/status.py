"""The one status vocabulary: a stream's states and counters, as every part of sfmd shows them.

The control API's STATUS, `/metrics`, `sfmctl`, systemd's STATUS line, the OpenAPI document
and the supervisord back end all take their state names from `State`, and the task and
shared back ends keep their counters in a `StreamStatus`. Nothing else here: this module
imports nothing from sfmd, so anything may import it.
"""

from __future__ import annotations

import enum
import functools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple


class State(enum.Enum):
    STOPPED = "stopped"  # not running: set inactive, or not started yet
    CONNECTING = "connecting"  # opening a connection (or a process is starting)
    STREAMING = "streaming"  # connected, messages are stored as they come
    BACKOFF = "backoff"  # waiting before the next attempt, after a failure
    FAILED = "failed"  # should run but cannot until a person acts; `last_error` says why


#: Every state's name, in the order the API documents them.
STATES = tuple(state.value for state in State)
#: States a person should look at: a stream that should collect and does not.
TROUBLED = (State.FAILED.value, State.BACKOFF.value)
#: States with no connection, so no message rate.
IDLE = (State.STOPPED.value, State.FAILED.value)
#: The order states appear in a one-line summary: the healthy case first.
SUMMARY_ORDER = ("streaming", "connecting", "backoff", "failed", "stopped")
#: The keys every STATUS object has, in their order (`StreamStatus.to_dict`).
STATUS_KEYS = (
    "state", "since", "messages", "tweets", "bytes", "reconnects", "last_error", "current_file",
    "connected_since", "last_gap", "down_since", "next_attempt", "reconnects_after_failure",
    "reconnects_planned", "last_message_at", "last_publish_at",
)


#: The counters a message moves on (`StreamStatus.watch` tells them apart).
MOVED = frozenset({"messages", "tweets", "bytes"})

#: The running totals a stream keeps across its stops and starts within one daemon's life
#: (`StreamStatus.plus`): they start from 0 only when the daemon starts.
COUNTERS = ("messages", "tweets", "bytes", "reconnects", "reconnects_planned", "limit_undelivered")


@functools.lru_cache(maxsize=16384)
def utc_moment(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime; cached like `iso_z`, for the moments a
    stream's status reads again and again (when its current streaming began)."""
    return datetime.fromtimestamp(epoch, UTC)


def _coverage_fields(shown: dict[str, Any]) -> dict[str, Any]:
    """An archive's coverage and open file (`Archive.coverage_shown`) as the status fields
    they set: what `covered` copies in and `to_dict(coverage)` shows."""
    since = shown["connected_since"]
    return {
        "connected_since": utc_moment(since) if since is not None else None,
        "last_gap": shown["last_gap"],
        "gap_seconds": shown["gap_seconds"],
        "last_message_at": shown.get("last_message_at"),
        "last_publish_at": shown.get("last_publish_at"),
        "current_file": shown.get("current_file"),
    }


@functools.lru_cache(maxsize=16384)
def iso_z(moment: datetime) -> str:
    """A moment as the API shows it (ISO 8601, UTC, with Z); cached because GET /streams
    shows every stream's `since` and `connected_since`, which change only with its state.
    The cache holds both for 5,000 streams and more: GET /streams reads them in the same
    order each time, so a cache smaller than what one pass reads misses on every entry."""
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class ConnectionStatus:
    """A shared connection's own state and counters, shown in each member's STATUS."""

    name: str
    state: State
    messages: int
    unrouted: int  # messages no member wanted
    errors: int  # error objects the network sent in the stream
    reconnects: int
    rules: int  # what the connection holds at the network for its members
    foreign_rules: list[dict[str, str]]  # held at the network, owned by no sfmd stream
    rules_problem: str | None  # why the network's rules are not what the members want
    reconnects_planned: int = 0  # of `reconnects`, those sfmd chose (none yet: rules change live)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "messages": self.messages,
            "unrouted": self.unrouted,
            "errors": self.errors,
            "reconnects": self.reconnects,
            "reconnects_after_failure": self.reconnects - self.reconnects_planned,
            "reconnects_planned": self.reconnects_planned,
            "rules": self.rules,
            "foreign_rules": self.foreign_rules,
            "rules_problem": self.rules_problem,
        }


@dataclass
class StreamStatus:
    """One stream's state and counters since this daemon started it: what every back end
    reports, and the API's STATUS object once encoded (`to_dict`)."""

    state: State = State.STOPPED
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    messages: int = 0
    tweets: int = 0
    bytes: int = 0
    reconnects: int = 0
    last_error: str | None = None
    current_file: str | None = None
    limit_undelivered: int = 0  # undelivered tweets Twitter reported in limit notices
    connection: ConnectionStatus | None = None  # a member of a shared connection: that one
    process: dict[str, Any] | None = None  # a supervisord program: supervisord's word on it
    connected_since: datetime | None = None  # when the current streaming began
    last_gap: dict[str, Any] | None = None  # the latest span it was not collecting
    gap_seconds: dict[str, float] = field(default_factory=dict)  # by reason, this run
    # When the current outage began: the first failure since it last streamed (or since it
    # started, if it has not streamed yet). Kept across retries, so `backoff` shows how long
    # the stream has been down, not how long since its latest attempt; None while streaming.
    down_since: datetime | None = None
    next_attempt: datetime | None = None  # in backoff: when the next connection attempt is due
    # Of `reconnects`, those sfmd chose (a new filter); the rest followed a failure.
    reconnects_planned: int = 0
    last_message_at: float | None = None  # epoch seconds of the last message its archive took
    last_publish_at: float | None = None  # epoch seconds of its last published file

    # What this status calls whenever a field is set (`watch`): a running task stream's
    # status tells the API's kept views that it changed (`sfmd.changes`). Not fields: copies
    # (`replaced`, `dataclasses.replace`) are not watched.
    _notice: ClassVar[Callable[[], None] | None] = None
    _moved: ClassVar[Callable[[], None] | None] = None

    def __post_init__(self) -> None:
        # Every status has both from the start, unwatched: attributes added to some objects
        # only (by `watch`) cost each of them a dict of its own, 640 bytes more a stream.
        object.__setattr__(self, "_notice", None)
        object.__setattr__(self, "_moved", None)

    def __setattr__(self, key: str, value: Any) -> None:
        # Through object's own setattr, not `__dict__`: reading `__dict__` makes every
        # status hold a dict of its own instead of CPython's compact attribute values.
        object.__setattr__(self, key, value)
        notice = self._notice
        if notice is not None:
            (self._moved if key in MOVED else notice)()  # type: ignore[misc]

    def watch(self, notice: Callable[[], None], moved: Callable[[], None] | None = None) -> None:
        """Call `notice` after every change of this status from now on, or `moved` (if
        given) when the change is to one of the `MOVED` counters."""
        object.__setattr__(self, "_notice", notice)
        object.__setattr__(self, "_moved", moved or notice)

    @property
    def reconnects_after_failure(self) -> int:
        """Reconnects that followed a failure (a lost, refused or stalled connection)."""
        return max(0, self.reconnects - self.reconnects_planned)

    def replaced(self, **changes: Any) -> StreamStatus:
        """A copy with `changes`, as `dataclasses.replace` makes it but without running
        `__init__` again: GET /streams, /health and /metrics copy every stream's status two
        or three times a call, and at 5,000 streams `replace` alone took several ms of the
        event loop each time. Unchanged fields are shared, as `replace` shares them."""
        if not changes.keys() <= self.__dict__.keys():
            unknown = sorted(changes.keys() - self.__dict__.keys())
            raise TypeError(f"StreamStatus has no field {unknown[0]!r}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        new.__dict__["_notice"] = new.__dict__["_moved"] = None  # a copy: nobody watches it
        return new

    def covered(self, shown: dict[str, Any], **changes: Any) -> StreamStatus:
        """This status with an archive's coverage and open file (`Archive.coverage_shown`)
        and any other `changes`, in one copy (`to_dict(shown)` shows the same without it)."""
        return self.replaced(**_coverage_fields(shown), **changes)

    def plus(self, earlier: StreamStatus | None) -> StreamStatus:
        """This status with the `COUNTERS` of the stream's earlier runs added (a copy)."""
        if earlier is None:
            return self
        return self.replaced(
            **{key: getattr(self, key) + getattr(earlier, key) for key in COUNTERS}
        )

    def to_dict(self, coverage: dict[str, Any] | None = None) -> dict[str, Any]:
        """The API's STATUS object. With `coverage` (`Archive.coverage_shown`), what
        `covered(coverage).to_dict()` gives, without the copy: GET /streams shows every
        stream, and the copy was a quarter of the work."""
        f = self.__dict__ if coverage is None else _coverage_fields(coverage)
        connected, last_gap, current_file = f["connected_since"], f["last_gap"], f["current_file"]
        last_message_at, last_publish_at = f["last_message_at"], f["last_publish_at"]
        shown: dict[str, Any] = {
            "state": self.state.value,
            "since": iso_z(self.since),
            "messages": self.messages,
            "tweets": self.tweets,
            "bytes": self.bytes,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "current_file": current_file,
            "connected_since": iso_z(connected) if connected else None,
            "last_gap": last_gap,
            "down_since": iso_z(self.down_since) if self.down_since else None,
            "next_attempt": iso_z(self.next_attempt) if self.next_attempt else None,
            "reconnects_after_failure": self.reconnects_after_failure,
            "reconnects_planned": self.reconnects_planned,
            "last_message_at": epoch_iso(last_message_at)
            if last_message_at is not None else None,
            "last_publish_at": epoch_iso(last_publish_at)
            if last_publish_at is not None else None,
        }
        if self.connection is not None:
            shown["connection"] = self.connection.to_dict()
        if self.process is not None:
            shown["process"] = self.process
        return shown

    @classmethod
    def from_dict(cls, shown: dict[str, Any]) -> StreamStatus:
        """A STATUS object read back (a process-isolated stream's status file); anything
        unreadable in it counts as nothing reported."""

        def count(key: str) -> int:
            value = shown.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        def text(key: str) -> str | None:
            value = shown.get(key)
            return value if isinstance(value, str) else None

        try:
            state = State(shown.get("state"))
        except ValueError:
            state = State.STOPPED
        try:
            since = datetime.fromisoformat(str(shown.get("since")).replace("Z", "+00:00"))
        except ValueError:
            since = datetime.now(UTC)
        def moment(key: str) -> datetime | None:
            value = text(key)
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
            except ValueError:
                return None

        def epoch(key: str) -> float | None:
            value = moment(key)
            return value.timestamp() if value is not None else None

        last_gap = shown.get("last_gap")
        return cls(
            state=state, since=since, messages=count("messages"), tweets=count("tweets"),
            bytes=count("bytes"), reconnects=count("reconnects"),
            last_error=text("last_error"), current_file=text("current_file"),
            connected_since=moment("connected_since"),
            last_gap=last_gap if isinstance(last_gap, dict) else None,
            down_since=moment("down_since"), next_attempt=moment("next_attempt"),
            reconnects_planned=count("reconnects_planned"),
            last_message_at=epoch("last_message_at"), last_publish_at=epoch("last_publish_at"),
        )


def epoch_iso(moment: float) -> str:
    """Epoch seconds as sfmd shows moments: ISO 8601 in UTC to the millisecond, with Z, as
    `datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")` writes it.

    GET /streams shows two such moments for every stream, and they move with every message,
    so they cannot be cached whole; the seconds can (every stream's last message is in the
    same few seconds), and the thousand ways to end one are written once (`_MILLIS`): a
    format spec such as `03d` cost 0.4 µs a moment, a third of the whole."""
    # Rounded to the microsecond as datetime rounds (half to even), then cut to the ms.
    fraction, whole = math.modf(moment)
    micro = round(fraction * 1_000_000)
    second = int(whole)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    elif micro < 0:
        second, micro = second - 1, micro + 1_000_000
    return _second_iso(second) + _MILLIS[micro // 1000]


#: How a moment ends, by its millisecond: ".000Z" to ".999Z".
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


@functools.lru_cache(maxsize=1024)
def _second_iso(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]


class StreamSample(NamedTuple):
    """One stream's numbers at scrape time (a tuple: 1,000 are made per scrape)."""

    name: str
    state: str
    messages: int
    tweets: int
    bytes: int
    reconnects: int
    limit_undelivered: int
    files_published: int
    gap_seconds: dict[str, float] = {}  # by reason; never mutated: each sample has its own
    reconnects_planned: int = 0  # of `reconnects`
    last_message_at: float | None = None  # epoch seconds
    last_publish_at: float | None = None  # epoch seconds

    def moved_on(
        self, messages: int, tweets: int, size: int, files_published: int,
        last_message_at: float | None, last_publish_at: float | None,
    ) -> StreamSample:
        """This sample with what a message or a rotation moves on (`SAMPLE_MOVING`)
        replaced: `_replace`'s result at a third of its cost (a page moves thousands)."""
        name, state, _, _, _, reconnects, limit, _, gaps, planned, _, _ = self
        return _new_tuple(StreamSample, (
            name, state, messages, tweets, size, reconnects, limit, files_published, gaps,
            planned, last_message_at, last_publish_at))


_new_tuple = tuple.__new__
#: The fields of a `StreamSample` that a message or a rotation moves on (`moved_on`'s).
SAMPLE_MOVING = (
    "messages", "tweets", "bytes", "files_published", "last_message_at", "last_publish_at",
)  # fmt: skip


@dataclass(frozen=True)
class ConnectionSample:
    """A shared v2 filter connection's numbers (its streams' are StreamSamples)."""

    name: str
    messages: int
    unrouted: int
    errors: int
    reconnects: int
    rules: int
    reconnects_planned: int = 0  # of `reconnects`


def describe_states(states: Iterable[str]) -> str:
    """A status line such as "12 streams: 11 streaming, 1 backoff" (busiest state first)."""
    counts = Counter(states)
    total = sum(counts.values())
    head = f"{total} stream" + ("" if total == 1 else "s")
    if not total:
        return head
    known = [s for s in SUMMARY_ORDER if counts[s]]
    other = sorted(s for s in counts if s not in SUMMARY_ORDER)
    return head + ": " + ", ".join(f"{counts[s]} {s}" for s in known + other)
