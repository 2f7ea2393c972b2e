"""supervisord as the back end for process-isolated streams (`Mode.PROCESS`).

`ProcessStreams` turns registry specs into conf files (`ops.confs`) and applies them through
supervisord's API (`ops.supervisord`), starting the programs that should run;
`ProcessBackend` is the daemon reconciler's view of it. Each stream process reports its
counters in a status file the daemon reads.

The conf holds a fingerprint of what the stream sends to Twitter (`SFMD_SETTINGS`): a change
to the filter changes the conf, so supervisord sees the program as changed and restarts it;
any other change leaves the running process alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sfmd.config import Config
from sfmd.credentials import Credential
from sfmd.logs import get_logger
from sfmd.ops.confs import (
    ConfError,
    check_host,
    owned_confs,
    program_name,
    render_program,
    sync_confs,
)
from sfmd.ops.supervisord import (
    Fault,
    SupervisorClient,
    SupervisorError,
    SupervisorFault,
    SupervisorUnavailable,
    apply,
)
from sfmd.registry import Mode, StreamSpec
from sfmd.runtime.backend import Desired
from sfmd.status import State, StreamStatus


def status_path(state_dir: Path, name: str) -> Path:
    return state_dir / "status" / f"{name}.json"


def write_status_file(state_dir: Path, name: str, status: dict[str, Any]) -> None:
    """Where a process-isolated stream tells the daemon its counters (rename: never torn).

    No fsync: the file is a live view, rewritten every few seconds, worthless after a crash.
    """
    path = status_path(state_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**status, "pid": os.getpid()}))
    os.replace(tmp, path)


def read_status_file(state_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        value = json.loads(status_path(state_dir, name).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# --- the reconciler's back end -----------------------------------------------------------------

#: supervisord's process state → a STREAM's status state, as the control API shows it.
STREAM_STATES = {
    "STOPPED": State.STOPPED.value,
    "STOPPING": State.STOPPED.value,
    "STARTING": State.CONNECTING.value,
    "RUNNING": State.STREAMING.value,
    "BACKOFF": State.BACKOFF.value,
    "EXITED": State.FAILED.value,
    "FATAL": State.FAILED.value,
    "UNKNOWN": State.FAILED.value,
}


def settings_fingerprint(spec: StreamSpec) -> str:
    """A short hash of what the stream asks its network for: no filter text, but changes with
    it. A process reads its settings when it starts, so a Bluesky stream's new collections or
    DIDs (an options_update for a task) restart its process too."""
    asked: tuple[object, ...] = spec.connection_key()
    if spec.source == "bluesky":
        asked = (*asked, spec.collections, spec.dids)
    return hashlib.sha256(repr(asked).encode()).hexdigest()[:16]


class ProcessStreams:
    """Streams with isolation = "process": one supervisord program each.

    `reconcile(specs)` is the whole job, safe to repeat at any moment: write our confs to match
    the specs, apply them, and start any of ours that should run but does not. supervisord may
    be down: the confs are on disk regardless (supervisord reads them when it starts), and the
    next reconcile applies them.
    """

    def __init__(
        self,
        config: Config,
        *,
        sfmd_command: Sequence[str] | None = None,
        client: SupervisorClient | None = None,
    ) -> None:
        self.config = config
        self.sfmd_command = list(sfmd_command or [sys.executable, "-m", "sfmd"])
        self.client = client or SupervisorClient(config.supervisor.server_url)
        # Confs removed but not yet applied (supervisord was down): apply even if none remain.
        self._unapplied = False

    @property
    def prefix(self) -> str:
        return self.config.supervisor.program_prefix

    def render(self, spec: StreamSpec) -> str:
        """The conf for one stream (also what `sfmd supervisor-conf NAME` prints)."""
        if self.config.path is None:
            raise ConfError("process isolation needs sfmd to run from a config file")
        return render_program(
            spec.name,
            config_path=self.config.path,
            sfmd_command=self.sfmd_command,
            program_prefix=self.prefix,
            user=self.config.supervisor.user,
            log_dir=self.config.daemon.log_dir,
            environment={"SFMD_SETTINGS": settings_fingerprint(spec)},
        )

    @staticmethod
    def wanted(specs: Iterable[StreamSpec]) -> list[StreamSpec]:
        return [s for s in specs if s.active and s.mode is Mode.PROCESS]

    async def reconcile(self, specs: Iterable[StreamSpec]) -> dict[str, Any]:
        """Confs and supervisord made to match `specs`; a report of what was done.

        The report has "written" and "deleted" (conf files, by stream name), then either the
        `apply` report plus "started", or "waiting" (supervisord unreachable or shutting
        down) or "error" (a broken conf elsewhere, a refused login). With no isolated stream
        and nothing left to undo, supervisord is not contacted at all. Raises ConfError when
        no conf can be written (bad paths, an unknown user).
        """
        wanted = self.wanted(specs)
        confs = {spec.name: self.render(spec) for spec in wanted}
        supervisor = self.config.supervisor
        if confs:
            check_host(supervisor.user, self.config.daemon.log_dir)
        written, deleted = await asyncio.to_thread(
            sync_confs, supervisor.conf_dir, self.prefix, confs
        )
        report: dict[str, Any] = {"written": written, "deleted": deleted}
        self._unapplied |= bool(deleted)
        if not confs and not self._unapplied:
            return report  # no isolated stream: supervisord need not even exist
        try:
            report.update(await apply(self.client, self.prefix))
            self._unapplied = False
            report["started"] = await self._start_stopped(
                {program_name(self.prefix, n) for n in confs},
                skip=set(report["added"]) | set(report["changed"]),
            )
        except SupervisorUnavailable as e:
            report["waiting"] = f"waiting for supervisord: {e}"
        except SupervisorFault as e:
            if e.code == Fault.SHUTDOWN_STATE:
                report["waiting"] = "waiting for supervisord: it is shutting down"
            else:
                report["error"] = str(e)  # CantReread: someone's broken conf, named
        except SupervisorError as e:
            report["error"] = str(e)  # a login it wants, an answer that is not XML-RPC
        return report

    async def _start_stopped(self, programs: set[str], skip: set[str]) -> list[str]:
        """Start our programs that should run but sit stopped, exited or FATAL."""
        started = []
        for info in await self.client.get_all_process_info():
            name = info["name"]
            if name not in programs or name in skip:
                continue
            if info["statename"] in ("STOPPED", "EXITED", "FATAL"):
                try:
                    await self.client.start_process(name, wait=False)
                except SupervisorFault as f:
                    if f.code != Fault.ALREADY_STARTED:
                        raise
                started.append(name)
        return sorted(started)

    async def statuses(self) -> dict[str, dict[str, Any]]:
        """stream name → {"state", "since", "pid", "last_error"} for each of our programs."""
        out: dict[str, dict[str, Any]] = {}
        for info in await self.client.get_all_process_info():
            name = info["name"]
            if info["group"] != name or not name.startswith(self.prefix):
                continue
            out[name[len(self.prefix) :]] = process_status(info)
        return out

    def conf_names(self) -> list[str]:
        """Stream names with a conf of ours on disk."""
        return sorted(owned_confs(self.config.supervisor.conf_dir, self.prefix))

    async def close(self) -> None:
        await self.client.close()


def process_status(info: dict[str, Any]) -> dict[str, Any]:
    """A STREAM status's state/since/pid/last_error from supervisord's getProcessInfo."""
    statename = info.get("statename", "UNKNOWN")
    moment = info.get("start") if statename in ("STARTING", "RUNNING") else info.get("stop")
    since = datetime.fromtimestamp(moment or info.get("now") or 0, UTC)
    failed = statename in ("BACKOFF", "EXITED", "FATAL", "UNKNOWN")
    return {
        "state": STREAM_STATES.get(statename, State.FAILED.value),
        "since": since.isoformat().replace("+00:00", "Z"),
        "pid": info.get("pid") or None,
        "last_error": (info.get("spawnerr") or info.get("description")) if failed else None,
    }


log = get_logger()


class ProcessBackend:
    """The daemon's view of process-isolated streams (`Mode.PROCESS`): supervisord runs them,
    this keeps their confs and programs equal to the registry and reads their status."""

    def __init__(
        self,
        config: Config,
        streams: ProcessStreams | None = None,
        credentials: Callable[[], Mapping[str, Credential]] | None = None,
    ) -> None:
        self.config = config
        self.streams = streams or ProcessStreams(config)
        self.credentials = credentials or dict
        self.supervised: dict[str, dict[str, Any]] = {}  # from supervisord, per reconcile
        self.problem: str | None = None  # "waiting for supervisord: ..." or an error
        # The credential each running program read when it started, as far as this daemon
        # knows (from when it first saw the program): new keys restart the program.
        self.keys: dict[str, Credential | None] = {}

    async def stop_unwanted(self, desired: Desired) -> None:
        """All of supervisord's work (stops and starts) happens in this first pass: a
        stream moving to a task is stopped here before the task back end starts it, and
        one moving here is stopped as a task before this pass runs again."""
        wanted = list(desired.active(Mode.PROCESS).values())
        try:
            report = await self.streams.reconcile(wanted)
        except ConfError as e:
            problem: str | None = f"cannot write supervisor confs: {e}"
            report = {}
        else:
            problem = report.get("waiting") or report.get("error")
        if problem != self.problem:
            if problem:
                log.warning("supervisor_problem", problem=problem)
            elif self.problem:
                log.info("supervisor_reachable")
            self.problem = problem
        changes = {k: v for k, v in report.items() if k not in ("waiting", "error") and v}
        if changes:
            log.info("supervisor_applied", **changes)
        if problem is None and wanted:
            try:
                await self._renew(wanted, skip=set(report.get("changed", [])))
                self.supervised = await self.streams.statuses()
            except SupervisorError as e:
                self.problem = f"waiting for supervisord: {e}"
        elif problem is None:
            self.supervised = {}

    async def _renew(self, wanted: list[StreamSpec], skip: set[str]) -> None:
        """Restart the programs whose credential's keys changed (a reload): a stream process
        reads the credentials file when it starts. `skip`: programs supervisord restarts
        anyway (their conf changed)."""
        keys = self.credentials()
        self.keys = {s.name: self.keys.get(s.name, keys.get(s.credential)) for s in wanted}
        for spec in wanted:
            now = keys.get(spec.credential)
            if self.keys[spec.name] == now:
                continue
            self.keys[spec.name] = now
            program = program_name(self.streams.prefix, spec.name)
            if program in skip:
                continue
            log.info("stream_state", stream=spec.name, state="restarting",
                     reason="its credential's keys changed in the credentials file")
            try:
                await self.streams.client.stop_process(program, wait=True)
            except SupervisorFault as f:
                if f.code != Fault.NOT_RUNNING:
                    raise
            await self.streams.client.start_process(program, wait=False)

    async def start_wanted(self, desired: Desired, *, jitter: float = 0.0) -> None:
        """Nothing: supervisord started what it should in `stop_unwanted`."""

    def status(self, spec: StreamSpec) -> StreamStatus:
        """An isolated stream: supervisord's process state, the stream's own counters."""
        own = read_status_file(self.config.daemon.state_dir, spec.name) or {}
        supervised = self.supervised.get(spec.name)
        status = StreamStatus.from_dict(own)
        status.process = {
            "program": f"{self.config.supervisor.program_prefix}{spec.name}",
            **(supervised or {"state": "absent", "pid": None}),
        }
        if not spec.active:
            status.state, status.current_file = State.STOPPED, None
            status.down_since = status.next_attempt = None  # stopped on purpose: not down
        elif self.problem:
            if supervised is None:
                status.state = State.STOPPED
            status.last_error = self.problem
        elif supervised is None or supervised.get("pid") != own.get("pid"):
            # The status file is from an earlier process (or none yet): supervisord's word.
            status.state = State(supervised["state"]) if supervised else State.CONNECTING
            status.last_error = (supervised or {}).get("last_error") or status.last_error
        return status

    async def close(self) -> None:
        """Process-isolated streams keep running: supervisord owns them, not this daemon."""
        await self.streams.close()
