"""Streams with a connection of their own, each a task in this daemon (`Mode.TASK`).

A `StreamRunner` is one registry stream brought to life: its slot's lock, its archive, its
source's connection. The daemon keeps one per running task stream (`TaskBackend`);
`sfmd stream NAME` runs a single one in the foreground. Start and stop are the only ways in,
and stop always publishes the open file and releases the slot, whatever state the connection
was in.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sfmd.archive import Archive, ArchiveError, CountItems
from sfmd.archive.writer import Fence
from sfmd.changes import Changes
from sfmd.config import Config
from sfmd.credentials import Credential
from sfmd.locks import CredentialBusy, CredentialLock
from sfmd.logs import get_logger
from sfmd.registry import Mode, StreamSpec
from sfmd.runtime.backend import Desired, Ledger
from sfmd.runtime.reconcile import Plan, can_retarget, diff
from sfmd.sources import Connection, Context, source_of
from sfmd.sources.backoff import Backoff, BackoffPolicy, Failure
from sfmd.status import StreamStatus

#: Streams started at once: each start opens its archive in the pool. One by one, 5,000
#: starts took 30-60 s, each waiting a turn of a loop the started streams kept busier and
#: busier; a batch shares those turns. A start takes its credential's lock before its first
#: await, so within a batch the locks are still taken in the plan's order.
START_BATCH = 64


def lock_dir(config: Config) -> Path:
    return config.daemon.state_dir / "locks"


def new_session() -> aiohttp.ClientSession:
    """One session for many long-lived streams: no pool cap (aiohttp's default is 100) and
    no total timeout (the default would cut every stream after five minutes)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None),
    )


@dataclass(frozen=True)
class ClusterHooks:
    """What cluster mode adds to every stream's archive and source; None on a single host.

    `fence(slot)`: the lease this host holds the slot under (the archive writes only while
    it is valid, and names its host and epoch in the manifest); `on_manifest(stream, line)`:
    every manifest line, for the feed; `saved_point(stream)`: the resume point another host
    saved; `made(stream, archive)`: every archive opened, whose `durable_mark` is saved."""

    fence: Callable[[str], Fence | None]
    on_manifest: Callable[[str, bytes], None]
    saved_point: Callable[[str], Awaitable[str | None]]
    made: Callable[[str, Archive], None]


def new_archive(
    config: Config,
    name: str,
    log: Any = None,
    *,
    count: CountItems,
    slot: str | None = None,
    hooks: ClusterHooks | None = None,
) -> Archive:
    """A stream's archive; `count` is how the stream counts content items (see `Archive`);
    with `hooks` (cluster mode), fenced by the lease on `slot`."""
    archive = Archive(
        config.daemon.data_dir,
        name,
        save_interval=config.daemon.save_interval,
        publish_spread=config.daemon.publish_spread,
        compress=config.daemon.compress,
        count=count,
        compress_level=config.daemon.compress_level,
        compress_window=config.daemon.compress_window,
        flush_interval=config.timing.flush_interval,
        log=log if log is not None else get_logger(stream=name),
        fence=hooks.fence(slot) if hooks is not None and slot is not None else None,
        on_manifest=(
            (lambda line: hooks.on_manifest(name, line)) if hooks is not None else None
        ),
    )
    if hooks is not None:
        hooks.made(name, archive)
    return archive


def source_context(
    config: Config, session: aiohttp.ClientSession, hooks: ClusterHooks | None = None
) -> Context:
    """What sources get to build connections with, from this daemon's config."""
    return Context(
        config=config,
        session=session,
        lock_dir=lock_dir(config),
        archive_factory=lambda spec, count: new_archive(
            config, spec.name, count=count, slot=spec.slot, hooks=hooks
        ),
        saved_point=hooks.saved_point if hooks is not None else None,
    )


