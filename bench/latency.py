"""Control latency with many streams running: API calls, and a filter change to its new connection.

Run by hand: `python bench/latency.py [--streams 1000] [--seconds 150] [--profile DIR]`.

The project's targets, with 1,000 streams in one daemon: control API p99 at most 50 ms, and
a PATCH that changes a filter's `track` followed by the new connection within 1 s plus the
configured connect time (on loopback, with no TLS, connecting takes well under a
millisecond, so 1 s it is).

`sfmd run` starts with N sample streams in its registry (one credential each) against one
`sfmd fakeapi` that sends every connection one ~4.8 KB tweet a second, with sfmd's default
settings except `save_interval` = 60 s, so the window holds several rotations of every
stream at once. Once every stream streams, `--filters` filter streams are created through
`POST /streams`, and for `--seconds` one client calls the API `--api-rate` times a second,
one call at a time, with the same mix as bench/fanout.py: GET /health, GET /streams/{name},
GET /streams (every stream), GET /metrics, and PATCH of a filter's `track` (round robin, so
each filter has several seconds to reconnect before its next change). Latency is the
client's, to the last byte of the answer; calls made in the 10 s after a rotation boundary
are also shown apart.

For each PATCH, from the fake API's log (its stamps are CLOCK_MONOTONIC, like ours): PATCH
sent → the new request arrived (`opened`; the target), → answered with 200 (`first_byte`),
and the gap from the old connection's close to the new one's request (the time the filter
was not connected). `--profile DIR` records the daemon's GIL-holding stacks with py-spy
during the window and prints where they were. Results print as tables and, unless
`--no-doc`, are appended to docs/benchmarks.md with the machine, the commit and the load
average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import cpu_seconds, dated_section, load_average, percentile, publish
from fanout import (
    MIX,
    REPO,
    SAVE_INTERVAL,
    BenchError,
    Control,
    DaemonProcess,
    FakeAPIProcess,
    credential_name,
    credentials_toml,
    machine_facts,
    proc_status,
    profile_summary,
    sample_name,
    start_profile,
    wait_streaming,
    write_config,
    write_registry,
)

ROTATION_WINDOW = 10.0  # seconds after a rotation boundary that count as "during rotation"
STARTUP_TIMEOUT = 180.0
TARGET_API_P99_MS = 50.0
TARGET_RECONNECT_S = 1.0


@dataclass
class Call:
    kind: str
    wall: float  # time.time() when sent, to place it against rotation boundaries
    seconds: float
    status: int


@dataclass
class Patch:
    name: str
    old_track: str
    new_track: str
    sent: float  # monotonic
    seconds: float  # the PATCH's own answer


@dataclass
class Reconnect:
    opened_s: float  # PATCH sent -> the new request reached the fake API
    answered_s: float  # PATCH sent -> the fake API answered it with 200
    gap_s: float | None  # old connection closed -> new request arrived


@dataclass
class Outcome:
    n: int
    start_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)
    reconnects: list[Reconnect] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    stop_s: float = 0.0
    stop_code: int | None = None
    profile: str = ""


class LatencyBench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        cores = sorted(os.sched_getaffinity(0))
        pin = not args.no_pin and len(cores) >= 2
        self.daemon_core, self.other_core = (cores[-1], cores[0]) if pin else (None, None)
        if self.other_core is not None:
            os.sched_setaffinity(0, {self.other_core})  # this client shares the fake API's core
        self.filters = [f"f{i}" for i in range(args.filters)]
        self.credentials = root / "credentials.toml"
        names = [credential_name(i) for i in range(args.streams)]
        names += [f"x{i}" for i in range(args.filters)]
        self.credentials.write_text(credentials_toml(names))
        os.chmod(self.credentials, 0o600)
        self.outcome = Outcome(args.streams)

    async def run(self) -> Outcome:
        fake = FakeAPIProcess(self.credentials, 1.0, self.other_core)
        workdir = self.root / "daemon"
        workdir.mkdir()
        config = write_config(workdir, fake, self.credentials, self.args.set)
        write_registry(workdir / "state", self.args.streams)
        daemon = DaemonProcess(workdir, config, self.daemon_core)
        control = Control(workdir / "sfmd.sock")
        try:
            await self._wait_streaming(daemon, control)
            await self._create_filters(control)
            await self._window(daemon, control)
            await self._match_reconnects(fake)
            await self._stop(daemon)
        finally:
            await control.close()
            daemon.kill()
            fake.stop()
        return self.outcome

    async def _wait_streaming(self, daemon: DaemonProcess, control: Control) -> None:
        names = {sample_name(i) for i in range(self.args.streams)}
        await wait_streaming(
            daemon, control, names, daemon.spawned + STARTUP_TIMEOUT,
            f"not every stream streamed within {STARTUP_TIMEOUT:g} s",
        )
        self.outcome.start_s = time.monotonic() - daemon.spawned
        print(f"  {len(names)} streams streaming after {self.outcome.start_s:.1f} s", flush=True)

    async def _create_filters(self, control: Control) -> None:
        for i, name in enumerate(self.filters):
            body = {"name": name, "kind": "filter", "track": [f"{name}-0"], "credential": f"x{i}"}
            status, answer, _ = await control.call("POST", "/streams", body)
            if status != 201:
                raise BenchError(f"POST /streams answered {status}: {answer}")
        await asyncio.sleep(2.0)  # let the filters connect before their first change

    async def _window(self, daemon: DaemonProcess, control: Control) -> None:
        out = self.outcome
        rng = random.Random(self.args.streams)
        kinds, weights = list(MIX), list(MIX.values())
        tracks = {name: f"{name}-0" for name in self.filters}
        spy = None
        if self.args.profile is not None:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            spy = start_profile(
                daemon.pid, self._profile_path(), self.args.seconds, self.other_core
            )
        cpu, began = cpu_seconds(daemon.pid), time.monotonic()
        interval = 1.0 / self.args.api_rate
        next_at, count = began, 0
        while time.monotonic() - began < self.args.seconds:
            daemon.check_alive()
            kind = rng.choices(kinds, weights)[0]
            count += 1
            wall, sent = time.time(), time.monotonic()
            if kind == "PATCH /streams/{name}":
                name = self.filters[count % len(self.filters)]
                new = f"{name}-{count}"
                status, _, seconds = await control.call(
                    "PATCH", f"/streams/{name}", {"track": [new]}
                )
                out.patches.append(Patch(name, tracks[name], new, sent, seconds))
                tracks[name] = new
            else:
                path = {
                    "GET /health": "/health",
                    "GET /streams": "/streams",
                    "GET /metrics": "/metrics",
                    "GET /streams/{name}": f"/streams/{sample_name(rng.randrange(out.n))}",
                }[kind]
                status, _, seconds = await control.call("GET", path)
            out.calls.append(Call(kind, wall, seconds, status))
            if status != 200:
                out.errors.append(f"{kind} answered {status}")
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        elapsed = time.monotonic() - began
        out.cpu_pct = (cpu_seconds(daemon.pid) - cpu) / elapsed * 100
        out.rss_mb = proc_status(daemon.pid)["VmRSS"] / 1024
        if spy is not None:
            try:
                await asyncio.to_thread(spy.wait, 60)
            except subprocess.TimeoutExpired:
                spy.kill()
            if self._profile_path().exists():
                out.profile = profile_summary(self._profile_path(), top=15)
        print(
            f"  window {elapsed:.0f} s: {len(out.calls)} calls, {len(out.patches)} PATCHes, "
            f"daemon CPU {out.cpu_pct:.1f} %, RSS {out.rss_mb:.0f} MB",
            flush=True,
        )

    def _profile_path(self) -> Path:
        assert self.args.profile is not None
        return self.args.profile / f"latency-{self.args.streams}.txt"

    async def _match_reconnects(self, fake: FakeAPIProcess) -> None:
        await asyncio.sleep(3.0)  # the last PATCH's reconnect
        async with (
            aiohttp.ClientSession() as session,
            session.get(fake.url + "/_fake/log") as resp,
        ):
            records: list[dict[str, Any]] = await resp.json()
        by_track: dict[str, dict[str, Any]] = {}
        for rec in records:
            if rec["endpoint"] == "filter":
                by_track.setdefault(rec["params"].get("track", ""), rec)
        for p in self.outcome.patches:
            new, old = by_track.get(p.new_track), by_track.get(p.old_track)
            if new is None:
                self.outcome.errors.append(f"PATCH of {p.name} to {p.new_track} never reconnected")
                continue
            answered = (new["first_byte"] or new["opened"]) - p.sent
            gap = None
            if old is not None and old["closed"] is not None:
                gap = new["opened"] - old["closed"]
            self.outcome.reconnects.append(Reconnect(new["opened"] - p.sent, answered, gap))

    async def _stop(self, daemon: DaemonProcess) -> None:
        began = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            self.outcome.stop_code = await asyncio.to_thread(daemon.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.outcome.stop_code = None
        self.outcome.stop_s = time.monotonic() - began


# --------------------------------------------------------------------------- report


def _row(label: str, seconds: list[float]) -> str:
    ms = [s * 1e3 for s in seconds]
    return (
        f"| {label} | {len(ms)} | {percentile(ms, 50):.1f} | {percentile(ms, 95):.1f} "
        f"| {percentile(ms, 99):.1f} | {max(ms):.1f} |"
    )


def report(o: Outcome, args: argparse.Namespace) -> str:
    out = [
        f"{o.n:,} streams streaming {o.start_s:.1f} s after start-up; during the window the "
        f"daemon used {o.cpu_pct:.1f} % of a core, RSS {o.rss_mb:.0f} MB at its end; SIGTERM → "
        f"exit {o.stop_code} in {o.stop_s:.2f} s.",
        "",
        f"Control API, client side, ms (one client, ~{args.api_rate:g} calls/s for "
        f"{args.seconds:g} s, {args.filters} filters):",
        "",
        "| call | n | p50 | p95 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    kinds: dict[str, list[float]] = {}
    for c in o.calls:
        kinds.setdefault(c.kind, []).append(c.seconds)
    for kind in MIX:
        if kind in kinds:
            out.append(_row(kind, kinds[kind]))
    every = [c.seconds for c in o.calls]
    rotating = [c.seconds for c in o.calls if c.wall % SAVE_INTERVAL < ROTATION_WINDOW]
    quiet = [c.seconds for c in o.calls if c.wall % SAVE_INTERVAL >= ROTATION_WINDOW]
    if every:
        out.append(_row("**every call**", every))
    if rotating:
        out.append(_row(f"every call, ≤ {ROTATION_WINDOW:g} s after a rotation", rotating))
    if quiet:
        out.append(_row("every call, away from rotations", quiet))
    if o.reconnects:
        out += [
            "",
            "Filter change, ms (PATCH of `track` sent → ...):",
            "",
            "| measure | n | p50 | p95 | p99 | max |",
            "|---|---:|---:|---:|---:|---:|",
            _row("→ the new request reaches the fake API", [r.opened_s for r in o.reconnects]),
            _row("→ the fake API answers it (200)", [r.answered_s for r in o.reconnects]),
        ]
        gaps = [r.gap_s for r in o.reconnects if r.gap_s is not None]
        if gaps:
            out.append(_row("old connection closed → new request (not connected)", gaps))
    out += ["", "Targets:", ""]
    if every:
        p99 = percentile([s * 1e3 for s in every], 99)
        out.append(
            f"- control API p99 ≤ {TARGET_API_P99_MS:g} ms: {p99:.1f} ms, "
            f"{'met' if p99 <= TARGET_API_P99_MS else '**not met**'}"
        )
    if o.reconnects:
        opened = [r.opened_s for r in o.reconnects]
        worst, p99 = max(opened), percentile(opened, 99)
        verdict = "met" if worst <= TARGET_RECONNECT_S else "**not met**"
        out.append(
            f"- filter change → new connection ≤ {TARGET_RECONNECT_S:g} s (+ connect time, "
            f"~0 on loopback): p99 {p99 * 1e3:.0f} ms, worst {worst * 1e3:.0f} ms, {verdict}"
        )
    if o.errors:
        out.append(f"- errors: {'; '.join(o.errors[:10])}")
    if o.profile:
        out += ["", "Where the daemon held the GIL during the window (py-spy):", "", "```"]
        out += [o.profile, "```"]
    return "\n".join(out)


def doc_section(facts: dict[str, str], body: str, args: argparse.Namespace) -> list[str]:
    settings = "".join(f" --set {k}={v}" for k, v in args.set.items())
    pin = "" if args.no_pin else "; daemon pinned to one core, fake API and client to the other"
    command = (
        f"bench/latency.py --streams {args.streams} --seconds {args.seconds:g} "
        f"--api-rate {args.api_rate:g} --filters {args.filters}{settings}"
    )
    note = (
        f" (1 tweet of 4800 B a second per stream; save_interval {SAVE_INTERVAL} s, "
        f"otherwise sfmd's defaults{pin})"
    )
    heading = f"latency, control API and filter changes at {args.streams:,} streams"
    return dated_section(heading, args.title, facts, command, body, note)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="sample streams running")
    parser.add_argument("--seconds", type=float, default=150.0, help="length of the window")
    parser.add_argument("--api-rate", type=float, default=8.0, help="API calls per second")
    parser.add_argument("--filters", type=int, default=8, help="filter streams to PATCH")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config setting (a TOML value), e.g. daemon.compress=false; repeatable",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the daemon's window into DIR"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.set = dict(item.split("=", 1) for item in args.set)
    if any("." not in key for key in args.set):
        parser.error("--set takes SECTION.KEY=VALUE")
    if not 1 <= args.streams <= 9999 or args.filters < 1:
        parser.error("--streams between 1 and 9999, --filters at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="sfmd-latency-") as tmp:
        try:
            outcome = asyncio.run(LatencyBench(args, Path(tmp)).run())
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
    body = report(outcome, args)
    facts = machine_facts()
    facts["load average (1, 5, 15 min)"] = f"{load_before} before, {load_average()} after"
    publish(args.doc, facts, body, doc_section(facts, body, args), args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
