"""Replay catch-up of a Jetstream backlog: sfmd against a plain client, compressed wire.

Run by hand: `python bench/jetstream_replay.py [--events 1000000] [--runs 2] [--span 86400]`.

The fake Jetstream instance (`sfmd.fake.FakeAPI`) runs in a process of its own, pinned to
one core, holding `--events` events whose `time_us` are spread evenly over the last `--span`
seconds (a day's backlog of a busy filter; `--span 0` makes them with `jetstream_produce`,
all within about a second). The fake renders an event's JSON and its zstd frame on demand
(about 65 µs each, which would cap it far below either client), so before the runs its server
process renders every event once and keeps them all (it raises the fake's render cache to the
store's size); serving then costs only the WebSocket writes.

What reads the replay runs pinned to the other core, one at a time, alternating:

- **sfmd**: a real `sfmd stream bench` process with one Bluesky stream (`collections =
  ["app.bsky.*"]`: every event), `[bluesky] compress = true` (zstd frames with Jetstream's
  dictionary) and gzip on disk at sfmd's default level 6. Its data folder is seeded first,
  through sfmd's own `Archive`, with one published file holding one identity event whose
  `time_us` is one µs before the store's oldest event: sfmd's resume point (the newest
  `time_us` in its files, less `rewind`) then lies before the store, and the instance clamps
  the replay to its oldest event. Timed from the connection (the fake's log) to the last
  write of the N-th event into the `.part` file (its mtime, once the fake has sent all N and
  the file has stopped growing); then SIGTERM publishes, and the published files must hold
  exactly the N events of the store, each once.
- **sfmd-plain**: the same with `[daemon] compress = false`: sfmd writes plain `.jsonl`
  files (and seeds one), to compare like for like with **plain**, as **sfmd** compares with
  **plain+gzip**.
- **plain** and **plain+gzip**: this file run as a child (`--client`): aiohttp's `ws_connect`
  with the same query, each binary frame inflated with `zstandard` and the same dictionary,
  written with "\\n" to a file (`open`, or `gzip.open` at level 6, sfmd's default), nothing
  else. Timed from the connection to the N-th event written and the file closed.

CPU is the reader's user+sys over the same span (sfmd: all threads, from /proc; the plain
client: `os.times()` in the process), per event. Medians are printed and, unless `--no-doc`,
appended with the machine's facts and load averages to docs/benchmarks.md. `--profile DIR`
records each sfmd run with py-spy (raw collapsed stacks) and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(BENCH))

from benchlib import cpu_seconds, cpu_times, dated_section, load_average, pinned, publish, terminate  # noqa: E402
from ingest import busy_cores, machine_facts, peak_rss_mb  # noqa: E402

STREAM = "bench"
CREDENTIAL = "bench"
COLLECTIONS = ["app.bsky.*"]  # every commit; identity and account events pass any filter
DICTIONARY = REPO / "sfmd" / "sources" / "bluesky" / "legacy_subscribe.zdict"
SEED_DID = "did:plc:benchseedbenchseedbenchse"
FLUSH_INTERVAL = 0.1  # bounds the wait for the last partial batch; batches fill by size first
SETTLE = 1.0  # seconds a .part must stay unchanged once the fake has sent everything
POLL = 0.05
TIMEOUT = 900.0
ROWS = ("sfmd", "sfmd-plain", "plain", "plain+gzip")
SFMD_ROWS = {"sfmd": True, "sfmd-plain": False}  # the row: whether sfmd gzips its files

CREDENTIALS_TOML = f"""
[{CREDENTIAL}]
consumer_key = "bench-consumer-key"
consumer_secret = "bench-consumer-secret"
access_token = "bench-access-token"
access_token_secret = "bench-access-token-secret"
"""


class BenchError(Exception):
    """A run did not do what it must (lost or doubled events, a crash): its numbers mean
    nothing."""


@dataclass
class Result:
    rate: float  # events per second
    cpu_us: float  # reader CPU (user+sys) per event
    sys_us: float | None
    rss_mb: float
    api_cpu_us: float  # the fake's CPU per event over the same run
    load: str  # load averages before the run


@dataclass
class Summary:
    what: str
    results: list[Result] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.results if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    def spread(self, attr: str, scale: float = 1.0, spec: str = ".0f") -> str:
        values = [getattr(r, attr) / scale for r in self.results]
        return f"{min(values):{spec}}-{max(values):{spec}}" if values else "-"


def wait_for(predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)


# --------------------------------------------------------------------------- the fake instance


async def _serve(events: int, span: float, seed: int) -> None:
    """The child that hosts the fake instance: fill the store, render it, serve till SIGTERM."""
    import sfmd.fake.jetstream as fake_jetstream
    from sfmd.fake import FakeAPI

    fake_jetstream._CACHE = events + 4096  # keep every rendered event: see the docstring
    api = FakeAPI(
        jetstream_rate=0,
        jetstream_window=span + 86400,
        jetstream_seed=seed,
        jetstream_outbox=0,
        jetstream_ping_interval=30,
    )
    await api.start()
    store = api.jetstream.store
    began = time.monotonic()
    if span > 0:
        step = int(span * 1e6) // events
        first = time.time_ns() // 1000 - step * events
        for i in range(events):
            store.append(first + i * step)
    else:
        api.jetstream_produce(events)
    for index in range(store.first, store.end):
        store.frame(index)  # render and compress once
    sizes = sum(len(store.event(i).text) for i in range(store.first, store.end))
    facts = {
        "url": api.url,
        "jetstream_url": api.jetstream_url,
        "first_us": store.time_of(store.first),
        "last_us": store.last_us,
        "count": store.end - store.first,
        "mean_bytes": sizes / max(1, store.end - store.first),
        "render_s": time.monotonic() - began,
    }
    print(json.dumps(facts), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await api.stop()


class FakeInstance:
    def __init__(self, args: argparse.Namespace, core: int | None) -> None:
        command = [
            sys.executable, __file__, "--serve", "--events", str(args.events),
            "--span", str(args.span), "--seed", str(args.seed),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, preexec_fn=pinned(core)
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("{"):
            self.stop()
            raise BenchError("the fake instance did not start")
        self.facts: dict[str, Any] = json.loads(line)
        self.url: str = self.facts["url"]
        self.jetstream_url: str = self.facts["jetstream_url"]
        self.next_conn = 0

    def log(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/_fake/log", timeout=30) as answer:
            records: list[dict[str, Any]] = json.load(answer)
        return records

    def await_connection(self) -> dict[str, Any]:
        """The next upgraded Jetstream connection."""
        found: list[dict[str, Any]] = []

        def opened() -> bool:
            for record in self.log()[self.next_conn :]:
                if record["endpoint"] == "jetstream" and record["first_byte"] is not None:
                    if record["status"] != 101:
                        raise BenchError(f"the fake answered {record['status']}")
                    found.append(record)
                    return True
            return False

        wait_for(opened, "the client to connect", timeout=60)
        self.next_conn = found[0]["conn"] + 1
        return found[0]

    def record(self, conn: int) -> dict[str, Any]:
        return self.log()[conn]

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        terminate(self.proc, 30)


# --------------------------------------------------------------------------- the plain client


async def _plain(url: str, query: list[tuple[str, str]], events: int, f: Any) -> dict[str, Any]:
    import aiohttp
    import zstandard

    inflate = zstandard.ZstdDecompressor(
        dict_data=zstandard.ZstdCompressionDict(DICTIONARY.read_bytes())
    ).decompress
    count = 0
    first_us = last_us = None
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, params=query, max_msg_size=64 << 20, compress=0) as ws,
    ):
        began = os.times()
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            text = inflate(msg.data)
            f.write(text + b"\n")
            count += 1
            if count == 1:
                first_us = text
            if count >= events:
                last_us = text
                break
        f.close()
        done = time.monotonic()
        ended = os.times()
    cpu = ended.user + ended.system - began.user - began.system
    return {
        "done": done, "cpu": cpu, "sys": ended.system - began.system, "count": count,
        "first": _time_us(first_us), "last": _time_us(last_us),
        "rss_mb": peak_rss_mb(os.getpid()),  # not ru_maxrss: that survives the exec
    }  # fmt: skip


def _time_us(line: bytes | None) -> int | None:
    if line is None:
        return None
    at = line.find(b'"time_us":') + 10
    stop = at
    while line[stop : stop + 1].isdigit():
        stop += 1
    return int(line[at:stop])


def query(cursor: int) -> list[tuple[str, str]]:
    """What sfmd asks for (sfmd.sources.bluesky.jetstream.Subscription.query)."""
    return [*(("wantedCollections", c) for c in COLLECTIONS), ("cursor", str(cursor)),
            ("compress", "true")]


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.n: int = args.events
        self.workdir = workdir
        self.data_root: Path = args.data_dir or workdir
        cores = sorted(os.sched_getaffinity(0))
        pin = not args.no_pin and len(cores) >= 2
        self.api_core = cores[0] if pin else None
        self.client_core = cores[1] if pin else None
        self.fake = FakeInstance(args, self.api_core)
        facts = self.fake.facts
        if facts["count"] != self.n:
            raise BenchError(f"the fake holds {facts['count']} events, not {self.n}")
        self.first_us: int = facts["first_us"]
        self.last_us: int = facts["last_us"]
        self.runs: dict[str, int] = {}
        self.profiles: list[Path] = []

    def close(self) -> None:
        self.fake.stop()

    def _check_replay(self, record: dict[str, Any]) -> None:
        summary = record.get("summary") or {}
        if summary.get("start_us") != self.first_us or not summary.get("compress"):
            raise BenchError(f"the replay did not start at the oldest event: {summary}")

    # -- sfmd ------------------------------------------------------------------------------

    def _setup_sfmd(self, data_dir: Path, compress: bool) -> Path:
        from sfmd.credentials import load_credentials
        from sfmd.registry import Registry, validate_stream

        creds = self.workdir / "credentials.toml"
        creds.write_text(CREDENTIALS_TOML)
        os.chmod(creds, 0o600)
        state = self.workdir / "state"
        shutil.rmtree(state, ignore_errors=True)
        keys = load_credentials(creds).keys()
        registry = Registry.load(state, credentials=keys)
        body = {"name": STREAM, "source": "bluesky", "kind": "jetstream",
                "collections": COLLECTIONS}
        registry.add(validate_stream(body, credentials=keys))
        config = self.workdir / "sfmd.toml"
        config.write_text(
            "[daemon]\n"
            f"data_dir = {json.dumps(str(data_dir))}\n"
            'state_dir = "state"\nlog_dir = "log"\ncontrol_socket = "sfmd.sock"\n'
            f"save_interval = 86400\ncompress = {json.dumps(compress)}\n"
            '[twitter]\ncredentials_file = "credentials.toml"\n'
            f"default_credential = {json.dumps(CREDENTIAL)}\n"
            f"[timing]\nflush_interval = {FLUSH_INTERVAL}\n"
            f"[bluesky]\njetstream_url = {json.dumps(self.fake.jetstream_url)}\n"
            "compress = true\nrewind = 10\nidle_timeout = 60\n"
        )
        asyncio.run(self._seed(data_dir, compress))
        return config

    async def _seed(self, data_dir: Path, compress: bool) -> None:
        """One published file whose newest event is 1 µs before the store's oldest."""
        from sfmd.archive import Archive
        from sfmd.sources.bluesky.events import count_commits

        seed = json.dumps({
            "did": SEED_DID, "time_us": self.first_us - 1, "kind": "identity",
            "identity": {"did": SEED_DID, "handle": "seed.invalid", "seq": 1,
                         "time": "2024-01-01T00:00:00.000Z"},
        }, separators=(",", ":")).encode()  # fmt: skip
        quiet = structlog.wrap_logger(  # errors only: no line for the seed's publication
            structlog.PrintLogger(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        )
        archive = Archive(data_dir, STREAM, save_interval=86400, compress=compress,
                          count=count_commits, log=quiet)
        await archive.open()
        await archive.write([seed], 0)
        await archive.close()

    def run_sfmd(self, compress: bool) -> Result:
        data_dir = Path(tempfile.mkdtemp(prefix="sfmd-replay-data-", dir=self.data_root))
        config = self._setup_sfmd(data_dir, compress)
        seeded = {e["file"] for e in _manifest(data_dir)}
        stderr = open(self.workdir / "sfmd-stderr.txt", "wb")
        load = load_average()
        api_cpu = self.fake.cpu()
        proc = subprocess.Popen(
            [sys.executable, "-m", "sfmd", "stream", STREAM, "--config", str(config)],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=pinned(self.client_core),
        )
        try:
            return self._measure_sfmd(proc, data_dir, seeded, api_cpu, load, compress)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr.close()
            shutil.rmtree(data_dir, ignore_errors=True)

    def _measure_sfmd(self, proc: subprocess.Popen[bytes], data_dir: Path, seeded: set[str],
                      api_cpu: float, load: str, compress: bool) -> Result:
        record = self.fake.await_connection()
        user0, sys0 = cpu_times(proc.pid)
        self._check_replay(record)
        conn = record["conn"]
        spy = self._profile(proc.pid)

        def sent_all() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"sfmd exited with {proc.returncode}: see sfmd-stderr.txt")
            now = self.fake.record(conn)
            if now["closed"] is not None and now["sent_count"] < self.n:
                raise BenchError(f"connection {conn} closed early: {now['close_reason']}")
            return bool(now["sent_count"] >= self.n)

        wait_for(sent_all, "the fake to send every event")
        parts: list[Path] = []
        wait_for(lambda: bool(parts.extend(data_dir.rglob("*.part")) or parts), "the .part")
        part = parts[0]
        stable_since, size = time.monotonic(), -1
        while time.monotonic() - stable_since < SETTLE:
            stat = part.stat()
            if stat.st_size != size:
                stable_since, size = time.monotonic(), stat.st_size
            time.sleep(POLL)
        last_write = stat.st_mtime_ns / 1e9 - (time.time() - time.monotonic())
        user, system = cpu_times(proc.pid)
        user, system = user - user0, system - sys0
        rss = peak_rss_mb(proc.pid)
        api_cpu = self.fake.cpu() - api_cpu
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        if spy is not None:
            spy.wait(30)
        if code != 0:
            raise BenchError(f"sfmd exited with {code} on SIGTERM: see sfmd-stderr.txt")
        self._verify_sfmd(data_dir, seeded, part, size, compress)
        return Result(
            self.n / (last_write - record["opened"]),
            cpu_us=(user + system) / self.n * 1e6,
            sys_us=system / self.n * 1e6,
            rss_mb=rss,
            api_cpu_us=api_cpu / self.n * 1e6,
            load=load,
        )

    def _verify_sfmd(self, data_dir: Path, seeded: set[str], part: Path, settled: int,
                     compress: bool) -> None:
        """Exactly the store's N events, each once, in `.jsonl.gz` files (`.jsonl` if not
        `compress`), and nothing written after the clock stopped but the gzip trailer."""
        suffix = ".jsonl.gz" if compress else ".jsonl"
        after = 64 if compress else 0  # gzip's trailer (and the end of its last block)
        entries = [e for e in _manifest(data_dir) if e["file"] not in seeded]
        if any(not e["file"].endswith(suffix) for e in entries):
            raise BenchError(f"sfmd published {[e['file'] for e in entries]}, not {suffix} files")
        if sum(e["messages"] for e in entries) != self.n:
            raise BenchError(f"the manifest holds {sum(e['messages'] for e in entries)} events")
        times: list[int] = []
        for entry in entries:
            raw = (data_dir / entry["file"]).read_bytes()
            if entry["file"] == str(part.relative_to(data_dir)).removesuffix(".part"):
                if len(raw) - settled > after:
                    raise BenchError(f"{len(raw) - settled} bytes came after the clock stopped")
            lines = (gzip.decompress(raw) if compress else raw).split(b"\n")
            if lines.pop() != b"":
                raise BenchError(f"{entry['file']} does not end with a line end")
            times += [_time_us(line) or 0 for line in lines]
        unique = set(times)
        if len(times) != self.n or len(unique) != self.n:
            raise BenchError(f"stored {len(times)} events, {len(unique)} distinct; "
                             f"expected {self.n}")
        if min(unique) != self.first_us or max(unique) != self.last_us:
            raise BenchError("the stored events are not the store's")

    def _profile(self, pid: int) -> subprocess.Popen[bytes] | None:
        """py-spy (if asked for) on the fake's core, sampling without pausing sfmd."""
        if self.args.profile is None:
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        output = self.args.profile / f"sfmd-{len(self.profiles) + 1}.txt"
        self.profiles.append(output)
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [
            py_spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking",
            "--threads", "--format", "raw", "--output", str(output),
        ]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=pinned(self.api_core))

    # -- the plain client --------------------------------------------------------------------

    def run_plain(self, gz: bool) -> Result:
        out = Path(tempfile.mkdtemp(prefix="sfmd-replay-plain-", dir=self.data_root))
        load = load_average()
        api_cpu = self.fake.cpu()
        cursor = self.first_us - 1 - 10_000_000  # where sfmd asks from
        command = [
            sys.executable, __file__, "--client", "gzip" if gz else "plain",
            "--url", self.fake.jetstream_url, "--cursor", str(cursor),
            "--events", str(self.n), "--out", str(out / "events.jsonl"),
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, preexec_fn=pinned(self.client_core)
        )
        try:
            record = self.fake.await_connection()
            self._check_replay(record)
            stdout, _ = proc.communicate(timeout=TIMEOUT)
            if proc.returncode != 0:
                raise BenchError("the plain client failed")
            report = json.loads(stdout)
            if (report["count"], report["first"], report["last"]) != (
                self.n, self.first_us, self.last_us
            ):
                raise BenchError(f"the plain client got {report['count']} events, not {self.n}")
            path = out / "events.jsonl"
            with gzip.open(path) if gz else open(path, "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            if lines != self.n:
                raise BenchError(f"the plain client's file holds {lines} lines")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(out, ignore_errors=True)
        return Result(
            self.n / (report["done"] - record["opened"]),
            cpu_us=report["cpu"] / self.n * 1e6,
            sys_us=report["sys"] / self.n * 1e6,
            rss_mb=report["rss_mb"],
            api_cpu_us=(self.fake.cpu() - api_cpu) / self.n * 1e6,
            load=load,
        )


def _manifest(data_dir: Path) -> list[dict[str, Any]]:
    from sfmd.archive import read_manifest

    return read_manifest(data_dir / STREAM / "manifest.jsonl")


def top_functions(profiles: list[Path], limit: int = 15) -> str:
    """Self and total samples by function over py-spy's raw collapsed stacks, sfmd's threads
    together."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for path in profiles:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                      + ")" if " (" in f else f for f in stack.split(";")[1:]]
            if not frames:
                continue
            samples += int(count)
            own[frames[-1]] += int(count)
            for frame in set(frames):
                total[frame] += int(count)
    if not samples:
        return "(no samples)"
    rows = ["| function | self % | total % |", "|---|---:|---:|"]
    for name, n in own.most_common(limit):
        rows.append(f"| `{name}` | {n / samples * 100:.1f} | {total[name] / samples * 100:.1f} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(summaries: dict[str, Summary]) -> str:
    rows = [
        "| reader | runs | events/s | (min-max) | CPU µs/event | (min-max) | of which sys "
        "| peak RSS MB | fake CPU µs/event |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries.values():
        if not s.results:
            continue
        rows.append(
            f"| {s.what} | {len(s.results)} | {_fmt(s.median('rate'), ',.0f')} | "
            f"{s.spread('rate', 1000, '.1f')}k | {_fmt(s.median('cpu_us'), '.1f')} | "
            f"{s.spread('cpu_us', spec='.1f')} | {_fmt(s.median('sys_us'), '.1f')} | "
            f"{_fmt(s.median('rss_mb'), '.0f')} | {_fmt(s.median('api_cpu_us'), '.1f')} |"
        )
    return "\n".join(rows)


RATIOS = (
    ("sfmd-plain", "plain", "like for like: both write plain .jsonl"),
    ("sfmd", "plain+gzip", "like for like: both gzip at level 6"),
    ("sfmd", "plain", "sfmd gzips, plain does not"),
)


def ratios(summaries: dict[str, Summary]) -> str:
    lines = []
    for mine, theirs, note in RATIOS:
        a, b = summaries[mine].median("rate"), summaries[theirs].median("rate")
        if a and b:
            lines.append(f"- {mine} / {theirs}: {a / b:.2f}x (events/s, medians; {note})")
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    words = [f"--events {args.events}", f"--runs {args.runs}", f"--span {args.span:g}"]
    if args.data_dir:
        words.append(f"--data-dir {args.data_dir}")
    if args.no_pin:
        words.append("--no-pin")
    return " ".join(["bench/jetstream_replay.py", *words])


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the backlog")
    parser.add_argument("--runs", type=int, default=2, help="runs of each reader")
    parser.add_argument("--span", type=float, default=86400.0,
                        help="seconds the backlog's time_us spread over; 0: jetstream_produce")
    parser.add_argument("--seed", type=int, default=0, help="the fake's jetstream_seed")
    parser.add_argument("--data-dir", type=Path,
                        help="where the readers write (default: the temp dir)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    parser.add_argument("--quiet", type=float, default=0.3, metavar="CORES",
                        help="before each run, wait while other work uses more than this")
    parser.add_argument("--patience", type=float, default=60.0,
                        help="seconds to wait for quiet, then run anyway")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each sfmd run")
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    # The children's entry points (the bench runs this file as the fake and as the client).
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=("plain", "gzip"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--cursor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def wait_quiet(args: argparse.Namespace) -> float:
    """Wait (up to --patience) until other work uses under --quiet cores; the load seen."""
    deadline = time.monotonic() + args.patience
    load = busy_cores()
    while load > args.quiet and time.monotonic() < deadline:
        print(f"  the machine is busy ({load:.2f} cores in use); waiting", flush=True)
        time.sleep(2)
        load = busy_cores()
    return load


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.events, args.span, args.seed))
        return 0
    if args.client:
        gz = args.client == "gzip"
        with gzip.open(args.out, "wb", compresslevel=6) if gz else open(args.out, "wb") as f:
            report = asyncio.run(_plain(args.url, query(args.cursor), args.events, f))
        print(json.dumps(report))
        return 0
    rows = [r for r in args.rows.split(",") if r]
    summaries = {what: Summary(what) for what in ROWS}
    loads: list[str] = []
    background = 0.0
    with tempfile.TemporaryDirectory(prefix="sfmd-replay-") as tmp:
        print(f"rendering {args.events:,} events in the fake instance...", flush=True)
        try:
            bench = Bench(args, Path(tmp))
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
        facts0 = bench.fake.facts
        print(f"  {facts0['count']:,} events, {facts0['mean_bytes']:.0f} bytes on average, "
              f"rendered in {facts0['render_s']:.0f} s", flush=True)
        try:
            for run in range(args.runs):
                for what in rows if run % 2 == 0 else list(reversed(rows)):
                    background = max(background, wait_quiet(args))
                    if what in SFMD_ROWS:
                        result = bench.run_sfmd(compress=SFMD_ROWS[what])
                    else:
                        result = bench.run_plain(gz=what == "plain+gzip")
                    summaries[what].results.append(result)
                    loads.append(result.load)
                    print(f"run {run + 1}/{args.runs}  {what:11} {result.rate:9,.0f} events/s"
                          f"  cpu {result.cpu_us:.1f} µs/event (sys {_fmt(result.sys_us, '.1f')})"
                          f"  fake cpu {result.api_cpu_us:.1f}  load {result.load}", flush=True)
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            log = Path(tmp, "sfmd-stderr.txt")
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace")[-3000:])
            return 1
        finally:
            bench.close()
    body = table(summaries)
    if any(r in SFMD_ROWS for r in rows) and len(rows) > 1:
        body += "\n\n" + ratios(summaries)
    if bench.profiles:
        print("\npy-spy, sfmd runs (all threads):\n" + top_functions(bench.profiles))
    facts = machine_facts(args.data_dir or Path(tempfile.gettempdir()))
    facts["backlog"] = (
        f"{args.events:,} events ({facts0['mean_bytes']:.0f} bytes of JSON on average), "
        f"time_us over {args.span:g} s"
    )
    facts["load averages before the runs"] = "; ".join(loads)
    facts["other load before runs"] = f"up to {background:.2f} cores"
    note = "" if args.no_pin else ", fake instance and reader pinned to different cores"
    section = dated_section("Jetstream replay catch-up", args.title, facts, command_line(args),
                            body, f"{note}; medians of the runs")
    publish(args.doc, facts, body, section, args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
