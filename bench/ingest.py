"""One stream's ingest rate, end to end, from the fake API to files on disk.

Run by hand: `python bench/ingest.py [--messages 100000] [--runs 3] [--data-dir DIR]`.

`sfmd fakeapi` serves ~4.8 KB tweets flat out from its own process, pinned to one core; what
reads them is pinned to the other, so "messages/s" is what one core of the collector can do.
First, readers that discard (curl, then a bare aiohttp loop, then one that also frames and
classifies) show what the fake API and the HTTP client can deliver. Then `sfmd stream` runs as
a real process with compression off, on at level 6 and on at level 1, alternating, and each run
is timed from the moment the fake API saw the request to the last byte of the N-th message in
the `.part` file (its mtime), then stopped with SIGTERM and checked: the manifest must account
for exactly N messages and N * (size + 1) bytes, and the published file must hold them.

CPU is the collector's user+sys time over the same span (all threads), per message, with the
kernel's share shown apart; RSS is the process's peak. Rows alternate, in reverse order every
other round; before each run the bench waits for the rest of the machine to go quiet.
`--against DIR` adds rows for another copy of the sfmd package (before/after figures). Medians
of the runs are printed and, unless `--no-doc`, appended with the machine's facts to
docs/benchmarks.md, which explains the method and the findings.

The config sets `flush_interval` to 0.02 s: at these rates batches fill by size (1 MiB) long
before that, so it only bounds how long the last partial batch waits, which would otherwise
add up to the default 1 s to a two-second run.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from benchlib import cpu_seconds, cpu_times, dated_section, pinned, publish, terminate  # noqa: E402

from sfmd.credentials import load_credentials  # noqa: E402
from sfmd.registry import Registry, validate_stream  # noqa: E402
from sfmd.sources.twitter import oauth  # noqa: E402

STREAM = "bench"
CREDENTIAL = "bench"
MESSAGE_SIZE = 4800
FLUSH_INTERVAL = 0.02
SETTLE = 0.3  # seconds a .part must stay unchanged once the API has sent everything
POLL = 0.005
TIMEOUT = 300.0

CREDENTIALS_TOML = f"""
[{CREDENTIAL}]
consumer_key = "bench-consumer-key"
consumer_secret = "bench-consumer-secret"
access_token = "bench-access-token"
access_token_secret = "bench-access-token-secret"
"""

#: Name -> (compress, level). Level is ignored when compress is off.
MODES: dict[str, tuple[bool, int]] = {
    "plain": (False, 6),
    "gzip-6": (True, 6),
    "gzip-1": (True, 1),
}
READERS = ("curl", "aiohttp", "aiohttp+framing")


class BenchError(Exception):
    """A run did not do what it must (lost messages, a crash): its numbers mean nothing."""


@dataclass
class Result:
    what: str
    rate: float  # messages per second
    cpu_us: float | None = None  # collector CPU (user+sys) per message, microseconds
    sys_us: float | None = None  # the kernel's part of it: socket reads, page-cache writes
    rss_mb: float | None = None  # collector peak RSS
    stop_s: float | None = None  # SIGTERM to exit: final flush, fsync, rename, manifest
    api_cpu_us: float | None = None  # the fake API's CPU per message


@dataclass
class Summary:
    what: str
    results: list[Result] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.results if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    def spread(self) -> str:
        rates = [r.rate for r in self.results]
        return f"{min(rates) / 1000:.0f}k-{max(rates) / 1000:.0f}k" if rates else "-"


# --------------------------------------------------------------------------- process facts







def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def busy_cores(seconds: float = 0.5) -> float:
    """Cores kept busy by anything on the machine over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    cores = os.cpu_count() or 1
    return (busy1 - busy0) / max(total1 - total0, 1) * cores


def wait_for_quiet(limit: float, patience: float) -> float:
    """Wait (up to `patience` s) until other work uses under `limit` cores; the load seen."""
    deadline = time.monotonic() + patience
    load = busy_cores()
    while load > limit and time.monotonic() < deadline:
        print(f"  the machine is busy ({load:.2f} cores in use by others); waiting", flush=True)
        time.sleep(2)
        load = busy_cores()
    return load


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)




