"""Many streams in one daemon: start-up time, memory, CPU and control API latency under load.

Run by hand: `python bench/fanout.py [--streams 1000] [--rate 1]` (or `--streams 200,500,1000`
for the scaling). The project's targets for 1,000 streams: every stream streaming within 30 s
of start-up, at most 150 MB RSS, control API p99 at most 50 ms, and a clean exit on SIGTERM
within 10 s.

For each size N, with real processes only:

1. `sfmd fakeapi --rate R` serves every connection R tweets of 4.8 KB a second. `sfmd run`
   starts with N sample streams already in its registry (one credential each, as Twitter
   requires) and the default timings, `start_jitter` included. The clock runs from spawning
   `sfmd run` until `GET /streams` shows every stream "streaming" with at least one message.
2. A quiet window: the daemon's CPU (user+sys, all threads) while N streams each receive R
   messages a second and nobody calls the API; no rotation falls in it.
3. A load window: one client calls the API a few times a second, a fixed mix of GET /health,
   GET /streams/{name}, GET /streams (every stream: the big answer), GET /metrics and PATCH of
   a filter stream's `track` (a few filters on spare credentials, created through the API when
   the window opens). A PATCH that changes `track` reconnects that filter: the lag from sending
   the PATCH to the fake API receiving the new request comes from the fake API's log, whose
   `opened` stamps are CLOCK_MONOTONIC like ours. `save_interval` is 60 s and the window
   opens 15 s before a rotation boundary, so every run sees all N streams publish a file at
   once, at the same point; samples from the 10 s after the boundary are also shown apart.
4. RSS (VmRSS, and the peak VmHWM) once all are streaming and again after the load window.
5. SIGTERM: the daemon must exit 0 within 10 s, leaving no `.part` file.
6. Unless `--no-api-create`: a fresh daemon with an empty registry, N sample streams created
   one by one through `POST /streams`, timed until all stream.

The daemon is pinned to one core and the fake API and this client to the other (`--no-pin`
turns that off), so the daemon's CPU is its own. `--set SECTION.KEY=VALUE` changes one config
setting (e.g. `--set daemon.compress=false` to see what zlib's state costs in memory), and
`--profile DIR` records the daemon's GIL-holding stacks with py-spy in each window. Results
print as tables and, unless `--no-doc`, are appended with the machine's facts to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import lagprobe
from benchlib import (
    byte_compile,
    cpu_seconds,
    cpu_times,
    dated_section,
    keep_work,
    load_average,
    percentile,
    pinned,
    publish,
    terminate,
)

REPO = Path(__file__).resolve().parent.parent

MESSAGE_SIZE = 4800
FILTERS = 4  # filter streams on spare credentials, for PATCH
SAVE_INTERVAL = 60  # every stream rotates once in the steady windows
ROTATION_WINDOW = 10.0  # seconds after a rotation boundary that count as "during rotation"
SLOWEST = 12  # the load window's slowest requests are printed with their place in the minute
ROTATION_LEAD = 15.0  # the load window opens this long before a rotation boundary
ROTATION_DONE = 12.0  # seconds after a boundary by which every file is published (spread 10 s)
POLL = 0.5  # seconds between GET /streams while waiting for every stream
STARTUP_TIMEOUT = 240.0  # give up: 5,000 streams on a busy 2-core machine took 110 s
#: Give up waiting for the daemon's one freeze after start-up (`startup_freeze`) this long after
#: spawning it: by default it comes at the first reconcile pass 35 s or more after start.
FREEZE_TIMEOUT = 180.0
STOP_LIMIT = 10.0  # the promise: exit within 10 s of SIGTERM

# The load window's request mix: kind -> weight.
MIX: dict[str, float] = {
    "GET /health": 3,
    "GET /streams/{name}": 3,
    "GET /streams": 1,
    "GET /metrics": 0.5,
    "PATCH /streams/{name}": 1,
}
TARGETS = {"start_s": 30.0, "rss_mb": 150.0, "p99_ms": 50.0, "stop_s": STOP_LIMIT}
#: Stricter targets for some sizes (issue "Cheap at scale"): (start-up s, peak RSS MB).
SIZE_TARGETS: dict[int, tuple[float, float]] = {1000: (30.0, 90.0), 5000: (60.0, 400.0)}
LAG_AFTER = 60.0  # the loop-lag probe is judged over this long after a rotation boundary
LAG_TARGET = 0.050  # no stall longer than this in that minute
PER_MESSAGE_RATIO = 2.0  # fan-out CPU per message at most this times one busy stream's


class BenchError(Exception):
    """A run did not do what it must (a crash, a stream that never streams): no numbers."""


# --------------------------------------------------------------------------- process facts





def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB and Threads, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))




#: Samples a second py-spy takes (`start_profile`).
PROFILE_RATE = 200


def start_profile(
    pid: int, output: Path, seconds: float, core: int | None, gil: bool = True
) -> subprocess.Popen[bytes]:
    """py-spy on the other core, sampling without pausing the daemon: the GIL holder's
    stacks, or (`gil=False`) every thread's that is not idle, the loop and the archive's
    worker threads alike."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [
        py_spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE), "--nonblocking",
        *(["--gil"] if gil else ["--threads"]),
        "--function", "--format", "raw", "--duration", str(round(seconds)),
        "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pinned(core)
    )


INCLUSIVE = ("sfmd/", "aiohttp/", "asyncio/", "logging/", "structlog/", "thread (")
#: Leaves where a thread waits (py-spy --nonblocking cannot always tell it is idle): the
#: loop in epoll, a pool thread on its queue. Left out of the shares.
IDLE = ("EpollSelector.select (", "_worker (concurrent/futures/thread.py:69)")


