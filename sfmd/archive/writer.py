"""One stream's archive: interval files that are safe to read the moment they carry a final name.

The event loop only appends messages to an in-memory queue. One writer task per archive owns
every file of the stream and hands one batch at a time to a worker thread (compression,
writes, sha256 and fsync release the GIL), so a busy stream never stalls the loop and the
bytes land in exactly the order they were given.

Files rotate on UTC boundaries of `save_interval`, driven by the clock rather than by arriving
data, so a quiet stream's file is still published on time. How a file is written and
published is in `partfile`; how leftovers are read back is in `recovery`. Each stream
publishes at its own moment within `publish_spread` seconds after the boundary (1,000
streams publishing in one instant stall the event loop); messages for the new interval go to
the new file meanwhile.

What a crash can cost:

* SIGKILL: only what sat in our memory: at most `flush_interval` seconds of messages (plus
  the one batch being handed to the OS). Everything already handed to the OS is in the
  `.part`, which the next `open()` cuts back to its last complete line and publishes.
* Power loss: also what the OS had not yet put on disk; a `.part` is fsynced every
  `fsync_interval` seconds and a published file always is.

A failing disk (ENOSPC, EIO...) never publishes a torn file: the `.part` is cut back to its
last whole batch and left for recovery, the unwritten batch is kept in memory and retried
every `flush_interval` into a fresh `.part` (the next free `.N` name), and `write()` raises
`ArchiveError`, refusing new messages, until a retry succeeds. Left-over `.part` files are
published at the next successful rotation, at `close()`, or at the next `open()`.

Intervals never go backwards: if the wall clock steps back, messages keep going to the open
file until the clock passes its boundary again; a step forward is noticed within a few
seconds. One archive at a time holds a stream's folder (an flock), so two processes can never
write, or "recover", each other's open files.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import fcntl
import functools
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import structlog
import structlog.typing

from sfmd.archive import coverage as cov
from sfmd.archive.coverage import Coverage, CoverageLine
from sfmd.archive.deflate import Deflate
from sfmd.archive.disk import _makedirs_durable
from sfmd.archive.errors import ArchiveError
from sfmd.archive.flag import Flag
from sfmd.archive.manifest import (
    MANIFEST_NAME,
    ManifestLine,
    PublishedFile,
    append_manifest,
    last_entry,
)
from sfmd.archive.naming import interval_start, iso_utc, spread_offset
from sfmd.archive.partfile import Described, _complete, _PartFile
from sfmd.archive.recovery import CountItems, _leftovers, _unrecorded, recover_part
from sfmd.archive.tick import SharedTick, Work, tick_at
from sfmd.archive.tick import for_loop as shared_tick
from sfmd.archive.workers import Workers

#: Archive I/O has threads of its own. At a rotation boundary every stream publishes at once
#: (finish, fsync, rename); on the loop's default pool that queue would delay everything else
#: the daemon does in threads, registry writes behind API answers included.
_POOL = Workers(8, "archive")
_io = _POOL.run
#: The shared tick's trips (quiet streams' batches, see `tick`) have a thread of their own:
#: on `_POOL` they would queue behind a boundary's thousands of publishes (three fsyncs
#: each), and a batch not yet written when a SIGKILL comes is lost: what a kill can take must
#: stay within `flush_interval` at a boundary too.
_TICK_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-tick")

#: What a sleeping writer's timer runs in (`Archive._alarm`).
_ALARM_CONTEXT = contextvars.Context()


def _lock_directory(stream_dir: Path) -> tuple[int, OSError | None]:
    """Hold an exclusive flock on the stream's folder: one archive per stream, across processes.

    Returns the fd to keep open, and the error if this filesystem cannot lock (we then carry
    on unlocked). Raises ArchiveError if another archive holds the lock.
    """
    _makedirs_durable(stream_dir)
    fd = os.open(stream_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ArchiveError(
            f"{stream_dir} is in use by another archive (is another sfmd running this stream?)"
        ) from None
    except OSError as exc:
        return fd, exc
    return fd, None


class _Segment:
    """Messages of one interval waiting to be written: the unit handed to the worker thread."""

    __slots__ = ("_payload", "bytes", "count", "lines", "mark", "since", "start", "tweets")

    def __init__(self, start: int, since: float) -> None:
        self.start = start
        self.since = since  # loop time of its first message: the flush deadline counts from it
        self.lines: list[bytes] = []
        self.count = 0
        self.tweets = 0
        self.bytes = 0
        self.mark: str | None = None  # the source's resume point after its last message
        self._payload: bytes | None = None

    @property
    def unwritten(self) -> bool:
        """Never handed to the worker (a retried batch keeps its joined bytes as they were)."""
        return self._payload is None

    def merge(self, other: _Segment) -> None:
        self.lines.extend(other.lines)
        self.count += other.count
        self.tweets += other.tweets
        self.bytes += other.bytes
        if other.mark is not None:
            self.mark = other.mark

    def payload(self) -> bytes:
        """The bytes to write; joined once (in the worker thread) and kept for a retry."""
        if self._payload is None:
            self.lines.append(b"")
            self._payload = b"\n".join(self.lines)
            self.lines = []
        return self._payload


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Fence(Protocol):
    """The right to write a stream's files, where another host may take it over (cluster
    mode: the lease on the stream's connection). `valid()` is asked before every write; the
    host and epoch are written into each manifest line's provenance."""

    host: str
    epoch: int

    def valid(self) -> bool: ...


def _unwatched() -> None:
    """An archive's notice while nothing watches it (`Archive.watch`)."""


def _wall_clock() -> float:
    return time.time()  # looked up at each call, so a test may move the clock