# --------------------------------------------------------------------------- the fake API


class FakeAPIProcess:
    """`sfmd fakeapi` in its own process; its log tells when each connection opened."""

    def __init__(self, workdir: Path, total: int, core: int | None) -> None:
        command = [
            sys.executable, "-m", "sfmd", "fakeapi", "--port", "0",
            "--credentials", str(workdir / "credentials.toml"), "--total", str(total),
            "--message-size", str(MESSAGE_SIZE), "--rate", "0",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=pinned(core),
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise BenchError("sfmd fakeapi did not print its URL")
        self.stream_url = self.url + "/1.1"

    def log(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/_fake/log", timeout=10) as answer:
            records: list[dict[str, Any]] = json.load(answer)
        return records

    def connection(self, after: int) -> dict[str, Any] | None:
        """The first stream connection numbered `after` or later, once it answered 200."""
        for record in self.log():
            if record["conn"] >= after and record["first_byte"] is not None:
                if record["status"] != 200:
                    raise BenchError(f"the fake API answered {record['status']}")
                return record
        return None

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        terminate(self.proc, 10)


def stream_request(stream_url: str, track: str | None) -> tuple[str, str, dict[str, str]]:
    """(method, url, parameters) of the bench's stream: a sample, or a filter on `track`."""
    if track is None:
        return "GET", f"{stream_url}/statuses/sample.json", {"stall_warnings": "true"}
    params = {"track": track, "stall_warnings": "true"}
    return "POST", f"{stream_url}/statuses/filter.json", params


class Bench:
    """The fake API, the bench's stream in a registry, and one method per kind of run.

    With `track`, the stream is a filter on that word (the fake API sends every connection
    the same tweets either way); without, a sample stream."""

    def __init__(self, args: argparse.Namespace, workdir: Path, track: str | None = None) -> None:
        self.n: int = args.messages
        self.track = track
        self.overrides: dict[str, dict[str, str]] = {}
        for dotted, value in getattr(args, "set", {}).items():
            section, key = dotted.split(".", 1)
            self.overrides.setdefault(section, {})[key] = value
        self.workdir = workdir
        self.data_root: Path = args.data_dir or workdir
        cores = sorted(os.sched_getaffinity(0))
        pin = not args.no_pin and len(cores) >= 2
        self.api_core = cores[0] if pin else None
        self.client_core = cores[1] if pin else None
        self.credentials_file = workdir / "credentials.toml"
        self.credentials_file.write_text(CREDENTIALS_TOML)
        os.chmod(self.credentials_file, 0o600)
        credentials = load_credentials(self.credentials_file)
        registry = Registry.load(workdir / "state", credentials=credentials.keys())
        settings: dict[str, Any] = {"name": STREAM, "kind": "sample", "credential": CREDENTIAL}
        if track is not None:
            settings.update(kind="filter", track=[track])
        registry.add(validate_stream(settings, credentials=credentials.keys()))
        self.api = FakeAPIProcess(workdir, self.n, self.api_core)
        self.next_conn = 0
        self.profile_dir: Path | None = args.profile
        self.runs: dict[str, int] = {}
        self.framed = MESSAGE_SIZE + 2  # "\r\n" on the wire
        self.stored = MESSAGE_SIZE + 1  # "\n" on disk

    def close(self) -> None:
        self.api.stop()

    # -- helpers -----------------------------------------------------------------------

    def _await_connection(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def opened() -> bool:
            record = self.api.connection(self.next_conn)
            if record is not None:
                found.append(record)
            return record is not None

        wait_for(opened, "the client to connect", timeout=30)
        self.next_conn = found[0]["conn"] + 1
        return found[0]

    def _sent_all(self, conn: int) -> bool:
        record = self.api.log()[conn]
        if record["closed"] is not None and record["sent_count"] < self.n:
            raise BenchError(f"connection {conn} closed early: {record['close_reason']}")
        return bool(record["sent_count"] >= self.n)

    # -- readers that discard ------------------------------------------------------------

    def run_reader(self, kind: str) -> Result:
        api_cpu = self.api.cpu()
        if kind == "curl":
            return self._run_curl(api_cpu)
        level = "frame" if kind == "aiohttp+framing" else "count"
        command = [
            sys.executable, __file__, "--reader", level, "--url", self.api.stream_url,
            "--credentials", str(self.credentials_file), "--messages", str(self.n),
        ]  # fmt: skip
        if self.track is not None:
            command += ["--track", self.track]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            preexec_fn=pinned(self.client_core),
        )
        record = self._await_connection()
        out, _ = proc.communicate(timeout=TIMEOUT)
        if proc.returncode != 0:
            raise BenchError(f"the {kind} reader failed")
        report = json.loads(out)
        elapsed = report["done"] - record["opened"]
        return Result(
            kind,
            self.n / elapsed,
            cpu_us=report["cpu"] / self.n * 1e6,
            rss_mb=report["rss_mb"],
            api_cpu_us=(self.api.cpu() - api_cpu) / self.n * 1e6,
        )

    def curl_command(self) -> list[str]:
        """curl with the stream's signed request; the headers go through a 0600 file, since
        a command line is visible to every user of the machine."""
        method, url, params = stream_request(self.api.stream_url, self.track)
        signed, headers, body = oauth.sign(
            load_credentials(self.credentials_file)[CREDENTIAL], method, url, params
        )
        header_file = self.workdir / "curl-headers.txt"
        header_file.write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
        os.chmod(header_file, 0o600)
        command = ["curl", "-sN", "-H", f"@{header_file}", signed]
        if body is not None:
            command[-1:-1] = ["--data-binary", body]  # the filter's words: no secret
        return command

    def _run_curl(self, api_cpu: float) -> Result:
        curl = subprocess.Popen(
            self.curl_command(),
            stdout=subprocess.PIPE,
            preexec_fn=pinned(self.client_core),
        )
        head = subprocess.Popen(
            ["head", "-c", str(self.n * self.framed)],
            stdin=curl.stdout,
            stdout=subprocess.DEVNULL,
            preexec_fn=pinned(self.client_core),
        )
        assert curl.stdout is not None
        curl.stdout.close()  # head holds the pipe now
        record = self._await_connection()
        head.wait(TIMEOUT)
        done = time.monotonic()
        cpu = cpu_seconds(curl.pid)
        curl.kill()
        curl.wait()
        return Result(
            "curl",
            self.n / (done - record["opened"]),
            cpu_us=cpu / self.n * 1e6,
            api_cpu_us=(self.api.cpu() - api_cpu) / self.n * 1e6,
        )

    # -- sfmd stream ---------------------------------------------------------------------

    def write_config(self, data_dir: Path, compress: bool, level: int) -> Path:
        """sfmd's defaults but for the files' places, the fake API, the mode and
        `self.overrides` ({section: {key: TOML value}}, e.g. from a `--set` option)."""
        settings: dict[str, dict[str, str]] = {
            "daemon": {
                "data_dir": json.dumps(str(data_dir)),
                "state_dir": '"state"',
                "log_dir": '"log"',
                "control_socket": '"sfmd.sock"',
                "save_interval": "86400",
                "compress": "true" if compress else "false",
                "compress_level": str(level),
            },
            "twitter": {
                "stream_url": json.dumps(self.api.stream_url),
                "credentials_file": '"credentials.toml"',
                "default_credential": json.dumps(CREDENTIAL),
            },
            "timing": {"flush_interval": str(FLUSH_INTERVAL)},
        }
        for section, values in self.overrides.items():
            settings.setdefault(section, {}).update(values)
        lines = []
        for section, values in settings.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in values.items()]
        path = self.workdir / "sfmd.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def run_sfmd(self, mode: str, tree: Path | None = None) -> Result:
        """One `sfmd stream` run; `tree` is a folder holding another `sfmd` package to run
        instead of this checkout's (it goes first on PYTHONPATH), for before/after figures."""
        compress, level = MODES[mode]
        env = dict(os.environ)
        if tree is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
        data_dir = Path(tempfile.mkdtemp(prefix="sfmd-bench-data-", dir=self.data_root))
        config = self.write_config(data_dir, compress, level)
        stderr = open(self.workdir / "sfmd-stderr.txt", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sfmd", "stream", STREAM, "--config", str(config)],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            preexec_fn=pinned(self.client_core),
        )
        label = mode if tree is None else f"{mode}@{tree.name}"
        try:
            return self._measure_sfmd(mode, label, proc, data_dir)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr.close()
            shutil.rmtree(data_dir, ignore_errors=True)

    def _measure_sfmd(
        self, mode: str, label: str, proc: subprocess.Popen[bytes], data_dir: Path
    ) -> Result:
        compress = MODES[mode][0]
        api_cpu = self.api.cpu()
        record = self._await_connection()
        user_start, sys_start = cpu_times(proc.pid)
        conn = record["conn"]
        spy = self._profile(label, proc.pid)
        expected = self.n * self.stored

        def check_alive() -> None:
            if proc.poll() is not None:
                raise BenchError(f"sfmd exited with {proc.returncode}: see sfmd-stderr.txt")

        def sent_all() -> bool:
            check_alive()
            return self._sent_all(conn)

        wait_for(sent_all, "the fake API to send every message")
        part = _find_part(data_dir / STREAM)
        began = stable_since = time.monotonic()
        size = -1
        while True:
            check_alive()
            stat = part.stat()
            if stat.st_size != size:
                stable_since, size = time.monotonic(), stat.st_size
            if not compress and size >= expected:
                break
            if time.monotonic() - stable_since >= SETTLE:
                break
            if time.monotonic() - began > TIMEOUT:
                raise BenchError("the .part file never settled")
            time.sleep(POLL)
        last_write = stat.st_mtime_ns / 1e9 - (time.time() - time.monotonic())
        user, system = cpu_times(proc.pid)
        user, system = user - user_start, system - sys_start
        rss = peak_rss_mb(proc.pid)
        api_cpu = self.api.cpu() - api_cpu

        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        stop_s = time.monotonic() - stopping
        if spy is not None:
            spy.wait(30)
        if code != 0:
            raise BenchError(f"sfmd exited with {code} on SIGTERM: see sfmd-stderr.txt")
        self._verify(data_dir, compress, size)
        return Result(
            mode,
            self.n / (last_write - record["opened"]),
            cpu_us=(user + system) / self.n * 1e6,
            sys_us=system / self.n * 1e6,
            rss_mb=rss,
            stop_s=stop_s,
            api_cpu_us=api_cpu / self.n * 1e6,
        )

    def _profile(self, label: str, pid: int) -> subprocess.Popen[bytes] | None:
        """py-spy (if asked for) on the fake API's core, sampling without pausing sfmd."""
        if self.profile_dir is None:
            return None
        self.runs[label] = self.runs.get(label, 0) + 1
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        output = self.profile_dir / f"{label}-{self.runs[label]}.txt"
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [
            py_spy, "record", "--pid", str(pid), "--rate", "1000", "--nonblocking",
            "--threads", "--format", "raw", "--output", str(output),
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pinned(self.api_core),
        )

    def _verify(self, data_dir: Path, compress: bool, settled_size: int) -> None:
        """Nothing lost, nothing added, and the clock stopped only once everything was in."""
        lines = (data_dir / STREAM / "manifest.jsonl").read_text().splitlines()
        entries = [json.loads(line) for line in lines if line]
        messages = sum(e["messages"] for e in entries)
        stored = sum(e["bytes"] for e in entries)
        if messages != self.n or stored != self.n * self.stored:
            raise BenchError(
                f"the manifest holds {messages} messages / {stored} bytes; "
                f"expected {self.n} / {self.n * self.stored}"
            )
        if len(entries) != 1:  # save_interval is a day: only UTC midnight can split a run
            raise BenchError(f"expected one published file, got {len(entries)}; run again")
        path = data_dir / entries[0]["file"]
        raw = path.read_bytes()
        grown = len(raw) - settled_size
        if grown > (64 if compress else 0):  # a gzip trailer, no more
            raise BenchError(f"{grown} bytes were written after the clock stopped")
        if hashlib.sha256(raw).hexdigest() != entries[0]["sha256"]:
            raise BenchError(f"{path.name} does not match its manifest sha256")
        body = gzip.decompress(raw) if compress else raw
        if len(body) != stored or body.count(b"\n") != self.n:
            raise BenchError(f"{path.name} does not hold the {self.n} messages it should")


def _find_part(stream_dir: Path) -> Path:
    found: list[Path] = []

    def exists() -> bool:
        found.extend(stream_dir.rglob("*.part"))
        return bool(found)

    wait_for(exists, "the .part file", timeout=30)
    return found[0]


# --------------------------------------------------------------------------- the raw reader


async def _read(
    level: str, url: str, credentials: Path, total: int, track: str | None
) -> dict[str, float]:
    """Read a stream and discard it: what aiohttp alone (and with our framing) can sustain.

    "count" only adds up bytes (the fake API sends no keep-alive while it streams flat out);
    "frame" runs sfmd's LineFramer and `triage` on every message, as a stream does.
    """
    import aiohttp

    from sfmd.sources.twitter.framing import LineFramer, triage

    method, stream_url, params = stream_request(url, track)
    signed, headers, body = oauth.sign(
        load_credentials(credentials)[CREDENTIAL], method, stream_url, params
    )
    seen = tweets = 0
    framer = LineFramer()
    framed_total = total * (MESSAGE_SIZE + 2)  # "count" counts bytes: no per-byte scan
    timeout = aiohttp.ClientTimeout(total=None, sock_read=90)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(
            method, signed, headers=headers, data=body, read_bufsize=1 << 20
        ) as response,
    ):
        response.raise_for_status()
        began = os.times()
        async for chunk in response.content.iter_any():
            if level == "count":
                seen += len(chunk)
                if seen >= framed_total:
                    break
            else:
                messages = framer.feed(chunk)
                tweets += triage(messages)[0]
                seen += len(messages)
                if seen >= total:
                    break
        done = time.monotonic()
        ended = os.times()
    cpu = ended.user + ended.system - began.user - began.system
    return {"done": done, "cpu": cpu, "tweets": tweets}