def profile_summary(path: Path, top: int = 12) -> str:
    """Where the samples were (self), and which sfmd/aiohttp functions they passed through."""
    own: dict[str, int] = {}
    through: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE):
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            if any(part in frame for part in INCLUSIVE):
                through[frame] = through.get(frame, 0) + count
    if not total:
        return f"    {path.name}: no samples"
    lines = [f"    {path.name}: {total} samples (busy only); self:"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"      {count / total:6.1%}  {frame}")
    lines.append("    inclusive (sfmd, aiohttp):")
    for frame, count in sorted(through.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"      {count / total:6.1%}  {frame}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the processes


def credentials_toml(names: Iterable[str]) -> str:
    """Random keys: the fake API checks signatures, and nothing here is a real secret."""
    tables = []
    for name in names:
        keys = {
            k: secrets.token_hex(8)
            for k in ("consumer_key", "consumer_secret", "access_token", "access_token_secret")
        }
        tables.append(f"[{name}]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items()))
    return "\n".join(tables)


class FakeAPIProcess:
    """`sfmd fakeapi` in its own process, serving every stream R messages a second."""

    def __init__(self, credentials: Path, rate: float, core: int | None) -> None:
        command = [
            sys.executable, "-m", "sfmd", "fakeapi", "--port", "0",
            "--credentials", str(credentials), "--rate", str(rate),
            "--message-size", str(MESSAGE_SIZE), "--keepalive", "30",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            preexec_fn=pinned(core),
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise BenchError("sfmd fakeapi did not print its URL")
        self.stream_url = self.url + "/1.1"

    def stop(self) -> None:
        terminate(self.proc, 10)


class DaemonProcess:
    """`sfmd run` as a child; `spawned` is when the clock for start-up began."""

    def __init__(
        self,
        workdir: Path,
        config: Path,
        core: int | None,
        probe: Path | None = None,
        code: Path | None = None,
    ) -> None:
        """`code`: a folder holding another version's `sfmd` package, run instead of this
        checkout's (from the work folder, so that this checkout is not on the path)."""
        self.workdir = workdir
        self.stderr_path = workdir / "sfmd-stderr.txt"
        self.probe = probe
        stderr = open(self.stderr_path, "wb")  # the child keeps its own copy of the fd
        launcher = ["-m", "sfmd"]
        if probe is not None:
            launcher = [str(REPO / "bench" / "lagprobe.py"), str(probe)]
        self.spawned = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *launcher, "run", "--config", str(config)],
                cwd=REPO if code is None else workdir, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=pinned(core),
                env=None if code is None else {**os.environ, "PYTHONPATH": str(code)},
            )  # fmt: skip
        finally:
            stderr.close()
        self.pid = self.proc.pid

    async def startup_freeze(self, within: float) -> float | None:
        """When (wall time) the daemon froze what its streams made while connecting: the
        one `gc_freeze` line its log has, waited for until `within` s after spawning. None
        if it never came (a version that does not log it)."""
        log = self.workdir / "log" / "sfmd.log"
        read = 0  # bytes of whole lines looked at: at 5,000 streams the log is 4 MB by then
        while time.monotonic() < self.spawned + within:
            self.check_alive()
            with contextlib.suppress(FileNotFoundError), log.open("rb") as f:
                f.seek(read)
                lines = f.read().split(b"\n")[:-1]  # the last one may be half written
                for line in lines:
                    read += len(line) + 1
                    if b'"gc_freeze"' in line:
                        stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
                        return datetime.fromisoformat(stamp).timestamp()
            await asyncio.sleep(POLL)
        return None

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.stderr_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"sfmd run exited with {self.proc.returncode}: {tail}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def write_config(
    workdir: Path,
    fake: FakeAPIProcess,
    credentials: Path,
    overrides: dict[str, str],
    save_interval: int | None = SAVE_INTERVAL,
) -> Path:
    """sfmd's defaults except where the files go, the fake API, the rotation interval (None:
    sfmd's default) and any `--set SECTION.KEY=VALUE` (a TOML value)."""
    settings: dict[str, dict[str, str]] = {
        "daemon": {
            "data_dir": '"data"',
            "state_dir": '"state"',
            "log_dir": '"log"',
            "control_socket": '"sfmd.sock"',
        },
        "twitter": {
            "stream_url": json.dumps(fake.stream_url),
            "rest_url": json.dumps(fake.stream_url),
            "credentials_file": json.dumps(str(credentials)),
            "default_credential": '"c0000"',
        },
        "timing": {},
    }
    if save_interval is not None:
        settings["daemon"]["save_interval"] = str(save_interval)
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        settings.setdefault(section, {})[key] = value
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
    path = workdir / "sfmd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_registry(state_dir: Path, n: int) -> None:
    """The registry file as sfmd keeps it: faster than N atomic rewrites through the API."""
    streams = [
        {"name": sample_name(i), "kind": "sample", "credential": credential_name(i)}
        for i in range(n)
    ]
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "streams.json").write_text(json.dumps({"version": 1, "streams": streams}))


def sample_name(i: int) -> str:
    return f"s{i:04d}"


def credential_name(i: int) -> str:
    return f"c{i:04d}"


# --------------------------------------------------------------------------- the control API


@dataclass
class Sample:
    kind: str
    sent: float  # monotonic
    wall: float  # time.time() when sent, to place it against rotation boundaries
    seconds: float
    status: int


