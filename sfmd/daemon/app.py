"""The daemon: every stream in one process, kept equal to the registry.

The registry is the desired state; the reconciler makes the running streams match it at
start-up, after every change through the control API, and on a timer. Nothing depends on
remembering what was half-done: after any failure, reconciling again puts things right.

Lifecycle, as uvicorn names it: `startup()` (load, claim the socket, start streams),
`main_loop()` (reconcile on a timer until told to stop), `shutdown()` (close the socket, stop
every stream, publishing its open file). `serve()` runs the three. What a change must pass is
`admission`'s; what the daemon shows is `views`'; running streams is the back ends' (`runtime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from sfmd.archive.coverage import keep_alive
from sfmd.changes import Changes
from sfmd.config import SECTIONS, Config, ConfigError, load_config
from sfmd.credentials import (
    Credential,
    CredentialsError,
    credentials_problems,
    load_credentials,
)
from sfmd.daemon import allocator
from sfmd.daemon.admission import Admission
from sfmd.daemon.heap import Heap
from sfmd.daemon.views import Views
from sfmd.errors import Refused, SfmdError
from sfmd.logs import get_logger
from sfmd.ops.systemd import Notifier, watchdog_loop
from sfmd.registry import Mode, Registry, RegistryError, StreamSpec, ValidationError
from sfmd.runtime.backend import Backend, Desired, Ledger
from sfmd.runtime.processes import ProcessBackend
from sfmd.runtime.shared import SharedBackend
from sfmd.runtime.tasks import ClusterHooks, TaskBackend, new_session, source_context
from sfmd.sources import source_of

if TYPE_CHECKING:  # nats-py is loaded only in cluster mode
    from sfmd.cluster.kvregistry import KVRegistry
    from sfmd.cluster.member import ClusterMember

log = get_logger()

#: How often a PATCH is checked again when another change to the same stream got in while
#: its network checks ran; past this it is refused as a conflict.
ADMISSION_TRIES = 3


class StartupError(SfmdError):
    """Something an operator must fix before sfmd can start; the message says what."""


class ReloadRefused(Refused):
    """The credentials file as it is now would stop start-up; the ones in use stay."""

    status = 422
    code = "reload_refused"


class NotClustered(Refused):
    """A cluster request ([cluster] drain) to a host that runs alone."""

    status = 409
    code = "not_clustered"


class NotFound(Refused):
    """No stream by that name (the API's 404)."""

    status = 404
    code = "not_found"


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.credentials: dict[str, Credential] = {}
        # Each stream's credential problem (or None) for its spec, judged on these credentials.
        self._problems: dict[str, tuple[StreamSpec, str | None]] = {}
        self._problems_of: Mapping[str, Credential] = self.credentials
        # The last pass's outcome (a restart's first half aside), with the registry's version
        # and the credentials it was made from: the pass after a change to one stream starts
        # from it (`_after_change`).
        self._passed: tuple[int, Mapping[str, Credential], Desired] | None = None
        self.registry: Registry | KVRegistry | None = None
        self.cluster: ClusterMember | None = None  # cluster mode: this host's membership
        self.session: aiohttp.ClientSession | None = None
        self.ledger = Ledger()
        self._lock = asyncio.Lock()  # one change or reconcile at a time
        # Freeze again once the streams have connected: see Heap.
        self.heap = Heap(
            config.timing.gc_interval,
            freeze_after=config.timing.start_jitter + config.timing.connect_timeout,
        )
        self._stop = asyncio.Event()
        self._alive: asyncio.Task[None] | None = None
        hooks = self._cluster_hooks() if config.cluster.nats_url else None
        self.processes = ProcessBackend(config, credentials=self._credentials)
        self.changes = Changes()  # which streams changed what they show: for `views`
        self.tasks = TaskBackend(
            config, self._session, self._credentials, self.ledger,
            reconcile=self.reconcile, lock=self._lock, hooks=hooks, changes=self.changes,
        )
        self.shared = SharedBackend(config, self._session, self._credentials, self.ledger, hooks)
        self.views = Views(self)
        self.admission = Admission(
            config,
            self._credentials,
            lambda: source_context(config, self._session()),
            lambda spec: self.shared.rules_in_use(spec.slot, self.specs()),
        )

    def _cluster_hooks(self) -> ClusterHooks:
        """What every archive and source gets from cluster mode; the member exists from
        start-up on, before any stream starts."""

        def member() -> ClusterMember:
            assert self.cluster is not None, "startup() joins the cluster"
            return self.cluster

        return ClusterHooks(
            fence=lambda slot: member().fence(slot),
            on_manifest=lambda name, line: member().manifest_line(name, line),
            saved_point=lambda name: member().saved_point(name),
            made=lambda name, archive: member().archive_made(name, archive),
        )

    @property
    def backends(self) -> tuple[Backend, ...]:
        """In the order of each pass: tasks let go of their slots before supervisord's
        programs take them, and the other way round."""
        return (self.tasks, self.processes, self.shared)

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(
        self,
        control: Any = None,
        notifier: Notifier | None = None,
        started: Callable[[], None] | None = None,
    ) -> None:
        """startup → main_loop → shutdown; `control` is the API server (started after load),
        `notifier` tells systemd (READY, STATUS, WATCHDOG, STOPPING) when it asked to know,
        `started` is called once start-up has succeeded."""
        notifier = notifier or Notifier(None)
        try:
            await self.startup(control)
        except StartupError as e:
            # One line with the reason: nothing started, so no shutdown/stopped lines.
            log.error("startup_failed", reason=str(e))
            await self._abandon(control)
            raise
        if started is not None:
            started()
        notifier.ready(self.views.status_line())
        pinger = asyncio.create_task(watchdog_loop(notifier, self.views.status_line))
        try:
            await self.main_loop()
        finally:
            notifier.stopping(f"stopping {len(self.tasks.runners)} streams")
            try:
                await self.shutdown(control)
            finally:
                pinger.cancel()

    async def startup(self, control: Any = None) -> None:
        """Load and check everything, then serve and start the streams; a StartupError
        (the reason an operator must fix) leaves nothing running. `control` should have
        claimed its socket already (`ControlServer.claim`): a second daemon must be turned
        away before it touches anything of the first one's."""
        try:
            self.credentials = load_credentials(self.config.twitter.credentials_file)
            twitter = self.config.twitter
            problems = credentials_problems(
                self.credentials, twitter.default_credential, twitter.credentials_file
            )
            if problems:
                raise StartupError("; ".join(problems))
            if not self.config.cluster.nats_url:
                # Not checked against the credentials here: a stream whose credential is
                # gone is marked failed with the reason, the others run.
                self.registry = Registry.load(self.config.daemon.state_dir)
        except (CredentialsError, RegistryError) as e:
            raise StartupError(str(e)) from None
        if self.config.cluster.nats_url:
            await self._join_cluster()
        assert self.registry is not None
        for leftover in self.registry.remove_leftovers():
            log.info("registry_leftover_removed", file=leftover.name)
        for key in ("data_dir", "state_dir"):
            writable(key, getattr(self.config.daemon, key))
        self.session = new_session()
        # A sign of life for coverage: after a crash, each stream's downtime begins at the
        # last one (within flush_interval).
        self._alive = asyncio.create_task(
            keep_alive(self.config.daemon.data_dir, self.config.timing.flush_interval)
        )
        if control is not None:
            await control.start()
        log.info("startup", streams=len(self.registry), config=str(self.config.path))
        async with self._lock:
            await self._reconcile(jitter=self.config.timing.start_jitter)
        if self.cluster is not None:
            self.cluster.start(self.reconcile, self._running_states, self.restart_here)
        self.heap.settle()

    async def _join_cluster(self) -> None:
        """Cluster mode: the registry is the bucket's, and slots are run under leases."""
        from sfmd.cluster.errors import ClusterError
        from sfmd.cluster.member import ClusterMember

        try:
            self.cluster = await ClusterMember.open(self.config)
        except (ClusterError, RegistryError) as e:
            raise StartupError(str(e)) from None
        self.registry = self.cluster.registry

    def _running_states(self) -> dict[str, str]:
        """The state of each stream this host runs, for its heartbeat."""
        cluster = self.cluster
        assert cluster is not None
        return {
            spec.name: self.views.status_of(spec).state.value
            for spec in self.specs() if spec.active and spec.slot in cluster.held
        }

    async def _abandon(self, control: Any = None) -> None:
        """Undo a start-up that failed part-way, quietly: nothing had started streaming."""
        if control is not None:
            await control.stop()
        if self._alive is not None:
            self._alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._alive
        if self.session is not None:
            await self.session.close()
        if self.cluster is not None:
            await self.cluster.close()

    async def main_loop(self) -> None:
        trimmer = asyncio.create_task(self._trim_every(self.config.timing.trim_interval))
        try:
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
                                 seconds=round(collection.seconds, 3))
        finally:
            trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trimmer

    @staticmethod
    async def _trim_every(interval: float) -> None:
        """What the batches and rotations freed goes back to the system (see allocator),
        from a worker thread: it walks the C heap. Every few seconds, not only after a
        reconcile pass: at 5,000 streams a rotation frees 70-80 MB within ten seconds."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(allocator.trim)

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self, control: Any = None) -> None:
        """Close the socket first (no change may start mid-shutdown), then stop every stream."""
        log.info("shutdown", streams=len(self.tasks.runners))
        if control is not None:
            await control.stop()
        if self.cluster is not None:  # no pass may start streams again meanwhile
            await self.cluster.stop_background()
        async with self._lock:
            await asyncio.gather(self.tasks.close(), self.shared.close())
        await self.processes.close()
        if self.cluster is not None:  # every stream stopped: their leases may go
            await self.cluster.close()
        if self.session is not None:
            await self.session.close()
        if self._alive is not None:
            self._alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._alive
        log.info("stopped")

    # -- reconciling -------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """The periodic pass: also asks the v2 rules API whether its rules drifted."""
        if self._stop.is_set():
            return  # shutting down: nothing may start again
        async with self._lock:
            self.shared.check_rules = True
            try:
                await self._reconcile()
            finally:
                self.shared.check_rules = False

    async def _reconcile(
        self, jitter: float = 0.0, without: str | None = None, changed: str | None = None
    ) -> None:
        """Make every back end match the registry: all stops first, then all starts.
        `without` names a stream to treat as stopped for this pass (a restart's first
        half); `changed`, the one stream the caller changed in the registry since the last
        pass (`_after_change`). Call with the lock held."""
        registry = self._registry()
        self.ledger.keep_failures_of(
            lambda name: name != without and name in registry and registry.get(name).active
        )
        desired = self._after_change(registry, changed) if changed is not None else None
        if desired is None:
            specs = self._runnable(registry.list(), without)
            if self.cluster is not None:
                specs = await self.cluster.claim(specs)
            desired = Desired(specs)
        for backend in self.backends:
            await backend.stop_unwanted(desired)
        for backend in self.backends:
            await backend.start_wanted(desired, jitter=jitter)
        if self.cluster is not None:
            await self.cluster.release_moved()
        if without is None and isinstance(registry, Registry):
            self._passed = (registry.version, self.credentials, desired)

    def _after_change(self, registry: Registry | KVRegistry, name: str) -> Desired | None:
        """The last pass's `Desired` with stream `name` as the registry holds it now, when
        the registry's one write since that pass was to `name` and the credentials are the
        same: every other stream's verdict then stands, and the pass need not judge 5,000
        streams again for one. None when anything else may have moved (a write not followed
        by a pass, a reload, cluster mode's claims): the pass is then whole."""
        passed = self._passed
        if (
            passed is None
            or self.cluster is not None
            or not isinstance(registry, Registry)
            or registry.version != passed[0] + 1
            or self.credentials is not passed[1]
            or self._problems_of is not self.credentials
        ):
            return None
        if name not in registry:
            self._problems.pop(name, None)
            return passed[2].changed(name, None)
        return passed[2].changed(name, self._runnable_one(registry.get(name)))

    def _runnable(self, specs: list[StreamSpec], without: str | None = None) -> list[StreamSpec]:
        """The registry as the back ends should see it: a stream whose credential cannot
        serve it (a key missing, the credential gone from the file) is marked failed with
        the reason and runs nowhere, instead of crash-looping in its back end. `without`
        is inactive for this pass (`_reconcile`)."""
        if self._problems_of is not self.credentials:  # reloaded: judge every stream again
            self._problems, self._problems_of = {}, self.credentials
        if len(self._problems) > len(specs):  # streams were deleted: forget their verdicts
            # Only theirs: judging every other stream again was most of a DELETE at 5,000.
            names = {spec.name for spec in specs}
            self._problems = {n: v for n, v in self._problems.items() if n in names}
        return [self._runnable_one(spec, without) for spec in specs]

    def _runnable_one(self, spec: StreamSpec, without: str | None = None) -> StreamSpec:
        """`spec` as the back ends should see it (`_runnable`)."""
        if spec.name == without:
            spec = dataclasses.replace(spec, active=False)
        problem = (
            (self._cluster_problem(spec) or self._credential_problem(spec))
            if spec.active else None
        )
        if problem:
            self.ledger.fail(spec.name, problem)
            spec = dataclasses.replace(spec, active=False)
        return spec

    def _credential_problem(self, spec: StreamSpec) -> str | None:
        """Why `spec`'s credential cannot serve it, or None: judged again only for a new
        spec or new credentials (a pass asks it of every stream: at 5,000 streams it was a
        fifth of the pass)."""
        earlier = self._problems.get(spec.name)
        if earlier is not None and earlier[0] is spec:
            return earlier[1]
        problem = source_of(spec).credential_problem(spec, self.credentials)
        self._problems[spec.name] = (spec, problem)
        return problem

    # -- changes (the control API calls these) ------------------------------------------------

    async def create(self, body: object) -> StreamSpec:
        await self._fresh()
        spec = self.admission.new(body, self._registry())
        spec = await self.admission.ask_network(spec, None)  # without the lock
        async with self._lock:
            # Checked again: another change may have taken the name or the slot meanwhile.
            def check(registry: Any) -> None:
                self.admission.fits(spec, registry, new=True)
                self._fits_cluster(spec)

            if self.cluster is not None:  # checked on the newest document, each try
                await self.cluster.registry.add(spec, check=check)
            else:
                registry = self._registry()
                check(registry)
                # Written (and fsynced) in a thread: the loop keeps serving streams and
                # readers, who see the old registry or the new one, never a half.
                await asyncio.to_thread(registry.add, spec)
            self.ledger.forget(spec.name)
            await self._reconcile(changed=spec.name)
            return spec

    async def modify(self, name: str, body: object) -> StreamSpec:
        await self._fresh()
        for _ in range(ADMISSION_TRIES):
            old = self.spec(name)
            new = self.admission.changed(old, body, self._registry())
            new = await self.admission.ask_network(new, old)  # without the lock
            async with self._lock:
                if self.spec(name) is not old:
                    continue  # changed underneath while the network answered: check again
                if new != old:
                    await self._replace(new, old)
                    await self._reconcile(changed=name)
                return new
        raise _conflict(name)

    async def _replace(self, new: StreamSpec, old: StreamSpec) -> None:
        def check(registry: Any) -> None:
            self.admission.fits(new, registry, new=False)
            self._fits_cluster(new)

        if self.cluster is not None:
            # A change to the stream through another host meanwhile is a 409 (Conflict):
            # never applied over settings its author did not see.
            try:
                await self.cluster.registry.replace(new, based_on=old, check=check)
            except KeyError:
                raise NotFound(f"no stream named {new.name!r}") from None
        else:
            check(self._registry())
            await asyncio.to_thread(self._registry().replace, new)

    def _cluster_problem(self, spec: StreamSpec) -> str | None:
        """What cluster mode cannot run: a supervisord program reads its stream from the
        registry file, which a cluster does not use, and its writes could not be fenced."""
        if self.cluster is not None and spec.mode is Mode.PROCESS:
            return ("isolation = process is not available in cluster mode (the program "
                    "could not be fenced by its lease); use isolation = task")
        return None

    def _fits_cluster(self, spec: StreamSpec) -> None:
        problem = self._cluster_problem(spec) if spec.active else None
        if problem:
            raise ValidationError("invalid", "isolation", problem)

    async def _fresh(self) -> None:
        """Cluster mode: read the registry again before a change is checked, so it is
        judged on what every host sees (the compare-and-set still decides)."""
        if self.cluster is None:
            return
        from sfmd.cluster.errors import Unavailable
        from sfmd.cluster.lease import NATS_FAILURES

        try:
            await self.cluster.registry.refresh()
        except NATS_FAILURES as e:
            raise Unavailable(
                f"NATS did not answer ({type(e).__name__}); nothing was changed"
            ) from None

    async def set_active(self, name: str, active: bool) -> StreamSpec:
        return await self.modify(name, {"active": active})

    async def delete(self, name: str) -> None:
        await self._fresh()
        async with self._lock:
            if self.spec(name).mode is Mode.SHARED:  # 404 before anything changes
                self.shared.forgotten.add(name)  # its rules' tags stay recognisably sfmd's
            if self.cluster is not None:
                try:
                    await self.cluster.registry.remove(name)
                except KeyError:
                    raise NotFound(f"no stream named {name!r}") from None
            else:
                await asyncio.to_thread(self._registry().remove, name)
            await self._reconcile(changed=name)
            self.ledger.forget(name)
            self.tasks.forget(name)
            self.changes.forget(name)
        if self.cluster is not None:
            await self.cluster.forget(name)

    async def restart(self, name: str) -> StreamSpec:
        """Stop the stream and start it again, as one change: a fresh connection (and file).
        An inactive stream is started, as `supervisorctl restart` starts a stopped program.
        The registry is written only when the stream was inactive."""
        spec = await self.known(name)  # 404 first
        if not spec.active:
            return await self.set_active(name, True)
        if self.cluster is not None:
            holder = self.cluster.holder(spec.slot)
            if holder is not None and holder != self.cluster.host_id:
                # The host that runs it restarts it; this one only passes the word on.
                await self.cluster.ask_restart(holder, name)
                return self.spec(name)
        return await self.restart_here(name)

    async def restart_here(self, name: str) -> StreamSpec:
        """`restart` of a stream this host runs (or should run)."""
        async with self._lock:
            self.tasks.forget(name)  # a person asked: no crash backoff to sit out
            await self._reconcile(without=name)
            await self._reconcile()
            log.info("stream_restarted", stream=name)
            return self.spec(name)

    async def reload(self) -> dict[str, Any]:
        """Read the credentials file again (its mode checked again) and apply it: streams
        whose credential changed reconnect, streams failed for a credential that now serves
        them start, streams whose credential vanished fail with the reason (as a restart of
        sfmd would leave them). A file that would stop start-up is refused (`ReloadRefused`)
        and the credentials in use stay. The report names what changed, and each affected
        stream's state."""
        twitter = self.config.twitter
        try:
            new = await asyncio.to_thread(load_credentials, twitter.credentials_file)
            problems = credentials_problems(
                new, twitter.default_credential, twitter.credentials_file
            )
            if problems:
                raise CredentialsError("; ".join(problems))
        except CredentialsError as e:
            log.error("reload_refused", reason=str(e))
            raise ReloadRefused(
                f"{e}; nothing was reloaded: the credentials in use stay"
            ) from None
        async with self._lock:
            old, self.credentials = self.credentials, new
            changes = {
                "added": sorted(set(new) - set(old)),
                "changed": sorted(n for n in set(new) & set(old) if new[n] != old[n]),
                "removed": sorted(set(old) - set(new)),
            }
            touched = {n for names in changes.values() for n in names}
            log.info("credentials_reloaded", **changes)
            await self._reconcile()
            affected = [s for s in self.specs() if s.active and s.credential in touched]
            streams = []
            for spec in affected:
                status = self.views.status_of(spec)
                streams.append({"name": spec.name, "credential": spec.credential,
                                "state": status.state.value, "last_error": status.last_error})
        return {"credentials": changes, "streams": streams, "config": self._config_news()}

    def _config_news(self) -> dict[str, Any]:
        """What a reload does not apply: the config file's keys that changed since start-up
        (they take effect at the next start), or why a start would now refuse the file."""
        news: dict[str, Any] = {"needs_restart": [], "error": None}
        if self.config.path is None:
            return news
        try:
            now = load_config(self.config.path)
        except ConfigError as e:
            news["error"] = str(e)
            log.warning("config_broken", error=news["error"],
                        note="the running daemon is unaffected; a restart would fail")
            return news
        for section in SECTIONS:
            old, new = getattr(self.config, section), getattr(now, section)
            news["needs_restart"] += [
                f"[{section}] {f.name}" for f in dataclasses.fields(old)
                if getattr(old, f.name) != getattr(new, f.name)
            ]
        if news["needs_restart"]:
            log.warning("config_needs_restart", keys=news["needs_restart"])
        return news

    async def reload_quietly(self) -> None:
        """`reload` for SIGHUP: nobody waits for an answer, so a refusal goes to the log."""
        with contextlib.suppress(ReloadRefused):  # logged by reload()
            await self.reload()

    def _registry(self) -> Registry | KVRegistry:
        assert self.registry is not None, "startup() loads the registry"
        return self.registry

    def _credentials(self) -> Mapping[str, Credential]:
        return self.credentials

    def _session(self) -> aiohttp.ClientSession:
        assert self.session is not None, "startup() opens the session"
        return self.session

    # -- the cluster -------------------------------------------------------------------------

    async def cluster_report(self) -> dict[str, Any]:
        """GET /cluster: the hosts and who holds which connection; one host alone says so."""
        if self.cluster is None:
            return {"enabled": False, "host": None, "hosts": [], "connections": []}
        return await self.cluster.report()

    async def drain(self, host: str, *, undo: bool = False) -> dict[str, Any]:
        """Move every connection off `host` (placement gives it none), or undo that."""
        if self.cluster is None:
            raise NotClustered(
                "this sfmd runs alone ([cluster] nats_url is empty): there is no other host "
                "to move its connections to"
            )
        return await self.cluster.drain(host, undo=undo)

    # -- reading -----------------------------------------------------------------------------

    async def known(self, name: str) -> StreamSpec:
        """`spec(name)` before a change: in cluster mode the registry is read again first,
        so a stream just created through another host is found rather than a 404."""
        await self._fresh()
        return self.spec(name)

    def spec(self, name: str) -> StreamSpec:
        try:
            return self._registry().get(name)
        except KeyError:
            raise NotFound(f"no stream named {name!r}") from None

    def specs(self) -> list[StreamSpec]:
        return self._registry().list()


def _conflict(name: str) -> Refused:
    return Refused(
        f"stream {name!r} kept changing while this change was checked; try again",
        status=409, code="conflict",
    )


def writable(key: str, folder: Path) -> None:
    """Make `folder` if need be and prove this user can write in it, so a start that could
    store nothing is refused with the reason rather than failing every stream."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".sfmd-probe-"):
            pass
    except OSError as e:
        raise StartupError(
            f"[daemon] {key} {folder} is not writable by this user: {e.strerror}; fix its "
            "owner or mode, or point the config elsewhere"
        ) from None