def reader_main(args: argparse.Namespace) -> int:
    report = asyncio.run(
        _read(args.reader, args.url, args.credentials, args.messages, args.track)
    )
    report["rss_mb"] = peak_rss_mb(os.getpid())
    print(json.dumps(report))
    return 0


# --------------------------------------------------------------------------- report


def machine_facts(data_root: Path) -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sfmd"],  # the code that runs
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if dirty:
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "Python": platform.python_version(),
        "kernel": platform.release(),
        "data disk": disk_kind(data_root),
        "commit": commit,
    }


def disk_kind(path: Path) -> str:
    """The filesystem holding `path`, its device and whether the kernel calls it rotational."""
    path = path.resolve()
    best: tuple[str, str, str] = ("", "?", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype, *_ = line.split()
        inside = path == Path(mount) or Path(mount) in path.parents
        if inside and len(mount) >= len(best[0]):
            best = (mount, device, fstype)
    mount, device, fstype = best
    if fstype == "tmpfs":
        return "tmpfs (memory)"
    kind = ""
    block = Path("/sys/class/block", Path(device).name)
    rotational = block / "queue" / "rotational"
    if not rotational.exists():
        rotational = block.resolve().parent / "queue" / "rotational"
    if rotational.exists():
        flag = rotational.read_text().strip()
        kind = ", rotational" if flag == "1" else ", non-rotational"
        if Path(device).name.startswith("vd"):
            kind += " (virtio: the flag says little)"
    return f"{fstype} on {device}{kind}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(summaries: list[Summary]) -> str:
    rows = [
        "| reader | messages/s | (min-max) | MB/s | CPU µs/msg | of which sys | peak RSS MB "
        "| SIGTERM→exit s | fake API CPU µs/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        rate = s.median("rate")
        rows.append(
            f"| {s.what} | {_fmt(rate, ',.0f')} | {s.spread()} | "
            f"{_fmt(rate and rate * MESSAGE_SIZE / 1e6, '.0f')} | "
            f"{_fmt(s.median('cpu_us'), '.1f')} | {_fmt(s.median('sys_us'), '.1f')} | "
            f"{_fmt(s.median('rss_mb'), '.0f')} | "
            f"{_fmt(s.median('stop_s'), '.2f')} | {_fmt(s.median('api_cpu_us'), '.1f')} |"
        )
    return "\n".join(rows)


def command_line(args: Any) -> str:
    """The options that shape the figures, as they would be typed (no machine paths)."""
    words = [f"--messages {args.messages}", f"--runs {args.runs}"]
    if args.modes != ",".join(MODES):
        words.append(f"--modes {args.modes}")
    if args.data_dir:
        words.append(f"--data-dir {args.data_dir}")
    if args.against:
        words.append(f"--against {args.against.name}")
    if args.no_pin:
        words.append("--no-pin")
    return " ".join(["bench/ingest.py", *words])


def doc_section(facts: dict[str, str], body: str, args: Any) -> list[str]:
    pinning = "" if args.no_pin else ", fake API and collector pinned to different cores"
    note = f"{pinning}; medians of the runs"
    return dated_section("ingest, one stream", args.title, facts, command_line(args), body, note)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each reader and mode")
    parser.add_argument(
        "--data-dir", type=Path, help="where sfmd writes (default: the temp dir; try /dev/shm)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}"
    )
    parser.add_argument("--no-readers", action="store_true", help="skip the discarding readers")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="also run the sfmd package in DIR (e.g. a worktree of an older commit), "
        "alternating with this checkout's, for before/after figures",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.2,
        metavar="CORES",
        help="before each run, wait while other work uses more than this many cores",
    )
    parser.add_argument(
        "--patience", type=float, default=120.0, help="seconds to wait for quiet, then run anyway"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy each sfmd run into DIR"
    )
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    # The raw reader's own entry point (the bench runs this file as a child).
    parser.add_argument("--reader", choices=("count", "frame"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--credentials", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--track", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reader:
        return reader_main(args)
    modes = [m for m in args.modes.split(",") if m]
    if args.against is not None and not (args.against / "sfmd" / "__init__.py").exists():
        print(f"--against {args.against}: no sfmd package in that folder", file=sys.stderr)
        return 2
    unknown = set(modes) - set(MODES)
    if unknown:
        print(f"unknown mode(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    readers = [] if args.no_readers else [r for r in READERS if r != "curl" or shutil.which("curl")]
    # What to run, by row label: a reader, or (mode, tree) for sfmd.
    plan: dict[str, str | tuple[str, Path | None]] = {r: r for r in readers}
    for mode in modes:
        if args.against is not None:
            plan[f"{mode} @ {args.against.name}"] = (mode, args.against)
        plan[mode] = (mode, None)
    summaries = {what: Summary(what) for what in plan}
    background = 0.0
    with tempfile.TemporaryDirectory(prefix="sfmd-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            for run in range(args.runs):
                # Alternate, and reverse the order every other round: drift, and whatever a
                # run leaves behind for the next one (freed page cache), hit every row alike.
                rows = list(plan.items())
                for what, job in rows if run % 2 == 0 else reversed(rows):
                    load = wait_for_quiet(args.quiet, args.patience)
                    background = max(background, load)
                    if isinstance(job, str):
                        result = bench.run_reader(job)
                    else:
                        result = bench.run_sfmd(*job)
                    summaries[what].results.append(result)
                    print(
                        f"run {run + 1}/{args.runs}  {what:16} {result.rate:10,.0f} messages/s"
                        f"  cpu {_fmt(result.cpu_us, '.1f')} µs/msg"
                        f" (sys {_fmt(result.sys_us, '.1f')})",
                        flush=True,
                    )
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            log = Path(tmp, "sfmd-stderr.txt")
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace")[-3000:])
            return 1
        finally:
            bench.close()
    body = table(list(summaries.values()))
    facts = machine_facts(args.data_dir or Path(tempfile.gettempdir()))
    facts["other load before runs"] = f"up to {background:.2f} cores"
    publish(args.doc, facts, body, doc_section(facts, body, args), args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