class Control:
    """One client on the control socket; every call is timed to the last byte of the answer."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path)),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        began = time.monotonic()
        async with self.session.request(method, f"http://sfmd{path}", json=body) as resp:
            raw = await resp.read()
        seconds = time.monotonic() - began
        data = json.loads(raw) if raw and resp.content_type == "application/json" else raw
        return resp.status, data, seconds

    async def answers(self) -> bool:
        try:
            status, _, _ = await self.call("GET", "/health")
        except (aiohttp.ClientError, OSError):
            return False
        return status == 200


def all_streaming(streams: list[dict[str, Any]], names: set[str]) -> tuple[int, int, int]:
    """How many of `names` are started, connected, and streaming with a message stored."""
    started = connected = flowing = 0
    for s in streams:
        if s["name"] not in names:
            continue
        state = s["status"]["state"]
        started += state != "stopped"
        connected += state == "streaming"
        flowing += state == "streaming" and s["status"]["messages"] >= 1
    return started, connected, flowing


async def wait_streaming(
    daemon: DaemonProcess, control: Control, names: set[str], deadline: float, failure: str
) -> None:
    """Poll `GET /streams` until every one of `names` streams with a message stored; a
    BenchError saying `failure` once `deadline` (monotonic) has passed, or if the daemon
    exits meanwhile."""
    while True:
        daemon.check_alive()
        if await control.answers():
            _, body, _ = await control.call("GET", "/streams")
            if all_streaming(body["streams"], names)[2] == len(names):
                return
        if time.monotonic() > deadline:
            raise BenchError(failure)
        await asyncio.sleep(POLL)


# --------------------------------------------------------------------------- one size


@dataclass
class SizeResult:
    n: int
    socket_s: float = 0.0  # spawn -> /health answers
    started_s: float = 0.0  # spawn -> every stream has a task (reconciled)
    connected_s: float = 0.0  # spawn -> every stream "streaming"
    start_s: float = 0.0  # spawn -> every stream streaming with >= 1 message
    rss_start_mb: float = 0.0
    rss_after_mb: float = 0.0
    hwm_mb: float = 0.0
    steady_s: float = 0.0  # from all streaming to the second RSS reading
    threads: int = 0
    fds: int = 0
    cpu_quiet_pct: float = 0.0
    cpu_load_pct: float = 0.0
    api_cpu_pct: float = 0.0  # the fake API's, in the quiet window
    messages_per_s: float = 0.0  # stored by the daemon in the quiet window, all streams
    latency: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    rotation_latency: list[float] = field(default_factory=list)
    # The rest of the load window: the mix's latency with the boundary's seconds left out.
    steady_latency: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reconnect_s: list[float] = field(default_factory=list)  # PATCH sent -> fake API request
    stop_s: float = 0.0
    stop_code: int | None = None
    parts_left: int = 0
    published: int = 0
    create_total_s: float | None = None  # first POST -> all streaming, registry built by API
    create_post_s: list[float] = field(default_factory=list)
    boundary: float = 0.0  # the wall-clock rotation boundary inside the load window
    # The loop-lag probe's late wake-ups: wall clock, lag, loop thread CPU meanwhile (s).
    lags: list[tuple[float, float, float]] = field(default_factory=list)
    lag_window_s: float = 0.0  # how much of the minute after the boundary the probe saw
    label: str = ""  # "" for this checkout, else what --against's code is called

    def lags_after(self) -> list[tuple[float, float, float]]:
        """The late wake-ups in the minute after the boundary."""
        return [x for x in self.lags if self.boundary <= x[0] < self.boundary + LAG_AFTER]

    def worst_loop_cpu(self) -> float:
        return max((x[2] for x in self.lags_after()), default=0.0)


async def clear_of_rotation(span: float, interval: float) -> None:
    """Wait, if need be, until the next `span` seconds hold no rotation boundary (every
    `interval` seconds) and no file of the last one is still being published. A boundary
    inside the quiet window (N streams rotating and publishing) made its CPU figure nearly
    three times what streaming costs: 56.5 % against 19.4 % at 5,000 streams."""
    since = time.time() % interval
    if since < ROTATION_DONE or since + span > interval:
        wait = (ROTATION_DONE - since) % interval
        print(f"  waiting {wait:.0f} s: no rotation in the window", flush=True)
        await asyncio.sleep(wait)


class SizeBench:
    def __init__(
        self,
        args: argparse.Namespace,
        n: int,
        root: Path,
        fake: FakeAPIProcess,
        cores: Any,
        code: Path | None = None,
        label: str = "",
    ) -> None:
        """`code` and `label`: another version's sfmd (see `DaemonProcess`), and its name."""
        self.args = args
        self.n = n
        self.root = root
        self.fake = fake
        self.daemon_core, self.client_core = cores
        self.code = code
        self.result = SizeResult(n, label=label)
        self.names = {sample_name(i) for i in range(n)}

    def _workdir(self, label: str) -> Path:
        workdir = self.root / f"{label}-{self.n}{'-against' if self.code else ''}"
        workdir.mkdir()
        return workdir

    def _spawn(self, workdir: Path, registered: int, probe: bool = False) -> DaemonProcess:
        config = write_config(workdir, self.fake, self.root / "credentials.toml", self.args.set)
        if registered:
            write_registry(workdir / "state", registered)
        lag_file = workdir / "loop-lag.txt" if probe else None
        return DaemonProcess(workdir, config, self.daemon_core, lag_file, self.code)

    async def run(self) -> SizeResult:
        workdir = self._workdir("registered")
        daemon = self._spawn(workdir, self.n, probe=True)
        control = Control(workdir / "sfmd.sock")
        try:
            await self._startup(daemon, control)
            await self._quiet(daemon, control)
            await self._align_to_rotation(daemon)
            await self._load(daemon, control)
            await self._shutdown(daemon, control, workdir)
        finally:
            await control.close()
            daemon.kill()
        if not self.args.no_api_create:
            await self._api_create()
        return self.result

    # -- 1. start-up with N registered --------------------------------------------------

    async def _startup(self, daemon: DaemonProcess, control: Control) -> None:
        r = self.result
        deadline = daemon.spawned + STARTUP_TIMEOUT
        while not await control.answers():
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("the control socket never answered")
            await asyncio.sleep(0.02)
        r.socket_s = time.monotonic() - daemon.spawned
        while True:
            daemon.check_alive()
            _, body, _ = await control.call("GET", "/streams")
            now = time.monotonic() - daemon.spawned
            started, connected, flowing = all_streaming(body["streams"], self.names)
            if started == self.n and not r.started_s:
                r.started_s = now
            if connected == self.n and not r.connected_s:
                r.connected_s = now
            if flowing == self.n:
                r.start_s = now
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"after {STARTUP_TIMEOUT:g} s only {flowing} of {self.n} streams stream"
                )
            await asyncio.sleep(POLL)
        status = proc_status(daemon.pid)
        r.rss_start_mb = status["VmRSS"] / 1024
        self.all_streaming_at = time.monotonic()
        print(
            f"  {self.n} streams: socket {r.socket_s:.2f} s, all started {r.started_s:.2f} s, "
            f"all connected {r.connected_s:.2f} s, all streaming {r.start_s:.2f} s, "
            f"RSS {r.rss_start_mb:.0f} MB",
            flush=True,
        )

    # -- 2. CPU with nobody calling ------------------------------------------------------

    async def _quiet(self, daemon: DaemonProcess, control: Control) -> None:
        r = self.result
        await clear_of_rotation(self.args.quiet + 2, SAVE_INTERVAL)  # 2: its two GETs
        _, before, _ = await control.call("GET", "/streams")
        cpu, api_cpu = cpu_seconds(daemon.pid), cpu_seconds(self.fake.proc.pid)
        began = time.monotonic()
        spy = self._profile(daemon, "quiet", self.args.quiet)
        await asyncio.sleep(self.args.quiet)
        elapsed = time.monotonic() - began
        await self._profiled(spy, "quiet")
        r.cpu_quiet_pct = (cpu_seconds(daemon.pid) - cpu) / elapsed * 100
        r.api_cpu_pct = (cpu_seconds(self.fake.proc.pid) - api_cpu) / elapsed * 100
        _, after, _ = await control.call("GET", "/streams")
        daemon.check_alive()
        count = {s["name"]: s["status"]["messages"] for s in before["streams"]}
        stored = sum(s["status"]["messages"] - count[s["name"]] for s in after["streams"])
        r.messages_per_s = stored / elapsed
        print(
            f"  quiet {elapsed:.0f} s: daemon CPU {r.cpu_quiet_pct:.1f} %, fake API CPU "
            f"{r.api_cpu_pct:.1f} %, {r.messages_per_s:,.0f} messages/s stored",
            flush=True,
        )

    # -- 3. the API under load -----------------------------------------------------------

    async def _align_to_rotation(self, daemon: DaemonProcess) -> None:
        """Idle until a rotation boundary is a third of the load window away, so that every
        run's load window holds exactly one rotation of every stream, at the same moment.

        That boundary comes after start-up is over: the daemon freezes what its streams made
        while connecting once, at its first reconcile pass `start_jitter + connect_timeout`
        (35 s by default) or more after it starts, so about a minute in with the default 30 s
        between passes. That one-off pause (30-100 ms at 1,000 streams) is not the rotation's
        and must not fall in the minute the loop-lag probe judges, so the alignment begins
        once the daemon has logged it."""
        froze = await daemon.startup_freeze(FREEZE_TIMEOUT)
        if froze is None:
            print("  the daemon logged no start-up freeze (gc_freeze); aligning anyway", flush=True)
        lead = min(ROTATION_LEAD, self.args.load / 3)
        wait = (SAVE_INTERVAL - lead - time.time() % SAVE_INTERVAL) % SAVE_INTERVAL
        print(f"  waiting {wait:.0f} s so that the load window holds a rotation", flush=True)
        await asyncio.sleep(wait)
        self.result.boundary = (time.time() // SAVE_INTERVAL + 1) * SAVE_INTERVAL
        daemon.check_alive()

    async def _load(self, daemon: DaemonProcess, control: Control) -> None:
        r = self.result
        rng = random.Random(self.n)
        cpu, began = cpu_seconds(daemon.pid), time.monotonic()
        spy = self._profile(daemon, "load", self.args.load)
        samples: list[Sample] = []
        patches: list[tuple[str, str, float]] = []  # filter, new track, monotonic sent
        filters = [f"f{i}" for i in range(FILTERS)]
        for i, name in enumerate(filters):
            body = {"name": name, "kind": "filter", "track": [f"{name}-0"],
                    "credential": f"x{i}"}  # fmt: skip
            samples.append(await self._timed(control, "POST /streams", "POST", "/streams", body))
        kinds, weights = list(MIX), list(MIX.values())
        interval = 1.0 / self.args.api_rate
        next_at = time.monotonic()
        end = began + self.args.load
        count = 0
        while time.monotonic() < end:
            daemon.check_alive()
            kind = rng.choices(kinds, weights)[0]
            count += 1
            if kind == "GET /health":
                samples.append(await self._timed(control, kind, "GET", "/health"))
            elif kind == "GET /streams":
                samples.append(await self._timed(control, kind, "GET", "/streams"))
            elif kind == "GET /metrics":
                samples.append(await self._timed(control, kind, "GET", "/metrics"))
            elif kind == "GET /streams/{name}":
                name = sample_name(rng.randrange(self.n))
                samples.append(await self._timed(control, kind, "GET", f"/streams/{name}"))
            else:
                name = filters[count % FILTERS]
                track = f"{name}-{count}"
                sample = await self._timed(
                    control, kind, "PATCH", f"/streams/{name}", {"track": [track]}
                )
                samples.append(sample)
                patches.append((name, track, sample.sent))
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        elapsed = time.monotonic() - began
        r.cpu_load_pct = (cpu_seconds(daemon.pid) - cpu) / elapsed * 100
        await self._profiled(spy, "load")
        slowest = sorted(samples, key=lambda s: s.seconds, reverse=True)[:SLOWEST]
        print("  slowest requests (s after the boundary: kind ms): " + ", ".join(
            f"{s.wall % SAVE_INTERVAL:.1f}: {s.kind} {s.seconds * 1000:.0f}" for s in slowest))
        for s in samples:
            r.latency.setdefault(s.kind, []).append(s.seconds)
            if s.wall % SAVE_INTERVAL < ROTATION_WINDOW:
                r.rotation_latency.append(s.seconds)
            else:
                r.steady_latency.append(s.seconds)
        expected = {"POST /streams": 201}
        r.errors = [
            f"{s.kind} answered {s.status}"
            for s in samples
            if s.status != expected.get(s.kind, 200)
        ]
        await self._reconnect_lags(patches)
        status = proc_status(daemon.pid)
        r.rss_after_mb, r.hwm_mb, r.threads = (
            status["VmRSS"] / 1024,
            status["VmHWM"] / 1024,
            status["Threads"],
        )
        r.steady_s = time.monotonic() - self.all_streaming_at
        r.fds = open_fds(daemon.pid)
        print(
            f"  load {elapsed:.0f} s: {len(samples)} requests, daemon CPU {r.cpu_load_pct:.1f} %,"
            f" RSS {r.rss_after_mb:.0f} MB (peak {r.hwm_mb:.0f}), {r.fds} fds, "
            f"{r.threads} threads",
            flush=True,
        )

    def _profile(
        self, daemon: DaemonProcess, label: str, seconds: float
    ) -> subprocess.Popen[bytes] | None:
        if self.args.profile is None:
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        return start_profile(daemon.pid, self._profile_path(label), seconds, self.client_core)

    def _profile_path(self, window: str) -> Path:
        """One file per window and version: `--against` runs the same size twice."""
        assert self.args.profile is not None
        version = f"-{self.result.label}" if self.result.label else ""
        return self.args.profile / f"{self.n}{version}-{window}.txt"

    async def _profiled(self, spy: subprocess.Popen[bytes] | None, label: str) -> None:
        if spy is None:
            return
        try:
            await asyncio.to_thread(spy.wait, 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            return
        output = self._profile_path(label)
        if output.exists():
            print(profile_summary(output), flush=True)

    async def _timed(
        self, control: Control, kind: str, method: str, path: str, body: Any = None
    ) -> Sample:
        wall = time.time()
        sent = time.monotonic()
        status, _, seconds = await control.call(method, path, body)
        return Sample(kind, sent, wall, seconds, status)

    async def _reconnect_lags(self, patches: list[tuple[str, str, float]]) -> None:
        """PATCH sent -> the fake API saw the request with the new track (its `opened`)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.fake.url + "/_fake/log") as resp,
        ):
            records = await resp.json()
        opened = {
            rec["params"].get("track"): rec["opened"]
            for rec in records
            if rec["endpoint"] == "filter"
        }
        for name, track, sent in patches:
            if track in opened:
                self.result.reconnect_s.append(opened[track] - sent)
            else:
                self.result.errors.append(f"PATCH of {name} to {track!r} never reconnected")

    # -- 5. SIGTERM -----------------------------------------------------------------------

    async def _shutdown(self, daemon: DaemonProcess, control: Control, workdir: Path) -> None:
        r = self.result
        # The loop-lag probe is judged over the minute after the boundary: stay that long.
        rest = r.boundary + LAG_AFTER - time.time()
        if rest > 0:
            print(f"  waiting {rest:.0f} s: the minute after the rotation", flush=True)
            await asyncio.sleep(rest)
        r.lag_window_s = min(LAG_AFTER, time.time() - r.boundary)
        # Every thread's busy stacks (not only the GIL holder's): stopping waits on the disk.
        spy = None
        if self.args.profile is not None:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            spy = start_profile(
                daemon.pid, self._profile_path("stop"), STOP_LIMIT * 2, self.client_core,
                gil=False,
            )
        r.stop_s, r.stop_code = await stop_daemon(daemon)
        await self._profiled(spy, "stop")
        if daemon.probe is not None and daemon.probe.exists():
            r.lags = lagprobe.read(daemon.probe)
            after = r.lags_after()
            worst = max(after, default=(0.0, 0.0, 0.0), key=lambda x: x[1])
            print(
                f"  loop lag in the {r.lag_window_s:.0f} s after the boundary: "
                f"{len(after)} wake-ups late by > {lagprobe.RECORD * 1e3:g} ms, worst "
                f"{worst[1] * 1e3:.1f} ms (loop CPU meanwhile {worst[2] * 1e3:.1f} ms); "
                f"worst loop CPU in a late interval {r.worst_loop_cpu() * 1e3:.1f} ms",
                flush=True,
            )
        data = workdir / "data"
        r.parts_left = sum(1 for _ in data.rglob("*.part"))
        r.published = sum(len(p.read_text().splitlines()) for p in data.glob("*/manifest.jsonl"))
        print(
            f"  SIGTERM -> exit {r.stop_code} in {r.stop_s:.2f} s, {r.published} files "
            f"published, {r.parts_left} .part left",
            flush=True,
        )

    # -- 6. the same N created through the API --------------------------------------------

    async def _api_create(self) -> None:
        r = self.result
        workdir = self._workdir("created")
        daemon = self._spawn(workdir, 0)
        control = Control(workdir / "sfmd.sock")
        try:
            while not await control.answers():
                daemon.check_alive()
                await asyncio.sleep(0.02)
            began = time.monotonic()
            for i in range(self.n):
                body = {"name": sample_name(i), "kind": "sample",
                        "credential": credential_name(i)}  # fmt: skip
                status, answer, seconds = await control.call("POST", "/streams", body)
                if status != 201:
                    raise BenchError(f"POST /streams answered {status}: {answer}")
                r.create_post_s.append(seconds)
            await wait_streaming(
                daemon, control, self.names, time.monotonic() + STARTUP_TIMEOUT,
                "streams created through the API never all streamed",
            )
            r.create_total_s = time.monotonic() - began
            posts = r.create_post_s
            tenth = max(1, len(posts) // 10)
            print(
                f"  created through the API: all streaming {r.create_total_s:.1f} s after the "
                f"first POST; POST p50 {statistics.median(posts) * 1e3:.1f} ms, first tenth "
                f"{statistics.median(posts[:tenth]) * 1e3:.1f} ms, last tenth "
                f"{statistics.median(posts[-tenth:]) * 1e3:.1f} ms",
                flush=True,
            )
            code = (await stop_daemon(daemon))[1]
            if code != 0:
                r.errors.append(f"the API-created daemon exited {code} on SIGTERM")
        finally:
            await control.close()
            daemon.kill()


async def stop_daemon(daemon: DaemonProcess) -> tuple[float, int | None]:
    """SIGTERM, then wait (twice the promise, so a slow exit is measured, not cut short)."""
    began = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = await asyncio.to_thread(daemon.proc.wait, 2 * STOP_LIMIT)
    except subprocess.TimeoutExpired:
        code = None
    return time.monotonic() - began, code


# --------------------------------------------------------------------------- CPU per message


@dataclass
class PerMessageRun:
    """One daemon's CPU over a window while its streams stored messages."""

    label: str  # "fan-out" or "busy", with "@before" for the --against code
    streams: int
    rate: float  # messages/s each
    round: int
    messages: int = 0
    seconds: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    load: str = ""  # the machine's load average when the window opened

    @property
    def cpu_us(self) -> float:
        return (self.user_s + self.sys_s) / self.messages * 1e6 if self.messages else 0.0

    @property
    def sys_us(self) -> float:
        return self.sys_s / self.messages * 1e6 if self.messages else 0.0


async def per_message(args: argparse.Namespace, root: Path, cores: Any) -> list[PerMessageRun]:
    """The same total rate and message size two ways, in alternating order: N streams of R
    messages a second, and one stream of N x R; CPU per message of each daemon, all its
    threads, over the same window length. sfmd's defaults throughout (gzip on, save_interval
    900 s, flush_interval 1 s), and no rotation boundary inside a window."""
    daemon_core, other_core = cores
    n, rate = args.per_message, args.rate
    credentials = root / "credentials.toml"
    fakes = {
        "fan-out": FakeAPIProcess(credentials, rate, other_core),
        "busy": FakeAPIProcess(credentials, n * rate, other_core),
    }
    shapes = {"fan-out": (n, rate), "busy": (1, n * rate)}
    labels = ["fan-out", "busy"]
    if args.against is not None:
        labels += ["fan-out@before", "busy@before"]
    runs: list[PerMessageRun] = []
    try:
        for rnd in range(args.rounds):
            order = labels if rnd % 2 == 0 else labels[::-1]
            for label in order:
                shape, _, before = label.partition("@")
                streams, each = shapes[shape]
                run = PerMessageRun(label, streams, each, rnd)
                code = args.against if before else None
                await _per_message_run(
                    args, root, fakes[shape], run, daemon_core, other_core, code
                )
                runs.append(run)
                print(
                    f"  {label} ({streams} x {each:g}/s), round {rnd + 1}: {run.messages:,} "
                    f"messages in {run.seconds:.1f} s, {run.cpu_us:.1f} µs CPU a message "
                    f"({run.sys_us:.1f} sys), RSS {run.rss_mb:.0f} MB, load {run.load}",
                    flush=True,
                )
    finally:
        for fake in fakes.values():
            fake.stop()
    return runs


async def _per_message_run(
    args: argparse.Namespace,
    root: Path,
    fake: FakeAPIProcess,
    run: PerMessageRun,
    daemon_core: int | None,
    other_core: int | None,
    code: Path | None,
) -> None:
    workdir = root / f"per-message-{run.label}-{run.round}"
    workdir.mkdir()
    config = write_config(workdir, fake, root / "credentials.toml", args.set, save_interval=None)
    write_registry(workdir / "state", run.streams)
    names = {sample_name(i) for i in range(run.streams)}
    daemon = DaemonProcess(workdir, config, daemon_core, code=code)
    control = Control(workdir / "sfmd.sock")
    try:
        deadline = daemon.spawned + STARTUP_TIMEOUT
        while not await control.answers():
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("the control socket never answered")
            await asyncio.sleep(0.05)
        await wait_streaming(
            daemon, control, names, deadline, f"per-message {run.label}: not every stream streamed"
        )
        # Settle (start-up's garbage and freezes done), and keep rotation out of the window.
        await asyncio.sleep(args.settle)
        await clear_of_rotation(args.window + 5, 900)  # sfmd's default save_interval
        _, before, _ = await control.call("GET", "/streams")
        user, sys_ = cpu_times(daemon.pid)
        began = time.monotonic()
        run.load = load_average()
        spy = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            output = args.profile / f"per-message-{run.label}-{run.round}.txt"
            spy = start_profile(daemon.pid, output, args.window, other_core, gil=False)
        await asyncio.sleep(args.window)
        user2, sys2 = cpu_times(daemon.pid)
        run.seconds = time.monotonic() - began
        _, after, _ = await control.call("GET", "/streams")
        run.user_s, run.sys_s = user2 - user, sys2 - sys_
        count = {s["name"]: s["status"]["messages"] for s in before["streams"]}
        run.messages = sum(s["status"]["messages"] - count[s["name"]] for s in after["streams"])
        status = proc_status(daemon.pid)
        run.rss_mb, run.hwm_mb = status["VmRSS"] / 1024, status["VmHWM"] / 1024
        if spy is not None:
            try:
                await asyncio.to_thread(spy.wait, 30)
            except subprocess.TimeoutExpired:
                spy.kill()
            if output.exists():
                print(profile_summary(output), flush=True)
        _, code = await stop_daemon(daemon)
        if code != 0:
            raise BenchError(f"per-message {run.label}: sfmd exited {code} on SIGTERM")
    finally:
        await control.close()
        daemon.kill()


def per_message_table(runs: list[PerMessageRun], args: argparse.Namespace) -> str:
    n, rate = args.per_message, args.rate
    out = [
        f"CPU per message, side by side: {n:,} streams x {rate:g} msg/s against 1 stream x "
        f"{n * rate:g} msg/s ({MESSAGE_SIZE} B tweets; sfmd's defaults: gzip level 6, "
        f"flush_interval 1 s, save_interval 900 s with no boundary in a window; "
        f"{args.window:g} s windows after {args.settle:g} s of settling; user+sys of all "
        "the daemon's threads):",
        "",
        "| round | shape | messages | s | CPU µs/msg | of which sys | RSS MB | peak MB "
        "| load average |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        shape = f"{r.label}: {r.streams:,} x {r.rate:g}/s"
        out.append(
            f"| {r.round + 1} | {shape} | {r.messages:,} | {r.seconds:.1f} | {r.cpu_us:.1f} "
            f"| {r.sys_us:.1f} | {r.rss_mb:.0f} | {r.hwm_mb:.0f} | {r.load} |"
        )
    for suffix in ("", "@before"):
        fans = [r for r in runs if r.label == "fan-out" + suffix]
        busies = [r for r in runs if r.label == "busy" + suffix]
        if not fans or not busies:
            continue
        fan = statistics.median(r.cpu_us for r in fans)
        busy = statistics.median(r.cpu_us for r in busies)
        ratio = fan / busy
        rounds = ", ".join(
            f"{f.cpu_us / b.cpu_us:.2f}x" for f, b in zip(fans, busies, strict=False)
        )
        verdict = "met" if ratio <= PER_MESSAGE_RATIO else "**not met**"
        which = f" ({args.against_label})" if suffix else ""
        out += [
            "",
            f"- fan-out{which} {fan:.1f} µs a message against busy {busy:.1f} µs (medians): "
            f"{ratio:.2f}x (by round: {rounds}); target ≤ {PER_MESSAGE_RATIO:g}x: {verdict}",
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------- report


def machine_facts() -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    ram = "unknown"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if dirty:
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "RAM": ram,
        "Python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
    }


def _met(value: float, target: float) -> str:
    return "met" if value <= target else "**not met**"


def _size(r: SizeResult) -> str:
    return f"{r.n:,} ({r.label})" if r.label else f"{r.n:,}"


def tables(results: list[SizeResult], args: argparse.Namespace) -> str:
    out = [
        "| streams | socket s | all started s | all connected s | all streaming s | RSS then MB "
        "| RSS after MB | peak MB | CPU % quiet | CPU % API load | msgs/s stored | fds | threads "
        "| SIGTERM→exit s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        out.append(
            f"| {_size(r)} | {r.socket_s:.2f} | {r.started_s:.2f} | {r.connected_s:.2f} "
            f"| {r.start_s:.2f} | {r.rss_start_mb:.0f} | {r.rss_after_mb:.0f} | {r.hwm_mb:.0f} "
            f"| {r.cpu_quiet_pct:.1f} | {r.cpu_load_pct:.1f} | {r.messages_per_s:,.0f} "
            f"| {r.fds:,} | {r.threads} | {r.stop_s:.2f} (exit {r.stop_code}) |"
        )
    out += [
        "",
        "Control API latency under load, client side, ms (one client, "
        f"~{args.api_rate:g} requests/s for {args.load:g} s; filter reconnect = PATCH sent → "
        "the fake API receives the new request):",
        "",
        "| streams | request | n | p50 | p95 | p99 | max |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows = [*r.latency.items(), (f"any, ≤{ROTATION_WINDOW:g} s after a rotation",
                                     r.rotation_latency),
                ("any, at other times", r.steady_latency),
                ("filter reconnect", r.reconnect_s)]  # fmt: skip
        for kind, values in rows:
            if not values:
                continue
            ms = [v * 1e3 for v in values]
            out.append(
                f"| {_size(r)} | {kind} | {len(ms)} | {percentile(ms, 50):.1f} "
                f"| {percentile(ms, 95):.1f} | {percentile(ms, 99):.1f} | {max(ms):.1f} |"
            )
    created = [r for r in results if r.create_total_s is not None]
    if created:
        out += [
            "",
            "The same streams created one by one through `POST /streams` on an empty daemon:",
            "",
            "| streams | first POST → all streaming s | POST p50 ms | POST p99 ms | POST max ms "
            "| first tenth p50 ms | last tenth p50 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in created:
            ms = [v * 1e3 for v in r.create_post_s]
            tenth = max(1, len(ms) // 10)
            out.append(
                f"| {_size(r)} | {r.create_total_s:.1f} | {percentile(ms, 50):.1f} "
                f"| {percentile(ms, 99):.1f} | {max(ms):.1f} "
                f"| {statistics.median(ms[:tenth]):.1f} | {statistics.median(ms[-tenth:]):.1f} |"
            )
    return "\n".join(out)


def verdicts(results: list[SizeResult]) -> str:
    """The targets, judged at every size that has its own (1,000 and 5,000 streams), else on
    the largest size run."""
    judged = [r for r in results if r.n in SIZE_TARGETS] or [
        r for r in results if r.n == max(x.n for x in results)
    ]
    lines: list[str] = []
    for r in judged:
        lines += _verdict(r)
    errors = [e for res in results for e in res.errors]
    if errors:
        lines.append(f"- errors: {'; '.join(errors[:10])}")
    return "\n".join(lines)


def _verdict(r: SizeResult) -> list[str]:
    start_target, rss_target = SIZE_TARGETS.get(r.n, (TARGETS["start_s"], TARGETS["rss_mb"]))
    api = [v for kind, values in r.latency.items() if kind != "POST /streams" for v in values]
    p99 = percentile(api, 99) * 1e3 if api else float("nan")
    worst = max(
        ((kind, percentile(v, 99) * 1e3) for kind, v in r.latency.items() if v),
        key=lambda kv: kv[1],
    )
    stopped = r.stop_code == 0 and r.stop_s <= STOP_LIMIT and not r.parts_left
    after = r.lags_after()
    stall = max((x[1] for x in after), default=0.0)
    lines = [
        f"Targets, at {_size(r)} streams:",
        "",
        f"- start-up to all streaming ≤ {start_target:g} s: {r.start_s:.1f} s, "
        f"{_met(r.start_s, start_target)}",
        f"- peak RSS ≤ {rss_target:g} MB: {r.rss_start_mb:.0f} MB when all streamed, "
        f"{r.rss_after_mb:.0f} MB after {r.steady_s:.0f} s, peak {r.hwm_mb:.0f} MB: "
        f"{_met(r.hwm_mb, rss_target)}",
        f"- control API p99 ≤ {TARGETS['p99_ms']:g} ms: {p99:.1f} ms over every request of the "
        f"mix, {_met(p99, TARGETS['p99_ms'])}; worst kind: {worst[0]} at {worst[1]:.1f} ms, "
        f"{_met(worst[1], TARGETS['p99_ms'])}",
        f"- no event-loop stall > {LAG_TARGET * 1e3:g} ms in the {r.lag_window_s:.0f} s after "
        f"a rotation boundary (loop-lag probe, a wake-up asked every "
        f"{lagprobe.INTERVAL * 1e3:g} ms): worst {stall * 1e3:.1f} ms, {len(after)} wake-ups "
        f"late by > {lagprobe.RECORD * 1e3:g} ms, {_met(stall, LAG_TARGET)}; the loop thread's "
        f"own CPU time within a late interval at most {r.worst_loop_cpu() * 1e3:.1f} ms "
        f"(the rest of a lag is the core given to other processes, or the GIL)",
        f"- SIGTERM → exit 0 within {STOP_LIMIT:g} s: {r.stop_s:.2f} s, exit {r.stop_code}, "
        f"{r.parts_left} .part left: "
        f"{'met' if stopped else '**not met**'}",
        "",
    ]
    return lines


def doc_section(facts: dict[str, str], body: str, args: argparse.Namespace) -> list[str]:
    sizes = ", ".join(f"{n:,}" for n in args.sizes)
    pin = "" if args.no_pin else "; daemon pinned to one core, fake API and client to the other"
    settings = "".join(f" --set {k}={v}" for k, v in args.set.items())
    command = f"bench/fanout.py --streams {','.join(map(str, args.sizes))} --rate {args.rate:g}"
    if args.per_message:
        command += f" --per-message {args.per_message} --rounds {args.rounds}"
    if args.against:
        command += f" --against DIR ({args.against_label})"
    note = (
        f" (quiet {args.quiet:g} s, load {args.load:g} s, save_interval {SAVE_INTERVAL} s, "
        f"otherwise sfmd's defaults; modules byte-compiled, as pip installs them; "
        f"{MESSAGE_SIZE} B tweets{pin})"
    )
    heading = f"fan-out, {sizes} streams in one daemon"
    return dated_section(heading, args.title, facts, command + settings, body, note)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--streams", default="1000", help="stream counts, comma-separated (default 1000)"
    )
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per stream")
    parser.add_argument("--quiet", type=float, default=15.0, help="seconds of the CPU window")
    parser.add_argument("--load", type=float, default=60.0, help="seconds of API load")
    parser.add_argument("--api-rate", type=float, default=8.0, help="API requests per second")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config setting (a TOML value), e.g. timing.flush_interval=5; repeatable",
    )
    parser.add_argument(
        "--no-api-create", action="store_true", help="skip creating the streams through the API"
    )
    parser.add_argument(
        "--per-message",
        type=int,
        default=0,
        metavar="N",
        help="also compare CPU per message: N streams x RATE against 1 stream x N*RATE",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --per-message")
    parser.add_argument(
        "--window", type=float, default=30.0, help="seconds of each --per-message window"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after all stream, before a window"
    )
    parser.add_argument(
        "--no-sizes", action="store_true", help="only the --per-message comparison"
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="also run the sfmd package in DIR (another version), alternating with this one",
    )
    parser.add_argument(
        "--against-label", default="before", help="what --against's rows are called in the doc"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the daemon's windows into DIR"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="copy the work dirs (logs, data) into DIR"
    )
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument(
        "--doc", type=Path, default=REPO / "docs" / "benchmarks.md", help="the file to append to"
    )
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.streams.split(",") if s]
    args.set = dict(item.split("=", 1) for item in args.set)
    if any("." not in key for key in args.set):
        parser.error("--set takes SECTION.KEY=VALUE")
    if not args.sizes or min(args.sizes) < 1 or max(args.sizes) > 9999:
        parser.error("--streams: counts between 1 and 9999")
    return args


async def run_all(args: argparse.Namespace, root: Path) -> list[SizeResult]:
    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    daemon_core, other_core = (cores[-1], cores[0]) if pin else (None, None)
    if other_core is not None:
        os.sched_setaffinity(0, {other_core})  # this client shares a core with the fake API
    byte_compile(REPO / "sfmd")
    if args.against is not None:
        byte_compile(args.against / "sfmd")
    credentials = root / "credentials.toml"
    names = [credential_name(i) for i in range(max(*args.sizes, args.per_message))]
    names += [f"x{i}" for i in range(FILTERS)]
    credentials.write_text(credentials_toml(names))
    os.chmod(credentials, 0o600)
    results: list[SizeResult] = []
    if not args.no_sizes:
        fake = FakeAPIProcess(credentials, args.rate, other_core)
        try:
            for n in args.sizes:
                print(f"{n} streams", flush=True)
                versions: list[tuple[Path | None, str]] = [(None, "")]
                if args.against is not None:
                    versions.append((args.against, args.against_label))
                    if len(results) // 2 % 2:
                        versions.reverse()  # alternate which runs first, size by size
                for code, label in versions:
                    if label:
                        print(f"  ({label})", flush=True)
                    bench = SizeBench(args, n, root, fake, (daemon_core, other_core), code, label)
                    results.append(await bench.run())
        finally:
            fake.stop()
    if args.per_message:
        print(f"CPU per message: {args.per_message} streams against one", flush=True)
        args.per_message_runs = await per_message(args, root, (daemon_core, other_core))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sfmd-fanout-") as tmp:
        try:
            results = asyncio.run(run_all(args, Path(tmp)))
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
        finally:
            keep_work(tmp, args.keep)
    parts = []
    if results:
        parts += [tables(results, args), verdicts(results)]
    if args.per_message:
        parts.append(per_message_table(args.per_message_runs, args))
    body = "\n\n".join(parts)
    facts = machine_facts()
    publish(args.doc, facts, body, doc_section(facts, body, args), args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
