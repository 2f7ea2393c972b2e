"""The daemon: every task-isolated stream in one process, kept equal to the registry.

The registry is the desired state; the reconciler makes the running streams match it at
start-up, after every change through the control API, and on a timer. Nothing depends on
remembering what was half-done: after any failure, reconciling again puts things right.

Lifecycle, as uvicorn names it: `startup()` (load, claim the socket, start streams),
`main_loop()` (reconcile on a timer until told to stop), `shutdown()` (close the socket, stop
every stream, publishing its open file). `serve()` runs the three.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from sfmd.archive import ArchiveError
from sfmd.config import Config
from sfmd.control.metrics import ConnectionSample, Metrics, StreamSample
from sfmd.credentials import Credential, CredentialsError, load_credentials
from sfmd.daemon.heap import Heap
from sfmd.locks import CredentialBusy
from sfmd.logs import get_logger
from sfmd.ops.confs import ConfError
from sfmd.ops.systemd import Notifier, describe_states, watchdog_loop
from sfmd.registry.store import (
    Registry,
    RegistryError,
    StreamSpec,
    ValidationError,
    apply_patch,
    validate_stream,
    with_people_ids,
)
from sfmd.runtime.processes import ProcessStreams, SupervisorError
from sfmd.runtime.tasks import (
    StreamRunner,
    lock_dir,
    new_archive,
    new_session,
    read_status_file,
    stream_timing,
)
from sfmd.sources.backoff import Backoff, Failure
from sfmd.sources.twitter.multiplex import FilterGroup, count_routed
from sfmd.sources.twitter.rules import RulesApi, RulesRejected
from sfmd.sources.twitter.users import lookup_ids
from sfmd.sources.twitter.v2 import bearer_problem

log = get_logger()
STATUS_KEYS = (
    "state", "since", "messages", "tweets", "bytes", "reconnects", "last_error", "current_file",
)


class StartupError(Exception):
    """Something an operator must fix before sfmd can start; the message says what."""


class NotFound(Exception):
    """No stream by that name (the API's 404)."""


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.credentials: dict[str, Credential] = {}
        self.registry: Registry | None = None
        self.session: aiohttp.ClientSession | None = None
        self.runners: dict[str, StreamRunner] = {}
        # v2 filters: one shared connection per credential, by credential name.
        self.groups: dict[str, FilterGroup] = {}
        self._forgotten: set[str] = set()  # v2 filters deleted while running: their tags
        # Streams that should run but cannot (credential held elsewhere, disk refused...).
        self.failed: dict[str, dict[str, Any]] = {}
        # The last status of streams that stopped, so counters survive a stop for `show`.
        self.last_status: dict[str, dict[str, Any]] = {}
        self.metrics = Metrics(self._samples, self.started, connections=self._connections)
        self._lock = asyncio.Lock()  # one change or reconcile at a time
        # Freeze again once the streams have connected: see Heap.
        self.heap = Heap(
            config.timing.gc_interval,
            freeze_after=config.timing.start_jitter + config.timing.connect_timeout,
        )
        self._crashes: dict[str, Backoff] = {}
        self._restarting: set[str] = set()
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        # The process back end: streams with isolation = "process", run by supervisord.
        self.processes = ProcessStreams(config)
        self.process_status: dict[str, dict[str, Any]] = {}  # from supervisord, per reconcile
        self.process_problem: str | None = None  # "waiting for supervisord: ..." or an error

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self, control: Any = None, notifier: Notifier | None = None) -> None:
        """startup → main_loop → shutdown; `control` is the API server (started after load),
        `notifier` tells systemd (READY, STATUS, WATCHDOG, STOPPING) when it asked to know."""
        notifier = notifier or Notifier(None)
        await self.startup(control)
        notifier.ready(self.status_line())
        pinger = asyncio.create_task(watchdog_loop(notifier, self.status_line))
        try:
            await self.main_loop()
        finally:
            notifier.stopping(f"stopping {len(self.runners)} streams")
            try:
                await self.shutdown(control)
            finally:
                pinger.cancel()

    async def startup(self, control: Any = None) -> None:
        try:
            self.credentials = load_credentials(self.config.twitter.credentials_file)
            self.registry = Registry.load(
                self.config.daemon.state_dir, credentials=self.credentials.keys()
            )
        except (CredentialsError, RegistryError) as e:
            raise StartupError(str(e)) from None
        for leftover in self.registry.remove_leftovers():
            log.info("registry_leftover_removed", file=leftover.name)
        for folder in (self.config.daemon.data_dir, self.config.daemon.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.session = new_session()
        if control is not None:
            await control.start()  # before any stream: a second daemon stops here
        log.info("startup", streams=len(self.registry), config=str(self.config.path))
        async with self._lock:
            await self._reconcile(jitter=self.config.timing.start_jitter)
        self.heap.settle()

    async def main_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.timing.reconcile_interval):
                    await self._stop.wait()
            if not self._stop.is_set():
                await self.reconcile()
                collection = self.heap.tick()
                if collection is not None:
                    log.info("gc_full" if collection.full else "gc_freeze",
                             collected=collection.collected,
                             seconds=round(collection.seconds, 3), frozen=collection.frozen)

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self, control: Any = None) -> None:
        """Close the socket first (no change may start mid-shutdown), then stop every stream."""
        log.info("shutdown", streams=len(self.runners))
        if control is not None:
            await control.stop()
        for task in list(self._background):
            task.cancel()
        async with self._lock:
            names = list(self.runners)
            await asyncio.gather(
                *(self._stop_runner(n, "daemon shutdown") for n in names),
                *(group.stop() for group in self.groups.values()),  # rules stay at the API
            )
            self.groups.clear()
        # Process-isolated streams keep running: supervisord owns them, not this process.
        await self.processes.close()
        if self.session is not None:
            await self.session.close()
        log.info("stopped")

    # -- reconciling -------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """The periodic check: also asks the v2 rules API whether its rules drifted."""
        async with self._lock:
            await self._reconcile(check_rules=True)

    async def _reconcile(self, jitter: float = 0.0, *, check_rules: bool = False) -> None:
        """Make running streams match the registry. Call with the lock held."""
        assert self.registry is not None
        everything = self.registry.list()
        desired = {
            s.name: s
            for s in everything
            if s.active and s.isolation == "task" and s.connection_group is not None
        }
        for name, runner in list(self.runners.items()):
            spec = desired.get(name)
            if spec is None:
                await self._stop_runner(name, "stopped in the registry")
            elif spec.connection_key() != runner.spec.connection_key():
                if runner.can_retarget(spec):
                    await self._retarget_runner(runner, spec)
                else:
                    await self._stop_runner(name, "its credential or endpoint changed")
            else:
                runner.spec = spec  # a change Twitter never sees: no reconnect
        for name in list(self.failed):
            if name not in desired:
                del self.failed[name]
        # Between the stops and the starts: a stream moving between task and process isolation
        # has let go of its credential on one side before the other side takes it.
        await self._reconcile_processes()
        for name, spec in desired.items():
            if name not in self.runners and name not in self._restarting:
                problem = bearer_problem(self.credentials[spec.credential])
                if spec.api == "v2" and problem:  # a hand-edited registry, or a changed file
                    self._mark_failed(name, problem)
                    continue
                await self._start_runner(spec, delay=random.uniform(0, jitter))
        await self._reconcile_groups(everything, check_rules)

    async def _reconcile_groups(self, everything: list[StreamSpec], check_rules: bool) -> None:
        """v2 filters: one group per credential with active ones; rules synced each time."""
        wanted: dict[str, list[StreamSpec]] = {}
        for spec in everything:
            if spec.api == "v2" and spec.kind == "filter" and spec.active:
                wanted.setdefault(spec.credential, []).append(spec)
        known = {s.name for s in everything} | self._forgotten
        for credential, group in list(self.groups.items()):
            staying = {s.name for s in wanted.get(credential, [])}
            for name in list(group.router.members):
                if name not in staying:
                    self._keep_last_status(name, group.member_status(name))
            if credential not in wanted:
                await group.update([], known)  # delete the stopped streams' rules
                await group.stop()
                del self.groups[credential]
                log.info("v2_connection_stopped", connection=group.name)
        for credential, specs in wanted.items():
            group = self.groups.get(credential)
            problem = bearer_problem(self.credentials[credential])
            if problem:
                for spec in specs:
                    self._mark_failed(spec.name, problem)
                continue
            if group is None:
                group = FilterGroup(
                    self.credentials[credential], self.config, self.session, lock_dir(self.config),
                    archive_factory=lambda spec: new_archive(
                        self.config, spec.name, count=count_routed
                    ),
                    stream_timing=stream_timing(self.config.timing),
                )
                try:
                    await group.start()
                except CredentialBusy as e:
                    for spec in specs:
                        self._mark_failed(spec.name, str(e))
                    continue
                self.groups[credential] = group
            failed = await group.update(specs, known, check_rules=check_rules)
            for spec in specs:
                if spec.name in failed:
                    self._mark_failed(spec.name, str(failed[spec.name]))
                else:
                    self.failed.pop(spec.name, None)

    async def _reconcile_processes(self) -> None:
        """Bring confs and supervisord to the registry; remember what supervisord says."""
        try:
            report = await self.processes.reconcile(self._registry().list())
        except ConfError as e:
            problem: str | None = f"cannot write supervisor confs: {e}"
            report = {}
        else:
            problem = report.get("waiting") or report.get("error")
        if problem != self.process_problem:
            if problem:
                log.warning("supervisor_problem", problem=problem)
            elif self.process_problem:
                log.info("supervisor_reachable")
            self.process_problem = problem
        changes = {k: v for k, v in report.items() if k not in ("waiting", "error") and v}
        if changes:
            log.info("supervisor_applied", **changes)
        if problem is None and self.processes.wanted(self._registry().list()):
            try:
                self.process_status = await self.processes.statuses()
            except SupervisorError as e:
                self.process_problem = f"waiting for supervisord: {e}"
        elif problem is None:
            self.process_status = {}

    async def _start_runner(self, spec: StreamSpec, delay: float = 0.0) -> None:
        assert self.session is not None
        credential = self.credentials[spec.credential]
        runner = StreamRunner(spec, credential, self.config, self.session)
        try:
            await runner.start(delay=delay)
        except (CredentialBusy, ArchiveError) as e:
            self._mark_failed(spec.name, str(e))
            return
        self.failed.pop(spec.name, None)
        self.runners[spec.name] = runner
        get_logger(stream=spec.name).info("stream_state", state="started", delay=round(delay, 3))
        self._watch(runner)

    def _mark_failed(self, name: str, reason: str) -> None:
        if self.failed.get(name, {}).get("last_error") != reason:
            get_logger(stream=name).error("stream_failed", reason=reason)
        self.failed[name] = {
            "since": self.failed.get(name, {}).get("since", _now()), "last_error": reason
        }

    async def _retarget_runner(self, runner: StreamRunner, spec: StreamSpec) -> None:
        get_logger(stream=spec.name).info(
            "stream_state", state="reconnecting", reason="its filter settings changed"
        )
        await runner.retarget(spec)
        self._watch(runner)

    def _watch(self, runner: StreamRunner) -> None:
        """Hear about the runner's task ending by itself (a bug): `_task_ended` restarts it."""
        task = runner.task
        if task is not None:
            task.add_done_callback(lambda t, r=runner: self._task_ended(r, t))

    async def _stop_runner(self, name: str, reason: str) -> None:
        runner = self.runners.pop(name)
        get_logger(stream=name).info("stream_state", state="stopping", reason=reason)
        try:
            await runner.stop()
        except ArchiveError as e:
            get_logger(stream=name).error("stop_failed", error=str(e))
        self._keep_last_status(name, runner.status_dict())

    def _keep_last_status(self, name: str, status: dict[str, Any]) -> None:
        """A stopped stream's counters, so `show` still tells what it collected."""
        status = {key: value for key, value in status.items() if key != "connection"}
        self.last_status[name] = {**status, "state": "stopped", "since": _now()}

    def _task_ended(self, runner: StreamRunner, task: asyncio.Task[None]) -> None:
        """A stream task ended by itself: a bug. Log it with its traceback; restart later."""
        if task.cancelled() or self.runners.get(runner.spec.name) is not runner:
            return
        error = task.exception()
        if error is None:
            return
        name = runner.spec.name
        backoff = self._crashes.setdefault(name, Backoff(stream_timing(self.config.timing).backoff))
        wait = backoff.failure(Failure.HTTP)
        get_logger(stream=name).error(
            "stream_crashed", error=f"{type(error).__name__}: {error}", restart_in=wait,
            exc_info=error,
        )
        self._spawn(self._restart_later(name, runner, wait))

    async def _restart_later(self, name: str, runner: StreamRunner, wait: float) -> None:
        self._restarting.add(name)
        try:
            async with self._lock:
                if self.runners.get(name) is runner:
                    await self._stop_runner(name, "crashed")
                    self.failed[name] = {"since": _now(), "last_error": "crashed; restarting"}
            await asyncio.sleep(wait)
        finally:
            self._restarting.discard(name)
        await self.reconcile()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- changes (the control API calls these) ------------------------------------------------

    async def create(self, body: object) -> StreamSpec:
        async with self._lock:
            registry = self._registry()
            spec = validate_stream(
                body,
                credentials=self.credentials.keys(),
                default_credential=self.config.twitter.default_credential,
            )
            if spec.name in registry:
                raise ValidationError(
                    "name_taken", "name", f"a stream named {spec.name!r} already exists; "
                    "choose another name or change that stream with PATCH"
                )
            registry.check_credential_free(spec)
            await self._check_v2(spec, None)
            spec = await self._resolve_people(spec)
            # Written (and fsynced) in a thread: the loop keeps serving streams and readers,
            # who see the old registry or the new one, never a half (the lock orders writers).
            await asyncio.to_thread(registry.add, spec)
            self.last_status.pop(spec.name, None)
            await self._reconcile()
            return spec

    async def modify(self, name: str, body: object) -> StreamSpec:
        async with self._lock:
            registry = self._registry()
            old = self.spec(name)
            new = apply_patch(old, body, credentials=self.credentials.keys())
            registry.check_credential_free(new)
            await self._check_v2(new, old)
            if new.people != old.people:
                new = await self._resolve_people(new)
            if new != old:
                await asyncio.to_thread(registry.replace, new)
                await self._reconcile()
            return new

    async def set_active(self, name: str, active: bool) -> StreamSpec:
        return await self.modify(name, {"active": active})

    async def delete(self, name: str) -> None:
        async with self._lock:
            if self.spec(name).api == "v2":  # 404 before anything changes
                self._forgotten.add(name)  # its rules' tags stay recognisably sfmd's
            await asyncio.to_thread(self._registry().remove, name)
            await self._reconcile()
            self.last_status.pop(name, None)
            self._crashes.pop(name, None)

    async def _check_v2(self, spec: StreamSpec, old: StreamSpec | None) -> None:
        """A v2 stream needs a bearer token (v1.1 the OAuth keys); new rule values must pass
        the API's dry run."""
        credential = self.credentials[spec.credential]
        if spec.api != "v2":
            if not credential.has_oauth1:
                raise ValidationError(
                    "invalid", "credential",
                    f"credential {spec.credential!r} has only a bearer_token; v1.1 streams need "
                    'the four OAuth 1.0a keys (or set "api": "v2")',
                )
            return
        problem = bearer_problem(credential)
        if problem:
            raise ValidationError("invalid", "credential", problem)
        if spec.kind != "filter" or not spec.active:
            return
        group = self.groups.get(spec.credential)
        in_use = set(group.wanted_rules()) if group is not None else set()
        new_values = [v for v in spec.rules if v not in in_use]
        if not new_values:
            return
        assert self.session is not None
        api = RulesApi(self.session, self.config.twitter.api_url, credential,
                       timeout=self.config.timing.connect_timeout)
        try:
            await api.check(new_values)
        except RulesRejected as e:
            raise ValidationError(
                "invalid", "rules", f"the API refused: {'; '.join(e.reasons)}"
            ) from None

    async def _resolve_people(self, spec: StreamSpec) -> StreamSpec:
        if not spec.people:
            return with_people_ids(spec, {})
        assert self.session is not None
        ids = await lookup_ids(
            self.session,
            self.config.twitter.rest_url,
            self.credentials[spec.credential],
            spec.people,
            request_timeout=self.config.timing.connect_timeout,
        )
        resolved = with_people_ids(spec, ids)
        if resolved.people_unresolved:
            get_logger(stream=spec.name).warning(
                "people_unresolved", names=resolved.people_unresolved
            )
        return resolved

    def _registry(self) -> Registry:
        assert self.registry is not None, "startup() loads the registry"
        return self.registry

    # -- views -------------------------------------------------------------------------------

    def spec(self, name: str) -> StreamSpec:
        try:
            return self._registry().get(name)
        except KeyError:
            raise NotFound(f"no stream named {name!r}") from None

    def specs(self) -> list[StreamSpec]:
        return self._registry().list()

    def view_json(self, spec: StreamSpec) -> bytes:
        """A STREAM as the API returns it, as JSON: the settings come pre-encoded (once per
        spec), only the status is encoded per call, which keeps GET /streams at 1,000
        streams a few ms."""
        return spec.view_json_open + b',"status":' + orjson.dumps(self.status_of(spec.name)) + b"}"

    def listing_json(self) -> bytes:
        """GET /streams' body."""
        return b'{"streams":[' + b",".join(self.view_json(s) for s in self.specs()) + b"]}"

    def status_of(self, name: str) -> dict[str, Any]:
        spec = self._registry().get(name) if name in self._registry() else None
        if spec is not None and spec.isolation == "process":
            return self._process_view(spec)
        group = self.groups.get(spec.credential) if spec is not None else None
        if group is not None and name in group and name not in self.failed:
            return group.member_status(name)
        runner = self.runners.get(name)
        if runner is not None:
            return runner.status_dict()
        base = self.last_status.get(name) or {
            "state": "stopped", "since": _now(), "messages": 0, "tweets": 0, "bytes": 0,
            "reconnects": 0, "last_error": None, "current_file": None,
        }
        failure = self.failed.get(name)
        if failure is not None:
            return {**base, "state": "failed", "current_file": None, **failure}
        return base

    def _process_view(self, spec: StreamSpec) -> dict[str, Any]:
        """An isolated stream: supervisord's process state, the stream's own counters."""
        own = read_status_file(self.config.daemon.state_dir, spec.name) or {
            "state": "stopped", "since": _now(), "messages": 0, "tweets": 0, "bytes": 0,
            "reconnects": 0, "last_error": None, "current_file": None,
        }
        supervised = self.process_status.get(spec.name)
        status = {key: own.get(key) for key in STATUS_KEYS}
        status["process"] = {
            "program": f"{self.config.supervisor.program_prefix}{spec.name}",
            **(supervised or {"state": "absent", "pid": None}),
        }
        if not spec.active:
            status.update(state="stopped", current_file=None)
        elif self.process_problem:
            status.update(state="stopped" if supervised is None else status["state"],
                          last_error=self.process_problem)
        elif supervised is None or supervised.get("pid") != own.get("pid"):
            # The status file is from an earlier process (or none yet): supervisord's word.
            state = supervised["state"] if supervised else "connecting"
            status.update(state=state, last_error=(supervised or {}).get("last_error")
                          or status["last_error"])
        return status

    def _samples(self) -> Iterator[StreamSample]:
        for spec in self._registry().list() if self.registry else []:
            runner = self.runners.get(spec.name)
            status = self.status_of(spec.name)
            yield StreamSample(
                name=spec.name,
                state=status["state"],
                messages=status["messages"],
                tweets=status["tweets"],
                bytes=status["bytes"],
                reconnects=status["reconnects"],
                limit_undelivered=runner.stream.status.limit_undelivered if runner else 0,
                files_published=runner.archive.published if runner else self._v2_published(spec),
            )

    def _connections(self) -> Iterator[ConnectionSample]:
        for group in self.groups.values():
            status = group.connection_status()
            yield ConnectionSample(
                name=group.name,
                messages=status["messages"],
                unrouted=status["unrouted"],
                errors=status["errors"],
                reconnects=status["reconnects"],
                rules=status["rules"],
            )

    def _v2_published(self, spec: StreamSpec) -> int:
        group = self.groups.get(spec.credential)
        member = group.router.members.get(spec.name) if group is not None else None
        return member.archive.published if member is not None else 0

    def status_line(self) -> str:
        """One line for systemd's STATUS, e.g. "12 streams: 11 streaming, 1 backoff"."""
        return describe_states(self.status_of(s.name)["state"] for s in self.specs())

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "streams": len(self._registry()),
            "uptime": round(time.monotonic() - self.started, 3),
        }