class Archive:
    """The files of one stream. Not thread-safe: use it from one event loop.

    `write()` returns once the messages are queued in memory; they reach the OS within
    `flush_interval` seconds (sooner when a batch fills up), so a SIGKILL loses at most that
    much. `on_publish` is called, on the loop, for every file this archive publishes,
    recovered leftovers included.

    `count` tells how many of a list of lines are content items (the manifest's `tweets`)
    when a file is read back: a leftover `.part`, or a published file the manifest misses;
    `write()` is given that number by its caller instead. Give the function the stream
    counts its own messages with, so that a recovered file is described as the same file
    published whole would have been.

    Tuning: `fsync_interval` bounds what a power loss can take from an open file;
    `batch_bytes` is the batch size that triggers a write before the flush deadline;
    `write()` waits while `max_pending_bytes` are queued or in flight; `clock` replaces
    `time.time` (tests move it across boundaries).

    Cluster mode adds three things. `fence`: once it is no longer valid, `write()` drops
    what it is given (another host holds the connection now; what was queued before is
    still written). `mark()`: the source's resume point after the messages written so far,
    and `durable_mark` the newest one whose messages are in the file (what another host may
    resume from). `on_manifest`: called with every manifest line once it is appended.
    """

    # Slots: an archive has about fifty attributes, past what an instance's shared-key dict
    # holds, and its own dict cost about 1.5 KB a stream. `__dict__` stays for anything
    # added later without a slot.
    __slots__ = (
        "__dict__",
        "_batch_bytes",
        "_clock",
        "_close_error",
        "_close_result",
        "_closing",
        "_compress",
        "_count",
        "_covered",
        "_deflate",
        "_error",
        "_fenced",
        "_flush_interval",
        "_fsync_interval",
        "_inflight",
        "_inflight_bytes",
        "_last_start",
        "_lock_fd",
        "_log",
        "_max_batch",
        "_max_pending",
        "_max_sleep",
        "_moved",
        "_on_manifest",
        "_on_publish",
        "_opened",
        "_orphans",
        "_part",
        "_pending",
        "_pending_bytes",
        "_progress",
        "_publish_delay",
        "_retiring",
        "_retry_at",
        "_retry_interval",
        "_save_interval",
        "_shared",
        "_shared_failure",
        "_shared_waiter",
        "_sleep_until",
        "_sleep_until_wall",
        "_state",
        "_stepping",
        "_tick",
        "_tick_at",
        "_timer",
        "_unrecorded",
        "_wake",
        "_writer",
        "coverage",
        "current_file",
        "data_dir",
        "durable_mark",
        "fence",
        "last_published",
        "last_written",
        "manifest",
        "name",
        "published",
        "stream_dir",
    )

    def __init__(
        self,
        data_dir: Path,
        name: str,
        *,
        save_interval: int,
        compress: bool,
        count: CountItems,
        compress_level: int = 6,
        compress_window: int = 12,
        flush_interval: float = 1.0,
        log: structlog.typing.FilteringBoundLogger | None = None,
        on_publish: Callable[[PublishedFile], None] | None = None,
        fsync_interval: float = 60.0,
        batch_bytes: int = 1 << 20,
        max_pending_bytes: int = 8 << 20,
        publish_spread: float = 0.0,
        clock: Callable[[], float] | None = None,
        fence: Fence | None = None,
        on_manifest: Callable[[bytes], None] | None = None,
    ) -> None:
        if not isinstance(save_interval, int) or save_interval < 1:
            raise ValueError("save_interval must be a whole number of seconds, at least 1")
        if flush_interval <= 0 or fsync_interval <= 0 or batch_bytes < 1:
            raise ValueError("flush_interval, fsync_interval and batch_bytes must be positive")
        # The daemon's own Path when it gives one (every archive shares it), not a copy each.
        self.data_dir = data_dir if isinstance(data_dir, Path) else Path(data_dir)
        self.name = name
        self.stream_dir = self.data_dir / name
        self.manifest = self.stream_dir / MANIFEST_NAME
        self.current_file: Path | None = None
        self.published = 0
        # Epoch seconds of the last message taken and of the last file published, for the
        # status and /metrics: what an alert on a silent stall compares with the clock.
        self.last_written: float | None = None
        self.last_published: float | None = None
        self._moved: Callable[[], None] = _unwatched  # `watch`
        self._save_interval = save_interval
        self._compress = compress
        self._deflate = Deflate(compress_level, compress_window)
        self._count = count
        self._flush_interval = flush_interval
        self._retry_interval = max(flush_interval, 0.1)
        self._fsync_interval = fsync_interval
        self._batch_bytes = batch_bytes
        self._max_pending = max(max_pending_bytes, batch_bytes)
        # Half: while one batch is with the worker, the stream can queue the next one.
        self._max_batch = max(batch_bytes, self._max_pending // 2)
        # How often a sleeping writer's timer reads the wall clock, so that a clock that
        # jumps ahead is noticed soon (`_alarm`).
        self._max_sleep = min(5.0, max(0.05, save_interval / 4))
        self._timer: asyncio.TimerHandle | None = None  # the sleeping writer's (`_alarm`)
        # When the sleeping writer is next due: loop time, and the wall clock's reading then
        # (None when no file is open: then no jump matters).
        self._sleep_until = 0.0
        self._sleep_until_wall: float | None = None
        self._publish_delay = spread_offset(name, min(publish_spread, save_interval / 10))
        self._clock = clock or _wall_clock
        # A `log` given is the stream's own, bound to its name already (not bound again:
        # a bound copy per archive is memory every stream pays).
        self._log = log if log is not None else structlog.get_logger().bind(stream=name)
        self._on_publish = on_publish
        self.fence = fence
        self._fenced = False  # the fence failed: logged once, every write since dropped
        self._on_manifest = on_manifest
        #: The newest `mark()` whose messages are written to the file.
        self.durable_mark: str | None = None
        self._inflight: _Segment | None = None  # taken from the queue, being written

        self._state = _State.NEW
        self._lock_fd: int | None = None
        # A list, not a deque: it holds a batch or two, and an empty deque is 624 bytes.
        self._pending: list[_Segment] = []
        self._pending_bytes = 0
        self._inflight_bytes = 0
        self._last_start = 0  # intervals never go backwards, even if the clock does
        self._part: _PartFile | None = None
        # A file whose interval is over, set aside when a message for the next interval came
        # before this stream's turn in the publish spread; published at that turn.
        self._retiring: _PartFile | None = None
        self._orphans: list[Path] = []  # closed `.part` files left by a failure, to publish later
        self._unrecorded: list[ManifestLine] = []  # published, manifest line not yet written
        self.coverage = Coverage(self.stream_dir / cov.JOURNAL_NAME)
        if fence is not None:  # the cluster's host name and the lease's epoch
            self.coverage.writer = {**self.coverage.writer, "host": fence.host,
                                    "epoch": fence.epoch}
        # Where the manifest's lines end: the next line starts here (None: no line yet).
        self._covered: float | None = None
        self._opened = 0.0  # when this run's open() began
        self._error: ArchiveError | None = None
        self._retry_at = 0.0
        self._closing = False
        self._close_result: PublishedFile | None = None
        self._close_error: ArchiveError | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wake = Flag()  # the writer task sleeps on it
        self._progress = Flag()  # a write() held back by backpressure waits on it
        # The shared tick (`tick`): when this archive is due at it, the batch handed over
        # (resolved when written), what the disk said, and whether the writer task is busy
        # (the two never touch a file at the same time).
        self._tick: SharedTick | None = None  # this loop's, found once
        self._tick_at: float | None = None
        self._shared: tuple[_PartFile, _Segment] | None = None  # a batch the tick writes
        # Made only when the writer task must wait for that batch: a future per batch was a
        # tenth of the tick's work at 5,000 streams.
        self._shared_waiter: asyncio.Future[None] | None = None
        self._shared_failure: tuple[_PartFile, BaseException] | None = None
        self._stepping = False

    # -- public ------------------------------------------------------------------------------

    async def open(self) -> list[PublishedFile]:
        """Publish what a crash left behind, then start writing and rotating."""
        if self._state is not _State.NEW:
            raise ArchiveError(f"the archive of stream {self.name!r} was already opened")
        try:
            return await self._open()
        except BaseException:
            self._release_lock()
            raise

    async def _open(self) -> list[PublishedFile]:
        self._opened = self._clock()
        try:
            self._lock_fd, lock_error = await _io(_lock_directory, self.stream_dir)
            if lock_error is not None:
                self._log.warning(
                    "archive_unlocked", dir=str(self.stream_dir), error=str(lock_error)
                )
            parts, unknown = await _io(_leftovers, self.stream_dir, self.name)
        except OSError as exc:
            raise self._failure("open", self.stream_dir, exc) from exc
        for path in unknown:
            self._log.warning("unknown_leftover", file=self._rel(path))
        last, before = await _io(_previous_run, self.manifest, self.coverage.journal)
        recovered = [
            f for part in parts if (f := await self._recover(part, before)) is not None
        ]
        try:
            missing = await _io(_unrecorded, self.data_dir, self.stream_dir, self.name, self._count)
        except OSError as exc:
            self._log.error("manifest_reconcile_failed", error=str(exc))
            missing = []
        owed = {f.relpath for f in self._unrecorded if isinstance(f, PublishedFile)}
        missing = [self._described(f, before) for f in missing if f.relpath not in owed]
        if missing:
            await self._record(missing, "recovered", reason="no manifest line")
        self._resume(last, before, recovered + missing)
        self._state = _State.OPEN
        self._writer = asyncio.create_task(self._run(), name=f"archive-{self.name}")
        return recovered + missing

    async def write(self, messages: list[bytes], tweets: int) -> None:
        """Queue messages (without line ends) for the current interval's file.

        Waits while too much is pending (backpressure). Raises ArchiveError, without taking
        the messages, when closed or while the disk refuses earlier messages.
        """
        self._check_writable()
        if not messages:
            return
        if self.fenced:
            self._refuse_fenced(len(messages))
            return
        while self._pending_bytes + self._inflight_bytes >= self._max_pending:
            self._wake.set()
            await self._progress.wait()
            self._check_writable()
        now = self.last_written = self._clock()
        self._moved()
        start = max(interval_start(now, self._save_interval), self._last_start)
        self._last_start = start
        size = sum(map(len, messages)) + len(messages)
        segment = self._pending[-1] if self._pending else None
        fresh = (
            segment is None
            or segment.start != start
            or segment.bytes >= self._batch_bytes
            or not segment.unwritten  # its bytes were already joined for a retry
        )
        if fresh:
            segment = _Segment(start, asyncio.get_running_loop().time())
            self._pending.append(segment)
        assert segment is not None
        segment.lines.extend(messages)
        segment.count += len(messages)
        segment.tweets += tweets
        segment.bytes += size
        self._pending_bytes += size
        if segment.bytes >= self._batch_bytes:
            self._wake.set()
        elif fresh:
            if not self._plain(segment):
                self._wake.set()
            elif self._tick_at is None and self._shared is None and not self._stepping:
                self._schedule(segment)
            # else: it is written at the tick already set, or the batch in flight or the
            # writer's step under way sees to it when done

    def mark(self, point: str) -> None:
        """The source's resume point now that the messages written so far are queued: it
        becomes `durable_mark` once they are in the file."""
        holder = self._pending[-1] if self._pending else self._inflight
        if holder is not None:
            holder.mark = point
        else:
            self.durable_mark = point

    @property
    def fenced(self) -> bool:
        """Another host holds the stream's connection now (cluster mode): nothing more is
        written, and the connection must not connect again."""
        return self.fence is not None and not self.fence.valid()

    def _refuse_fenced(self, count: int) -> None:
        if not self._fenced:
            self._fenced = True
            self._log.warning("archive_fenced", dropped=count,
                              reason="this host no longer holds the stream's connection")

    def _stored(self, segment: _Segment) -> None:
        """`segment` is in the file: its mark is durable."""
        if segment.mark is not None:
            self.durable_mark = segment.mark

    async def close(self) -> PublishedFile | None:
        """Write everything, publish the open file and stop. Idempotent.

        Raises ArchiveError if something could not be written or published; what reached the
        disk then stays as a `.part` for the next `open()`.
        """
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return None
        writer = self._writer
        if self._state is _State.CLOSED:
            if writer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(writer)
            return None
        self._state = _State.CLOSED
        self._closing = True
        self._wake.set()
        assert writer is not None
        try:
            await asyncio.shield(writer)
        except Exception as exc:  # the writer crashed: a bug, but the caller needs an answer
            self._release_lock()
            raise ArchiveError(
                f"the archive writer of stream {self.name!r} failed: {exc!r}"
            ) from exc
        if self._close_error is not None:
            raise self._close_error
        return self._close_result

    @property
    def error(self) -> ArchiveError | None:
        """The last write failure while messages wait for a retry; None when healthy."""
        return self._error if self._pending else None

    def watch(self, notice: Callable[[], None], moved: Callable[[], None] | None = None) -> None:
        """From now on, call `moved` (`notice` if not given) after every change to what a
        message or a rotation moves on (the last message, the open file, the last publish
        and the count of files), and `notice` after every other change the stream's status
        shows of this archive (its coverage). Every stream turns its file over and publishes
        at the same boundary: told as any other change, that made the API's pages make every
        stream's STATUS and metrics sample again whole."""
        self._moved = moved or notice
        self.coverage.notice = notice

    # -- coverage: what the stream's connection reports --------------------------------------

    def streaming(self) -> None:
        """The stream collects from now on: an open gap ends."""
        self.coverage.up(self._clock())

    def not_streaming(self, reason: str, error: str | None = None) -> None:
        """The stream stopped collecting (a failure, a reconnect): a gap begins, from when
        this run began if the stream has not streamed yet in it."""
        self.coverage.down(self._clock(), reason, error, since=self._opened)

    def asking(self, what: dict[str, Any]) -> None:
        """The stream asks for `what` from now on (its provenance)."""
        self.coverage.asked_for(self._clock(), what)

    def refilled(self, value: str, unrecoverable: tuple[str, ...] = ()) -> None:
        """What the source fetched again of the latest gap: "all", "some" or "none", and
        what it cannot fetch at all."""
        self.coverage.refill(value, unrecoverable)

    def refused(self, why: str) -> None:
        """One message was not stored (too large, not what the source sends): on record."""
        self.coverage.instant(self._clock(), cov.EVENT_REFUSED, why)

    def gap_seconds(self) -> dict[str, float]:
        """Seconds not collecting in this run, by reason (`Coverage.gap_seconds` now): what
        /metrics shows of the coverage, without the rest of `coverage_shown`."""
        return self.coverage.gap_seconds(self._clock())

    def shown_key(self) -> tuple[Any, ...]:
        """Changes whenever `coverage_shown()` would, apart from what a message or a rotation
        moves (the last message, the open file, the last publish) and the seconds of gaps:
        what the API's pages keep a stream's STATUS by (`StatusJson`)."""
        coverage = self.coverage
        return (coverage.revision, coverage.connected_since)

    def coverage_shown(self) -> dict[str, Any]:
        """For the stream's status: `Coverage.shown` now, when it last took a message and
        published a file, and the file it writes now."""
        current = self.current_file
        return {**self.coverage.shown(self._clock()), "last_message_at": self.last_written,
                "last_publish_at": self.last_published,
                "current_file": str(current) if current is not None else None}

    # -- the shared tick: a quiet stream's batches (see `tick`) ------------------------------

    def _plain(self, head: _Segment) -> bool:
        """Whether `head` is the plain case the shared tick writes: more messages for the
        open file, nothing failing, not closing. The writer task does everything else."""
        part = self._part
        return (
            part is not None
            and part.name.start == head.start
            and head.unwritten
            and self._state is _State.OPEN
            and not self._closing
            and self._error is None
            and self._shared_failure is None
        )

    def _shareable(self, head: _Segment) -> bool:
        """The plain case, and nothing else touching the file now."""
        return self._plain(head) and self._shared is None and not self._stepping

    def _schedule(self, head: _Segment) -> None:
        self._tick_at = tick_at(head.since, self._flush_interval)
        if self._tick is None:
            self._tick = shared_tick(asyncio.get_running_loop(), _TICK_POOL)
        self._tick.schedule(self, self._tick_at)

    def shared_take(self) -> Work | None:
        """At the tick: the head's batch to write, if it is due and the plain case;
        otherwise the writer task is woken to deal with it."""
        self._tick_at = None
        if not self._pending:
            return None
        head = self._pending[0]
        if not self._shareable(head):
            self._wake.set()
            return None
        loop = asyncio.get_running_loop()
        if tick_at(head.since, self._flush_interval) > loop.time():
            self._schedule(head)  # a later batch: the one due now was written meanwhile
            return None
        segment = self._take_batch()
        part = self._part
        assert part is not None
        self._pending_bytes -= segment.bytes
        self._inflight_bytes = segment.bytes
        self._inflight = segment
        self._shared = (part, segment)
        return functools.partial(self._append, part, segment)

    def shared_done(self, error: BaseException | None) -> None:
        """On the loop, once the tick's batch was written (or refused)."""
        assert self._shared is not None
        part, segment = self._shared
        self._shared = None
        self._inflight_bytes = 0
        self._inflight = None
        if error is None:
            self._stored(segment)
        if error is not None:  # the writer task cuts the file back and retries, as its own
            self._pending.insert(0, segment)
            self._pending_bytes += segment.bytes
            self._shared_failure = (part, error)
            self._wake.set()
        elif self._pending and self._tick_at is None:
            if self._shareable(self._pending[0]):
                self._schedule(self._pending[0])
            else:
                self._wake.set()
        waiter, self._shared_waiter = self._shared_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._pulse()

    async def _after_shared(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Wait for a batch handed to the tick; then, if the disk refused it, fail as the
        writer's own write would have. False when it failed."""
        if self._shared is not None:
            if self._shared_waiter is None:
                self._shared_waiter = loop.create_future()
            await asyncio.shield(self._shared_waiter)
        if self._shared_failure is None:
            return True
        part, error = self._shared_failure
        self._shared_failure = None
        if not isinstance(error, OSError):
            raise error  # a bug in the worker: the writer crashes with it, as it would have
        await self._abandon(part)
        self._failed(self._failure("write", part.path, error), loop)
        return False

    # -- the writer task ---------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                closing = self._closing  # the closing pass must start after close() asked
                self._stepping = True
                try:
                    if await self._after_shared(loop) or self._closing:
                        await self._step(loop)
                finally:
                    self._stepping = False
                if closing:
                    await self._close_out()
                    return
                if not self._closing:
                    await self._sleep(loop)
        except Exception as exc:
            self._log.exception("archive_writer_crashed")
            self._error = ArchiveError(
                f"the archive writer of stream {self.name!r} failed: {exc!r}"
            )
            raise
        finally:
            if self._closing:
                self._release_lock()
            self._pulse()

    async def _step(self, loop: asyncio.AbstractEventLoop) -> None:
        current = interval_start(self._clock(), self._save_interval)
        while self._pending and self._due(loop, current):
            segment = self._take_batch()
            self._pending_bytes -= segment.bytes
            self._inflight_bytes = segment.bytes
            self._inflight = segment
            try:
                await self._write_segment(segment)
            except ArchiveError as exc:
                self._pending.insert(0, segment)
                self._pending_bytes += segment.bytes
                self._failed(exc, loop)
                return
            finally:
                self._inflight_bytes = 0
                self._inflight = None
                self._pulse()
            self._stored(segment)
            self._recovered()
        retiring = self._retiring
        if retiring is not None and self._clock() >= self._publish_due(retiring.name.start):
            try:
                if not await self._publish_aside(retiring, loop):
                    return
            except ArchiveError as exc:
                self._failed(exc, loop)
                return
        part = self._part
        if part is not None and self._clock() >= self._publish_due(part.name.start):
            if not (self._pending and self._pending[0].start == part.name.start):
                try:
                    await self._publish(part)
                except ArchiveError as exc:
                    self._failed(exc, loop)
                    return
        if self._pending and self._part is None and self._error is None and not self._closing:
            try:  # open eagerly so the file shows up (and current_file) as soon as data does
                await self._open_part(self._pending[0].start)
            except ArchiveError as exc:
                self._failed(exc, loop)
        quiet_until = self._quiet_until()
        if quiet_until is not None and self._clock() >= quiet_until:
            await self._cover_until(interval_start(self._clock(), self._save_interval))

    def _quiet_until(self) -> float | None:
        """When the interval the manifest ends in is over for this stream, if nothing is
        waiting to be written: then its time is covered by a `"file": null` line."""
        if self._part or self._retiring or self._pending or self._covered is None:
            return None
        if self._closing:
            return None
        return self._publish_due(interval_start(self._covered, self._save_interval))

    def _take_batch(self) -> _Segment:
        """Everything queued for the head's interval, as one batch.

        When the worker falls behind, batches grow: fewer, larger hand-offs keep the cost per
        byte low even when a busy event loop makes each return from a worker call slow.
        """
        batch = self._pending.pop(0)
        while (
            self._pending
            and self._pending[0].start == batch.start
            and batch.bytes + self._pending[0].bytes <= self._max_batch
            and batch.unwritten
        ):
            batch.merge(self._pending.pop(0))
        return batch

    def _due(self, loop: asyncio.AbstractEventLoop, current: int) -> bool:
        if self._closing:
            return True
        if self._error is not None:
            return loop.time() >= self._retry_at
        head = self._pending[0]
        return (
            len(self._pending) > 1
            or head.bytes >= self._batch_bytes
            or head.start < current
            or loop.time() >= head.since + self._flush_interval
        )

    async def _sleep(self, loop: asyncio.AbstractEventLoop) -> None:
        delays: list[float] = []
        if self._pending:
            if self._error is not None:
                delays.append(self._retry_at - loop.time())
            elif self._tick_at is None and self._shared is None:  # else the tick writes it
                delays.append(self._pending[0].since + self._flush_interval - loop.time())
        if self._retiring is not None:
            delays.append(self._publish_due(self._retiring.name.start) - self._clock())
        if self._part is not None:
            delays.append(self._publish_due(self._part.name.start) - self._clock())
        elif self._pending:
            delays.append(self._pending[0].start + self._save_interval - self._clock())
        watch = self._part is not None or bool(self._pending) or self._retiring is not None
        quiet_until = self._quiet_until()
        if quiet_until is not None:
            delays.append(quiet_until - self._clock())
        if not delays:
            await self._wake.wait()
            return
        # A timer that sets the flag: cheaper than a timeout around the wait (no
        # cancellation, no exception). While a file is open, the timer also looks at the
        # wall clock every `_max_sleep` (`_alarm`), not the writer: waking the task to look
        # (a future and two coroutines made, its whole step run) was, for each quiet
        # stream, a wake-up every five seconds that found nothing to do.
        delay = max(min(delays), 0.001)
        self._sleep_until = loop.time() + delay
        self._sleep_until_wall = self._clock() + delay if watch else None
        self._alarm()
        try:
            await self._wake.wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _alarm(self) -> None:
        """Wake the sleeping writer at loop time `_sleep_until`, or as soon as the wall
        clock reads `_sleep_until_wall` (it jumped ahead: what was due later may be due
        now); else look again within `_max_sleep`."""
        loop = asyncio.get_running_loop()
        left = self._sleep_until - loop.time()
        wall_due = self._sleep_until_wall
        if left <= 0 or (wall_due is not None and self._clock() >= wall_due):
            self._timer = None
            self._wake.set()
            return
        wait = left if wall_due is None else min(left, self._max_sleep)
        # Run in one shared, empty context: it only sets a flag, and a copy of the caller's
        # context for each timer is one more object per stream every few seconds.
        self._timer = loop.call_later(wait, self._alarm, context=_ALARM_CONTEXT)

    async def _write_segment(self, segment: _Segment) -> None:
        old = self._part
        if old is not None and old.name.start != segment.start:
            # `old`'s interval is over. Before this stream's turn in the publish spread it is
            # set aside and the new file opens beside it (so a boundary does not make every
            # busy stream publish at once); at or after it, or when an older file already
            # waits, it is published now, oldest first.
            if self._retiring is None and self._clock() < self._publish_due(old.name.start):
                await self._turn_over(old, segment)
                return
            if self._retiring is not None:
                await self._publish(self._retiring)
            await self._publish(old)
        if self._part is None:
            await self._open_part(segment.start)
        part = self._part
        assert part is not None
        try:
            await _io(self._append, part, segment)
        except OSError as exc:
            await self._abandon(part)
            raise self._failure("write", part.path, exc) from exc

    @staticmethod
    def _append(part: _PartFile, segment: _Segment) -> None:
        part.append(segment.payload(), segment.count, segment.tweets)

    async def _turn_over(self, old: _PartFile, segment: _Segment) -> None:
        """The first batch of a new interval, before this stream's turn to publish: seal the
        old file and set it aside, open the new one and write the batch, in one trip to the
        pool. At a boundary every stream does this within a second; as three trips (seal,
        create, write) at 5,000 streams they were 15,000 hand-offs in that second, and the
        messages arriving meanwhile piled up in memory."""
        step, new, exc = await _io(
            _turn_over, old, segment, self.stream_dir, self.name, self._compress,
            self._deflate, self._fsync_interval,
        )
        if step == "seal":
            assert exc is not None
            await self._abandon(old)
            raise self._failure("complete", old.path, exc)
        self._forget(old)
        self._retiring = old
        if step == "create":
            assert exc is not None
            raise self._failure("create a file in", self.stream_dir, exc)
        assert new is not None
        self._part = new
        self.current_file = new.path
        self._moved()
        if step == "write":
            assert exc is not None
            await self._abandon(new)
            raise self._failure("write", new.path, exc)

    async def _open_part(self, start: int) -> None:
        try:
            part = await _io(
                _PartFile.create,
                self.stream_dir,
                self.name,
                start,
                self._compress,
                self._deflate,
                self._fsync_interval,
            )
        except OSError as exc:
            raise self._failure("create a file in", self.stream_dir, exc) from exc
        self._part = part
        self.current_file = part.path
        self._moved()

    def _forget(self, part: _PartFile) -> None:
        """`part` is no longer the open file nor the one waiting to be published."""
        if self._part is part:
            self._part = None
            self.current_file = None
            self._moved()
        if self._retiring is part:
            self._retiring = None

    async def _abandon(self, part: _PartFile) -> None:
        self._forget(part)
        if await _io(part.abandon):
            self._orphans.append(part.path)

    async def _publish_aside(
        self, retiring: _PartFile, loop: asyncio.AbstractEventLoop
    ) -> bool:
        """Publish the file set aside at a turn-over while the shared tick goes on writing
        the open one (they are two files), then wait for the tick's batch in flight, so the
        open file is the step's alone again. At a boundary of 5,000 streams a publish (three
        fsyncs) can wait seconds for the pool; had the tick waited with it, the stream's
        messages of those seconds would all have waited in memory. False when the tick's
        batch was refused (`_after_shared`)."""
        self._stepping = False
        try:
            head = self._pending[0] if self._pending else None
            if head is not None and self._tick_at is None and self._shareable(head):
                self._schedule(head)  # came while the step ran, so nobody scheduled it
            await self._publish(retiring)
        finally:
            self._stepping = True
            shared_ok = await self._after_shared(loop)
        return shared_ok

    async def _publish(self, part: _PartFile, *, closed: bool = False) -> PublishedFile:
        """Complete, rename, fsync and record a file in one trip to the pool: at a boundary
        every stream publishes within seconds, and each trip costs the loop a wake-up.
        `closed`: its line is the last of this run."""
        start = part.name.start
        end = self._end(start)
        await self._cover_until(start)
        described = Described(
            self.coverage.gaps_within(start, end),
            self.coverage.provenance_within(start, end),
            closed,
        )
        owed = list(self._unrecorded)
        done = await _io(_complete, part, end, self.data_dir, self.manifest, owed, described)
        if done.step == "complete":
            assert done.error is not None
            await self._abandon(part)
            raise self._failure("complete", part.path, done.error)
        self._forget(part)
        if done.step == "publish":
            assert done.error is not None
            self._orphans.append(part.path)  # complete and fsynced; only the rename is missing
            raise self._failure("publish", part.path, done.error)
        published = done.published
        assert published is not None
        self._covered = max(self._covered or end, end)
        self.coverage.written_until(self._covered)
        if done.fsync_error is not None:  # published all the same; only a power loss undoes it
            self._log.error(
                "fsync_failed", dir=str(published.path.parent), error=str(done.fsync_error)
            )
        if done.manifest_error is None:
            del self._unrecorded[: len(owed)]
            self._manifested([*owed, published])
        else:
            self._unrecorded.append(published)
            self._manifest_failed(done.manifest_error)
        self._announce([published], "published")
        if self._orphans:
            await self._recover_orphans()
        return published

    async def _close_out(self) -> None:
        if self._pending:  # the disk refused them even now
            lost = sum(s.count for s in self._pending)
            self._log.error("archive_messages_lost", messages=lost, error=str(self._error))
            reason = self._error or "the disk refused them"
            self._close_error = ArchiveError(
                f"{reason}; {lost} queued messages of stream {self.name!r} were not stored"
            )
            self._pending.clear()
            self._pending_bytes = 0
        if self._retiring is not None:  # complete: its interval ended before the open one's
            try:
                self._close_result = await self._publish(self._retiring)
            except ArchiveError as exc:
                self._close_error = self._close_error or exc
        now = self._clock()
        part = self._part
        closed = False  # the run's last line, saying it ended cleanly, is written
        if part is not None and self._close_error is None:
            closed = now < part.name.start + self._save_interval  # its interval still runs
            try:
                self._close_result = await self._publish(part, closed=closed)
            except ArchiveError as exc:
                self._close_error = exc
                closed = False
        if self._close_error is None and not closed:
            await self._cover_until(now, closed=True)
        if self._orphans:
            await self._recover_orphans()
        if self._unrecorded and self._close_error is None:
            await self._record([], "published")
            if self._unrecorded:
                self._close_error = ArchiveError(
                    f"could not append to {self.manifest}; "
                    "the missing lines will be added at the next start"
                )

    # -- recovery and bookkeeping --------------------------------------------------------------

    async def _recover(self, part: Path, before: Coverage | None = None) -> PublishedFile | None:
        """Publish a leftover `.part`, described by the coverage of the run that wrote it
        (`before`, read from its journal; this run's own for a file it abandoned)."""
        try:
            published = await _io(recover_part, part, self.data_dir, self._deflate, self._count)
        except OSError as exc:
            self._log.error("recovery_failed", file=self._rel(part), error=str(exc))
            gone = isinstance(exc, FileNotFoundError)  # already published, or removed by hand
            if not gone and part not in self._orphans:
                self._orphans.append(part)  # retried after the next publish, or at next start
            return None
        if published is None:
            self._log.warning("recovered", file=self._rel(part), messages=0, removed=True)
            return None
        published = self._described(published, before or self.coverage)
        await self._record([published], "recovered", leftover=self._rel(part))
        return published

    def _described(self, published: PublishedFile, source: Coverage) -> PublishedFile:
        """A file's line with the gaps and provenance `source` knows for its span."""
        a, b = published.start.timestamp(), published.end.timestamp()
        return dataclasses.replace(
            published, gaps=source.gaps_within(a, b), provenance=source.provenance_within(a, b)
        )

    def _resume(
        self, last: dict[str, Any] | None, before: Coverage, recovered: list[PublishedFile]
    ) -> None:
        """Begin this run's coverage where the manifest ends.

        A stream with no line yet, or whose last line predates coverage, begins now. After a
        clean stop the gap since then is `stopped`; after a crash it is `daemon_down`, from
        the dead run's last sign of life (its mark under `.alive`, its last line, the
        leftovers it wrote). The gap stays open until the stream streams again.
        """
        now = self._clock()
        described = last is not None and "gaps" in last
        if not described and before.began is None and not recovered:
            self._covered = self.coverage.began = now
            self.coverage.written_until(now)
            return
        ends = [f.end.timestamp() for f in recovered]
        if described:
            assert last is not None
            ends.append(cov.parse_iso(last["end"]))
        if described and last is not None and last.get("closed"):
            reason, since = cov.STOPPED, max(ends)
        else:
            alive = cov.last_alive(self.data_dir, before.writer.get("run", ""))
            known = [*ends, *([alive] if alive else []), *([before.began] if before.began else [])]
            since = min(max(known), now)
            reason = cov.DAEMON_DOWN
            for gap in before.gaps:  # what was open when the run died ended with it
                if gap.end is None:
                    gap.end = max(since, gap.start)
        self._covered = max(ends) if ends else (before.began or since)
        self.coverage.began = self._covered
        self.coverage.gaps = [*before.gaps, cov.Gap(since, reason)]
        self.coverage.asked = before.asked
        self.coverage.started = True  # a collection resumes: a failing first connect extends it
        self.coverage.written_until(self._covered)

    async def _recover_orphans(self) -> None:
        orphans, self._orphans = self._orphans, []
        for part in orphans:
            await self._recover(part)

    async def _record(self, files: list[PublishedFile], event: str, **extra: Any) -> None:
        """Manifest lines (with any still owed from before), then logs and callbacks."""
        await self._append_lines(files)
        self._announce(files, event, **extra)

    async def _append_lines(self, lines: Sequence[ManifestLine]) -> None:
        """Append `lines` after any still owed; what fails stays owed for the next append."""
        self._unrecorded.extend(lines)
        if self._unrecorded:
            try:
                await _io(append_manifest, self.manifest, list(self._unrecorded))
            except OSError as exc:
                self._manifest_failed(exc)
            else:
                appended, self._unrecorded = self._unrecorded, []
                self._manifested(appended)

    async def _cover_until(self, t: float, *, closed: bool = False) -> None:
        """A `"file": null` line from where the manifest ends to `t`: time with nothing
        stored (a quiet interval, a stopped stream, a dead daemon). With `closed`, also when
        there is no time to cover: the run's last line says it ended cleanly."""
        covered = self._covered
        if covered is None or (covered >= t and not closed):
            return
        t = max(t, covered)
        line = CoverageLine(
            covered, t, self.coverage.gaps_within(covered, t),
            self.coverage.provenance_within(covered, t), closed,
        )
        await self._append_lines([line])
        self._covered = t
        self.coverage.written_until(t)

    def _manifested(self, lines: Sequence[ManifestLine]) -> None:
        """`lines` are in the manifest: hand them on (cluster mode's feed)."""
        if self._on_manifest is None:
            return
        for line in lines:
            try:
                self._on_manifest(line.manifest_line())
            except Exception:
                self._log.exception("on_manifest_failed")

    def _manifest_failed(self, exc: OSError) -> None:
        self._log.error(
            "manifest_write_failed",
            manifest=str(self.manifest),
            owed=len(self._unrecorded),
            error=str(exc),
        )

    def _announce(self, files: list[PublishedFile], event: str, **extra: Any) -> None:
        for published in files:
            self.published += 1
            self.last_published = self._clock()
            self._moved()
            self._log.info(
                event,
                file=published.relpath,
                start=iso_utc(published.start),
                end=iso_utc(published.end),
                messages=published.messages,
                tweets=published.tweets,
                bytes=published.bytes,
                **extra,
            )
            if self._on_publish is not None:
                try:
                    self._on_publish(published)
                except Exception:
                    self._log.exception("on_publish_failed", file=published.relpath)

    def _failed(self, exc: ArchiveError, loop: asyncio.AbstractEventLoop) -> None:
        if self._error is None or str(self._error) != str(exc):
            self._log.error(
                "archive_write_failed",
                error=str(exc),
                queued_messages=sum(s.count for s in self._pending),
            )
        self._error = exc
        self._retry_at = loop.time() + self._retry_interval
        self._pulse()

    def _recovered(self) -> None:
        if self._error is not None:
            self._log.info("archive_write_resumed")
            self._error = None

    def _check_writable(self) -> None:
        if self._state is not _State.OPEN:
            raise ArchiveError(f"the archive of stream {self.name!r} is not open")
        if self._writer is None or self._writer.done():
            raise ArchiveError(f"the archive writer of stream {self.name!r} has stopped")
        if self._error is not None and self._pending:
            queued = sum(s.count for s in self._pending)
            raise ArchiveError(f"{self._error} ({queued} earlier messages are held for a retry)")

    def _pulse(self) -> None:
        """Wake every write() waiting on backpressure so it re-checks."""
        self._progress.set()
        self._progress.clear()

    def _publish_due(self, start: int) -> float:
        """When the file of interval `start` is published: at its boundary plus this stream's
        share of `publish_spread`."""
        return start + self._save_interval + self._publish_delay

    def _end(self, start: int) -> float:
        """When a file of this interval ends if closed now: never before its start, never after
        its boundary (the clock may have jumped, or the timer run late)."""
        return min(max(self._clock(), start), start + self._save_interval)

    def _failure(self, action: str, path: Path, exc: OSError) -> ArchiveError:
        reason = exc.strerror or str(exc)
        return ArchiveError(f"stream {self.name!r}: cannot {action} {path}: {reason}")

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.data_dir).as_posix()
        except ValueError:
            return str(path)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


def _turn_over(
    old: _PartFile, segment: _Segment, stream_dir: Path, stream: str, compress: bool,
    deflate: Deflate, fsync_every: float,
) -> tuple[str, _PartFile | None, OSError | None]:
    """In a worker thread: `Archive._turn_over`'s three steps; which one failed ("seal",
    "create", "write"; "done" when none did), the new file, and the error."""
    try:
        old.seal()
    except OSError as exc:
        return "seal", None, exc
    try:
        new = _PartFile.create(stream_dir, stream, segment.start, compress, deflate, fsync_every)
    except OSError as exc:
        return "create", None, exc
    try:
        new.append(segment.payload(), segment.count, segment.tweets)
    except OSError as exc:
        return "write", new, exc
    return "done", new, None


def _previous_run(manifest: Path, journal: Path | None) -> tuple[dict[str, Any] | None, Coverage]:
    """The manifest's last line and the coverage the previous run left in its journal."""
    return last_entry(manifest), Coverage.load(journal) if journal else Coverage()
