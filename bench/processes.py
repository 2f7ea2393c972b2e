"""Many streams in one daemon against one `sfmd stream` process per stream (SFM's model).

Run by hand: `python bench/processes.py [--processes 25,50] [--daemon 50,1000]`.

Social Feed Manager ran each stream as its own process under supervisord; sfmd's isolation
mode still can (`sfmd stream NAME --config FILE` is the command it gives supervisord). This
bench runs the same streams both ways against one `sfmd fakeapi` that sends every
connection one ~4.8 KB tweet a second, with sfmd's default settings (`save_interval` 60 s,
as in bench/fanout.py):

- **processes**: N `sfmd stream` processes, spawned at once, as supervisord would.
- **daemon**: one `sfmd run` with the N streams in its registry (its `start_jitter`, 5 s by
  default, spreads their first connections on purpose).

For each: the time from the first spawn until the fake API had answered every stream's
connection (its log's `first_byte`, CLOCK_MONOTONIC like ours), and until every stream
reported a stored message (`GET /streams` for the daemon, the status files
`sfmd stream` writes every `status_interval` for the processes); memory as the sum of Rss
(what `ps` adds up) and of Pss (shared pages counted once) once all stream and again after
`--steady` seconds; CPU (user+sys, all threads of all processes) per message over that
window, messages counted by the fake API; then SIGTERM and the time until all exited 0.

Everything sfmd runs is pinned to one core and the fake API to the other (`--no-pin` turns
that off), so both models get the same single core. 1,000 Python processes do not fit in
this machine's memory (~40 MB each), so the process model is measured at a few sizes and
extrapolated to 1,000 with a least-squares line through them (per-process figures when only
one size ran). Results print as tables and, unless `--no-doc`, are appended to
docs/benchmarks.md with the machine, the commit and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import cpu_seconds, dated_section, load_average, memory_mb, pinned, publish
from fanout import (
    REPO,
    BenchError,
    Control,
    DaemonProcess,
    FakeAPIProcess,
    all_streaming,
    credential_name,
    credentials_toml,
    machine_facts,
    sample_name,
    write_config,
    write_registry,
)

EXTRAPOLATE_TO = 1000
STARTUP_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0
POLL = 0.25


@dataclass
class ModelResult:
    model: str  # "processes" or "daemon"
    n: int
    connected_s: float = 0.0  # first spawn -> the fake API answered every stream
    streaming_s: float = 0.0  # first spawn -> every stream reported a stored message
    rss_start_mb: float = 0.0
    pss_start_mb: float = 0.0
    rss_after_mb: float = 0.0
    pss_after_mb: float = 0.0
    cpu_pct: float = 0.0  # of one core, over the steady window
    cpu_us_per_msg: float = 0.0
    messages_per_s: float = 0.0
    api_cpu_pct: float = 0.0
    stop_s: float = 0.0
    exit_codes: set[int | None] = field(default_factory=set)


@dataclass
class Estimate:
    """The process model at EXTRAPOLATE_TO streams, from a line through measured sizes."""

    n: int
    sizes: list[int]
    values: dict[str, float]


# --------------------------------------------------------------------------- helpers


async def fake_log(fake: FakeAPIProcess) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(fake.url + "/_fake/log") as resp,
    ):
        records: list[dict[str, Any]] = await resp.json()
    return records


def first_bytes(records: list[dict[str, Any]], since: float) -> dict[str, float]:
    """Each credential's first answered connection opened after `since`: when it first got
    its 200 and headers."""
    out: dict[str, float] = {}
    for rec in records:
        if rec["opened"] < since or rec["status"] != 200 or rec["first_byte"] is None:
            continue
        cred = rec["credential"]
        if cred is not None and (cred not in out or rec["first_byte"] < out[cred]):
            out[cred] = rec["first_byte"]
    return out


def sent_since(records: list[dict[str, Any]], since: float) -> int:
    return sum(rec["sent_count"] for rec in records if rec["opened"] >= since)


def status_files_streaming(state_dir: Path, names: list[str]) -> int:
    """How many `sfmd stream` processes report "streaming" with a message stored."""
    count = 0
    for name in names:
        try:
            status = json.loads((state_dir / "status" / f"{name}.json").read_text())
        except (OSError, ValueError):
            continue
        count += status.get("state") == "streaming" and status.get("messages", 0) >= 1
    return count


def total_memory(pids: list[int]) -> tuple[float, float]:
    rss = pss = 0.0
    for pid in pids:
        mem = memory_mb(pid)
        rss += mem.get("Rss", 0.0)
        pss += mem.get("Pss", 0.0)
    return rss, pss


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares (intercept, slope); through the origin when only one point."""
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