class StreamRunner:
    def __init__(
        self,
        spec: StreamSpec,
        credential: Credential | None,
        config: Config,
        context: Context,
        hooks: ClusterHooks | None = None,
    ) -> None:
        """`context`: what the source builds connections with, one for all the daemon's
        runners (`source_context`)."""
        self.spec = spec
        self.credential = credential  # the keys it connects with: a reload compares them
        self.config = config
        self.log = get_logger(stream=spec.name)
        self.source = source_of(spec)
        self.context = context
        self.lock = CredentialLock(context.lock_dir, spec.slot)
        self.archive = new_archive(config, spec.name, self.log, count=self.source.counter(spec),
                                   slot=spec.slot, hooks=hooks)
        self.stream: Connection = self.source.connection(
            spec, credential, self.archive, self.context
        )

    @property
    def grace(self) -> float:
        return self.config.timing.shutdown_timeout / 2

    async def start(self, delay: float = 0.0) -> None:
        """Take the slot (CredentialBusy if another stream has it), recover, connect."""
        self.lock.acquire(self.spec.name)
        try:
            await self.archive.open()
        except BaseException:
            self.lock.release()
            raise
        self.stream.start(delay)
        self.log.info("stream_started", state="connecting", kind=self.spec.kind,
                      **({"delay": round(delay, 3)} if delay else {}))

    async def stop(self) -> None:
        """Close the connection, publish the open file, release the slot."""
        try:
            try:
                await self.stream.stop(grace=self.grace)
            finally:
                await self.archive.close()
        finally:
            self.lock.release()
        self.log.info("stream_stopped", messages=self.stream.status.messages)

    def can_retarget(self, spec: StreamSpec) -> bool:
        """A new filter on the same credential needs a new connection, not a new archive."""
        return can_retarget(self.spec, spec)

    async def refresh(self, spec: StreamSpec) -> None:
        """Settings the open connection takes as they are (a Bluesky stream's collections:
        an options_update); nothing for the ones it never sees."""
        changed, self.spec = spec != self.spec, spec
        if changed:
            await self.source.update(self.stream, spec, self.context)

    async def retarget(self, spec: StreamSpec) -> None:
        """Reconnect with `spec`'s settings; the open file and the slot's lock stay."""
        await self.source.retarget(self.stream, spec, self.context, self.grace)
        self.spec = spec

    @property
    def task(self) -> asyncio.Task[None] | None:
        task: asyncio.Task[None] | None = self.stream.task
        return task

    def status(self) -> StreamStatus:
        return self.stream.status.covered(self.archive.coverage_shown())

    def watch(self, notice: Callable[[], None], moved: Callable[[], None]) -> None:
        """Call `notice` whenever anything the stream's status shows changes, `moved` when a
        message or a rotation only moved its counters, files and moments on (`Changes`)."""
        self.stream.status.watch(notice, moved)
        self.archive.watch(notice, moved)