def spawn_stream(
    name: str, config: Path, stderr_path: Path, core: int | None
) -> subprocess.Popen[bytes]:
    """`sfmd stream NAME`, the command isolation mode gives supervisord for each stream."""
    with stderr_path.open("wb") as stderr:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            [sys.executable, "-m", "sfmd", "stream", name, "--config", str(config)],
            cwd=config.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=pinned(core),
        )


# --------------------------------------------------------------------------- the two models


class Models:
    def __init__(self, args: argparse.Namespace, root: Path, fake: FakeAPIProcess) -> None:
        self.args = args
        self.root = root
        self.fake = fake
        cores = sorted(os.sched_getaffinity(0))
        pin = not args.no_pin and len(cores) >= 2
        self.sfmd_core = cores[-1] if pin else None

    def _prepare(self, label: str, n: int) -> tuple[Path, Path]:
        workdir = self.root / f"{label}-{n}"
        workdir.mkdir()
        config = write_config(workdir, self.fake, self.root / "credentials.toml", self.args.set)
        write_registry(workdir / "state", n)
        return workdir, config

    async def _steady(self, result: ModelResult, pids: list[int], since: float, check: Any) -> None:
        """Memory once all stream, CPU and messages over the steady window, memory again."""
        result.rss_start_mb, result.pss_start_mb = total_memory(pids)
        cpu = sum(cpu_seconds(p) for p in pids)
        api_cpu = cpu_seconds(self.fake.proc.pid)
        sent = sent_since(await fake_log(self.fake), since)
        began = time.monotonic()
        while time.monotonic() - began < self.args.steady:
            check()
            await asyncio.sleep(1.0)
        elapsed = time.monotonic() - began
        cpu = sum(cpu_seconds(p) for p in pids) - cpu
        messages = sent_since(await fake_log(self.fake), since) - sent
        result.rss_after_mb, result.pss_after_mb = total_memory(pids)
        result.cpu_pct = cpu / elapsed * 100
        result.cpu_us_per_msg = cpu / max(messages, 1) * 1e6
        result.messages_per_s = messages / elapsed
        result.api_cpu_pct = (cpu_seconds(self.fake.proc.pid) - api_cpu) / elapsed * 100

    async def processes(self, n: int) -> ModelResult:
        result = ModelResult("processes", n)
        workdir, config = self._prepare("processes", n)
        names = [sample_name(i) for i in range(n)]
        creds = {credential_name(i) for i in range(n)}
        logs = workdir / "stderr"
        logs.mkdir()
        procs: list[subprocess.Popen[bytes]] = []
        spawned = time.monotonic()
        try:
            for name in names:
                procs.append(spawn_stream(name, config, logs / f"{name}.txt", self.sfmd_core))
            pids = [p.pid for p in procs]

            def check() -> None:
                dead = [
                    (n, p.poll()) for n, p in zip(names, procs, strict=True) if p.poll() is not None
                ]
                if dead:
                    name, code = dead[0]
                    tail = (logs / f"{name}.txt").read_text(errors="replace")[-1500:]
                    raise BenchError(f"sfmd stream {name} exited with {code}: {tail}")

            deadline = spawned + STARTUP_TIMEOUT
            state_dir = workdir / "state"
            while True:
                check()
                now = time.monotonic()
                if not result.connected_s:
                    seen = first_bytes(await fake_log(self.fake), spawned)
                    if creds <= seen.keys():
                        result.connected_s = max(seen[c] for c in creds) - spawned
                if status_files_streaming(state_dir, names) == n:
                    result.streaming_s = now - spawned
                    if result.connected_s:
                        break
                if now > deadline:
                    raise BenchError(f"{n} processes: not all streaming after {STARTUP_TIMEOUT}s")
                await asyncio.sleep(POLL)
            self._progress(result, "all streaming")
            await self._steady(result, pids, spawned, check)
            self._progress(result, "steady")
            began = time.monotonic()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    code: int | None = await asyncio.to_thread(p.wait, STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    code = None
                result.exit_codes.add(code)
            result.stop_s = time.monotonic() - began
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return result

    async def daemon(self, n: int) -> ModelResult:
        result = ModelResult("daemon", n)
        workdir, config = self._prepare("daemon", n)
        names = {sample_name(i) for i in range(n)}
        creds = {credential_name(i) for i in range(n)}
        daemon = DaemonProcess(workdir, config, self.sfmd_core)
        control = Control(workdir / "sfmd.sock")
        try:
            deadline = daemon.spawned + STARTUP_TIMEOUT
            while not await control.answers():
                daemon.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError("the control socket never answered")
                await asyncio.sleep(0.05)
            while True:
                daemon.check_alive()
                now = time.monotonic()
                if not result.connected_s:
                    seen = first_bytes(await fake_log(self.fake), daemon.spawned)
                    if creds <= seen.keys():
                        result.connected_s = max(seen[c] for c in creds) - daemon.spawned
                _, body, _ = await control.call("GET", "/streams")
                if all_streaming(body["streams"], names)[2] == n:
                    result.streaming_s = now - daemon.spawned
                    if result.connected_s:
                        break
                if now > deadline:
                    raise BenchError(f"daemon, {n} streams: not all streaming in time")
                await asyncio.sleep(POLL)
            self._progress(result, "all streaming")
            await self._steady(result, [daemon.pid], daemon.spawned, daemon.check_alive)
            self._progress(result, "steady")
            began = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            try:
                code: int | None = await asyncio.to_thread(daemon.proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = None
            result.exit_codes.add(code)
            result.stop_s = time.monotonic() - began
        finally:
            await control.close()
            daemon.kill()
        return result

    @staticmethod
    def _progress(r: ModelResult, what: str) -> None:
        if what == "all streaming":
            print(
                f"  {r.model} x {r.n}: all connected {r.connected_s:.1f} s, all streaming "
                f"{r.streaming_s:.1f} s",
                flush=True,
            )
        else:
            print(
                f"  {r.model} x {r.n}: Rss {r.rss_after_mb:,.0f} MB, Pss {r.pss_after_mb:,.0f} MB,"
                f" CPU {r.cpu_pct:.1f} % ({r.cpu_us_per_msg:,.0f} µs/msg, "
                f"{r.messages_per_s:,.0f} msg/s)",
                flush=True,
            )


def extrapolate(results: list[ModelResult]) -> Estimate | None:
    runs = sorted((r for r in results if r.model == "processes"), key=lambda r: r.n)
    if not runs:
        return None
    xs = [float(r.n) for r in runs]
    values = {}
    for attr in ("connected_s", "streaming_s", "rss_after_mb", "pss_after_mb"):
        a, b = fit_line(xs, [getattr(r, attr) for r in runs])
        values[attr] = a + b * EXTRAPOLATE_TO
    # CPU is per message, and every stream brings the same messages: it scales with N.
    largest = runs[-1]
    values["cpu_us_per_msg"] = largest.cpu_us_per_msg
    values["cpu_pct"] = largest.cpu_pct * EXTRAPOLATE_TO / largest.n
    return Estimate(EXTRAPOLATE_TO, [r.n for r in runs], values)


# --------------------------------------------------------------------------- report


def tables(results: list[ModelResult], estimate: Estimate | None) -> str:
    out = [
        "| model | streams | all connected s | all streaming s | Rss then MB | Pss then MB "
        "| Rss after MB | Pss after MB | MB per stream (Pss) | CPU % of a core | CPU µs/msg "
        "| msgs/s | SIGTERM→all exited s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        codes = ",".join(str(c) for c in sorted(r.exit_codes, key=lambda c: (c is None, c)))
        out.append(
            f"| {r.model} | {r.n:,} | {r.connected_s:.1f} | {r.streaming_s:.1f} "
            f"| {r.rss_start_mb:,.0f} | {r.pss_start_mb:,.0f} | {r.rss_after_mb:,.0f} "
            f"| {r.pss_after_mb:,.0f} | {r.pss_after_mb / r.n:.2f} | {r.cpu_pct:.1f} "
            f"| {r.cpu_us_per_msg:,.0f} | {r.messages_per_s:,.0f} "
            f"| {r.stop_s:.2f} (exit {codes}) |"
        )
    if estimate is not None:
        v = estimate.values
        sizes = " and ".join(f"{n:,}" for n in estimate.sizes)
        out.append(
            f"| processes, extrapolated from {sizes} | {estimate.n:,} | {v['connected_s']:.0f} "
            f"| {v['streaming_s']:.0f} | | | ~{v['rss_after_mb']:,.0f} | ~{v['pss_after_mb']:,.0f} "
            f"| {v['pss_after_mb'] / estimate.n:.2f} | {v['cpu_pct']:.0f} "
            f"| {v['cpu_us_per_msg']:,.0f} | | |"
        )
    return "\n".join(out)


def comparison(results: list[ModelResult], estimate: Estimate | None) -> str:
    """One daemon at the largest size run, against the process model at that size."""
    daemons = [r for r in results if r.model == "daemon"]
    if not daemons or estimate is None:
        return ""
    lines = ["One daemon against one process per stream, same streams:", ""]
    runs = {r.n: r for r in results if r.model == "processes"}
    for d in sorted(daemons, key=lambda r: r.n):
        if d.n in runs:
            p = runs[d.n]
            source = "measured"
            p_pss, p_rss, p_conn, p_cpu = (
                p.pss_after_mb, p.rss_after_mb, p.connected_s, p.cpu_us_per_msg,
            )  # fmt: skip
        elif d.n == estimate.n:
            source = "extrapolated"
            v = estimate.values
            p_pss, p_rss, p_conn, p_cpu = (
                v["pss_after_mb"], v["rss_after_mb"], v["connected_s"], v["cpu_us_per_msg"],
            )  # fmt: skip
        else:
            continue
        lines.append(
            f"- {d.n:,} streams ({source} for the processes): memory {d.pss_after_mb:,.0f} MB "
            f"against {p_pss:,.0f} MB Pss ({p_rss:,.0f} MB summed Rss), "
            f"{p_pss / max(d.pss_after_mb, 1e-9):.0f}x less; all connected in "
            f"{d.connected_s:.1f} s against {p_conn:.1f} s; CPU {d.cpu_us_per_msg:,.0f} µs a "
            f"message against {p_cpu:,.0f} µs ({p_cpu / max(d.cpu_us_per_msg, 1e-9):.1f}x)"
        )
    return "\n".join(lines)


def doc_section(facts: dict[str, str], body: str, args: argparse.Namespace) -> list[str]:
    settings = "".join(f" --set {k}={v}" for k, v in args.set.items())
    pin = (
        ""
        if args.no_pin
        else "; everything sfmd runs pinned to one core, the fake API to the other"
    )
    command = (
        f"bench/processes.py --processes {','.join(map(str, args.process_sizes))} "
        f"--daemon {','.join(map(str, args.daemon_sizes))} --steady {args.steady:g}{settings}"
    )
    note = (
        f" (1 tweet of 4800 B a second per stream; save_interval 60 s, otherwise sfmd's "
        f"defaults{pin})"
    )
    heading = "processes, one daemon against one process per stream"
    return dated_section(heading, args.title, facts, command, body, note)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--processes", default="25,50", help="process counts, comma-separated (default 25,50)"
    )
    parser.add_argument(
        "--daemon", default="50,1000", help="stream counts for the daemon (default 50,1000)"
    )
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of the CPU window")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config setting for both models (a TOML value); repeatable",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)

    def sizes(text: str) -> list[int]:
        return [int(s) for s in text.split(",") if s.strip()]

    args.process_sizes, args.daemon_sizes = sizes(args.processes), sizes(args.daemon)
    args.set = dict(item.split("=", 1) for item in args.set)
    if any("." not in key for key in args.set):
        parser.error("--set takes SECTION.KEY=VALUE")
    every = args.process_sizes + args.daemon_sizes
    if not every or min(every) < 1 or max(every) > 9999:
        parser.error("sizes between 1 and 9999")
    return args


async def run_all(args: argparse.Namespace, root: Path) -> list[ModelResult]:
    cores = sorted(os.sched_getaffinity(0))
    other = cores[0] if not args.no_pin and len(cores) >= 2 else None
    if other is not None:
        os.sched_setaffinity(0, {other})  # this script shares a core with the fake API
    credentials = root / "credentials.toml"
    n_max = max(args.process_sizes + args.daemon_sizes)
    credentials.write_text(credentials_toml(credential_name(i) for i in range(n_max)))
    os.chmod(credentials, 0o600)
    fake = FakeAPIProcess(credentials, 1.0, other)
    models = Models(args, root, fake)
    results = []
    try:
        for n in args.process_sizes:
            print(f"{n} processes", flush=True)
            results.append(await models.processes(n))
        for n in args.daemon_sizes:
            print(f"one daemon, {n} streams", flush=True)
            results.append(await models.daemon(n))
    finally:
        fake.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="sfmd-processes-") as tmp:
        try:
            results = asyncio.run(run_all(args, Path(tmp)))
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
    estimate = extrapolate(results)
    body = tables(results, estimate)
    compared = comparison(results, estimate)
    if compared:
        body += "\n\n" + compared
    facts = machine_facts()
    facts["load average (1, 5, 15 min)"] = f"{load_before} before, {load_average()} after"
    publish(args.doc, facts, body, doc_section(facts, body, args), args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