class TaskBackend:
    """Streams with a connection of their own, each a task in this daemon (`Mode.TASK`).

    Applies `reconcile.diff`'s plan: stops in `stop_unwanted`, reconnects and starts in
    `start_wanted`. A stream task that dies of a bug is logged with its traceback and
    restarted after a backoff; it never takes the daemon down.
    """

    def __init__(
        self,
        config: Config,
        session: Callable[[], aiohttp.ClientSession],
        credentials: Callable[[], Mapping[str, Credential]],
        ledger: Ledger,
        *,
        reconcile: Callable[[], Awaitable[None]],
        lock: asyncio.Lock,
        hooks: ClusterHooks | None = None,
        changes: Changes | None = None,
    ) -> None:
        """`changes`: told of every runner that starts or stops, and given each runner's
        notices (`StreamRunner.watch`), for the views that keep what they showed."""
        self.config = config
        self.hooks = hooks
        self.changes = changes if changes is not None else Changes()
        self.session = session
        self.credentials = credentials
        self.ledger = ledger
        self.runners: dict[str, StreamRunner] = {}
        self._reconcile = reconcile  # the daemon's pass, run after a crashed task's wait
        self._lock = lock  # the daemon's: one change or reconcile at a time
        self._crashes: dict[str, Backoff] = {}
        self._restarting: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._shared_context: Context | None = None  # `_context`
        # The credentials mapping every runner's keys were last found current in.
        self._keys_current: Mapping[str, Credential] | None = None
        self._planned: tuple[Desired, Plan] | None = None  # `_plan_for_starts`

    def plan(self, desired: Desired) -> Plan:
        wanted = desired.active(Mode.TASK)
        if desired.scope is None:
            running = {name: runner.spec for name, runner in self.runners.items()}
        else:  # every other stream is as the last pass left it
            running = {n: self.runners[n].spec for n in desired.scope if n in self.runners}
            wanted = {n: wanted[n] for n in desired.scope if n in wanted}
        return diff(wanted, running, held_back=self._restarting, renewed=self._renewed_streams())

    def _plan_for_starts(self, desired: Desired) -> Plan:
        """The plan `stop_unwanted` made for the same pass, or a new one. Its stops are done,
        and its starts include the streams it stopped to start again; nothing else changes
        the runners in between, as a pass holds the daemon's lock (a crashed runner is
        stopped under it too). Planned once a pass: a plan reads every runner, a millisecond
        or two at 5,000 streams."""
        planned, self._planned = self._planned, None
        if planned is not None and planned[0] is desired:
            return planned[1]
        return self.plan(desired)

    def _renewed_streams(self) -> set[str]:
        """The running streams whose credential's keys changed since they started (a
        reload). Once every runner was found current for one credentials mapping, the
        runners are not asked again until the file is reloaded: a runner started meanwhile
        took its keys from that same mapping."""
        keys = self.credentials()
        if keys is self._keys_current:
            return set()
        renewed = {
            name for name, runner in self.runners.items()
            if runner.credential is not None
            and _renewed(keys.get(runner.spec.credential, runner.credential), runner.credential)
        }
        if not renewed:
            self._keys_current = keys
        return renewed

    async def stop_unwanted(self, desired: Desired) -> None:
        steps = self.plan(desired)
        self._planned = (desired, steps)
        for name, why in steps.stop:
            await self._stop_runner(name, why)

    async def start_wanted(self, desired: Desired, *, jitter: float = 0.0) -> None:
        wanted = desired.active(Mode.TASK)
        steps = self._plan_for_starts(desired)
        for name in steps.refresh:
            await self.runners[name].refresh(wanted[name])
        for name in steps.retarget:
            await self._retarget(self.runners[name], wanted[name])
        starts = [(wanted[name], random.uniform(0, jitter)) for name in steps.start]
        if len(starts) == 1:  # one new stream (an API change): the change logs before it does
            await self._start_runner(*starts[0])
            return
        for i in range(0, len(starts), START_BATCH):
            await asyncio.gather(*(
                self._start_runner(spec, delay=delay) for spec, delay in starts[i:i + START_BATCH]
            ))

    def status(self, spec: StreamSpec) -> StreamStatus | None:
        runner = self.runners.get(spec.name)
        return runner.status() if runner is not None else None

    def forget(self, name: str) -> None:
        self._crashes.pop(name, None)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(self._stop_runner(n, "daemon shutdown") for n in list(self.runners)))

    # -- steps -------------------------------------------------------------------------------

    def _context(self) -> Context:
        """The runners' one context, made again only for a new session."""
        session = self.session()
        if self._shared_context is None or self._shared_context.session is not session:
            self._shared_context = source_context(self.config, session, self.hooks)
        return self._shared_context

    async def _start_runner(self, spec: StreamSpec, delay: float = 0.0) -> None:
        credential = self.credentials().get(spec.credential)
        runner = StreamRunner(spec, credential, self.config, self._context(), self.hooks)
        try:
            await runner.start(delay=delay)
        except (CredentialBusy, ArchiveError) as e:
            self.ledger.fail(spec.name, str(e))
            return
        self.ledger.clear(spec.name)
        self.runners[spec.name] = runner
        runner.watch(*self.changes.notices_for(spec.name))
        self.changes.touch(spec.name)
        self._watch(runner)

    async def _retarget(self, runner: StreamRunner, spec: StreamSpec) -> None:
        get_logger(stream=spec.name).info(
            "stream_state", state="reconnecting", reason="its filter settings changed"
        )
        await runner.retarget(spec)
        self._watch(runner)

    async def _stop_runner(self, name: str, reason: str) -> None:
        runner = self.runners.pop(name)
        self.changes.touch(name)
        get_logger(stream=name).info("stream_state", state="stopping", reason=reason)
        try:
            await runner.stop()
        except ArchiveError as e:
            get_logger(stream=name).error("stop_failed", error=str(e))
        self.ledger.stopped(name, runner.status(), published=runner.archive.published)

    # -- crashes -----------------------------------------------------------------------------

    def _watch(self, runner: StreamRunner) -> None:
        """Hear about the runner's task ending by itself (a bug): `_task_ended` restarts it."""
        task = runner.task
        if task is not None:
            task.add_done_callback(lambda t, r=runner: self._task_ended(r, t))

    def _task_ended(self, runner: StreamRunner, task: asyncio.Task[None]) -> None:
        """A stream task ended by itself: a bug. Log it with its traceback; restart later."""
        if task.cancelled() or self.runners.get(runner.spec.name) is not runner:
            return
        error = task.exception()
        if error is None:
            return
        name = runner.spec.name
        backoff = self._crashes.setdefault(
            name, Backoff(BackoffPolicy.from_config(self.config.timing))
        )
        wait = backoff.failure(Failure.HTTP)
        get_logger(stream=name).error(
            "stream_crashed", error=f"{type(error).__name__}: {error}", restart_in=wait,
            exc_info=error,
        )
        task = asyncio.create_task(self._restart_later(name, runner, wait))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart_later(self, name: str, runner: StreamRunner, wait: float) -> None:
        self._restarting.add(name)
        try:
            async with self._lock:
                if self.runners.get(name) is runner:
                    await self._stop_runner(name, "crashed")
                    self.ledger.restarting(name, "crashed; restarting", retry_in=wait)
            await asyncio.sleep(wait)
        finally:
            self._restarting.discard(name)
        await self._reconcile()


def _renewed(now: Credential, started_with: Credential) -> bool:
    """Whether a credential's keys changed since its stream started. Usually the very same
    object (the file was not reloaded): comparing every field of 5,000 credentials was a
    tenth of a reconcile pass."""
    return now is not started_with and now != started_with
