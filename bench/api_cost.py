"""What each control API request costs at N streams, with the event loop otherwise quiet.

Run by hand: `python bench/api_cost.py [--streams 5000] [--against DIR]`. `bench/fanout.py`
measures the API under load, where a slow answer may be the request's own work or the loop
being busy with something else; this one takes the loop's other work nearly away, so what is
left is each request's own cost and how it grows with the number of streams.

With real processes only: `sfmd fakeapi` serves every connection a message every 20 s
(`--rate`), `sfmd run` starts with N sample streams already registered (one credential each)
and waits until every stream streams and the daemon has frozen what starting made (its one
`gc_freeze`). Four filter streams on spare credentials are created through the API. Then, in
each of `--rounds` rounds, one request of each kind, `--gap` seconds apart, one at a time:

- GET /health, GET /streams/{name}, GET /streams, GET /metrics;
- PATCH of a filter's `track` (the filter reconnects; the registry is written);
- POST /streams of a new filter, and DELETE of it (the registry is written; a full reconcile
  pass runs before each answers).

Each is timed to the last byte of the answer, client side. With `--against DIR` another
version's `sfmd` package runs the same, before or after this one (the order alternates with
`--repeat`). The daemon is pinned to one core, the fake API and this client to the other;
`--profile DIR` records the daemon's busy threads with py-spy during each version's rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchlib import byte_compile, dated_section, keep_work, percentile, publish
from fanout import (
    FILTERS,
    FREEZE_TIMEOUT,
    REPO,
    STARTUP_TIMEOUT,
    BenchError,
    Control,
    DaemonProcess,
    FakeAPIProcess,
    credential_name,
    credentials_toml,
    machine_facts,
    profile_summary,
    sample_name,
    start_profile,
    wait_streaming,
    write_config,
    write_registry,
)

KINDS = (
    "GET /health",
    "GET /streams/{name}",
    "GET /streams",
    "GET /metrics",
    "PATCH /streams/{name}",
    "POST /streams",
    "DELETE /streams/{name}",
)


class VersionRun:
    """One version's daemon at N streams: every kind's latencies, ms."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ms: dict[str, list[float]] = {kind: [] for kind in KINDS}


async def run_version(
    args: argparse.Namespace,
    root: Path,
    fake: FakeAPIProcess,
    code: Path | None,
    label: str,
    cores: tuple[int | None, int | None],
    attempt: int,
) -> VersionRun:
    daemon_core, other_core = cores
    workdir = root / f"{label or 'this'}-{attempt}"
    workdir.mkdir()
    config = write_config(workdir, fake, root / "credentials.toml", {})
    write_registry(workdir / "state", args.streams)
    daemon = DaemonProcess(workdir, config, daemon_core, code=code)
    control = Control(workdir / "sfmd.sock")
    result = VersionRun(label)
    try:
        names = {sample_name(i) for i in range(args.streams)}
        await wait_streaming(
            daemon, control, names, daemon.spawned + STARTUP_TIMEOUT,
            f"not every stream streamed within {STARTUP_TIMEOUT:g} s",
        )
        if await daemon.startup_freeze(FREEZE_TIMEOUT) is None:
            raise BenchError("the daemon never logged its gc_freeze after start-up")
        for i in range(FILTERS):
            body = {"name": f"f{i}", "kind": "filter", "track": [f"f{i}-0"],
                    "credential": f"x{i}"}  # fmt: skip
            status, _, _ = await control.call("POST", "/streams", body)
            if status != 201:
                raise BenchError(f"creating filter f{i} answered {status}")
        spy = None
        if args.profile is not None:
            seconds = args.rounds * len(KINDS) * (args.gap + 0.1) + 5
            output = args.profile / f"{label or 'this'}-{attempt}.txt"
            spy = start_profile(daemon.pid, output, seconds, other_core, gil=False)
        for r in range(args.rounds):
            await _round(control, result, r, args.streams, args.gap)
        if spy is not None:
            await asyncio.to_thread(spy.wait, 120)
            print(profile_summary(output), flush=True)
    finally:
        await control.close()
        daemon.kill()
    return result


async def _round(control: Control, result: VersionRun, r: int, n: int, gap: float) -> None:
    new = f"g{r}"
    calls = {
        "GET /health": ("GET", "/health", None, 200),
        "GET /streams/{name}": ("GET", f"/streams/{sample_name(r * 37 % n)}", None, 200),
        "GET /streams": ("GET", "/streams", None, 200),
        "GET /metrics": ("GET", "/metrics", None, 200),
        "PATCH /streams/{name}": (
            "PATCH", f"/streams/f{r % FILTERS}", {"track": [f"f{r % FILTERS}-{r + 1}"]}, 200
        ),
        "POST /streams": (
            "POST", "/streams",
            {"name": new, "kind": "filter", "track": [new], "credential": f"x{FILTERS}"}, 201,
        ),
        "DELETE /streams/{name}": ("DELETE", f"/streams/{new}", None, 204),
    }  # fmt: skip
    for kind in KINDS:
        method, path, body, expected = calls[kind]
        status, _, seconds = await control.call(method, path, body)
        if status != expected:
            raise BenchError(f"{kind} answered {status}, not {expected}")
        result.ms[kind].append(seconds * 1000)
        await asyncio.sleep(gap)


async def run_all(args: argparse.Namespace, root: Path) -> list[VersionRun]:
    cores = sorted(os.sched_getaffinity(0))
    pin = len(cores) >= 2
    daemon_core, other_core = (cores[-1], cores[0]) if pin else (None, None)
    if other_core is not None:
        os.sched_setaffinity(0, {other_core})
    byte_compile(REPO / "sfmd")
    versions: list[tuple[Path | None, str]] = [(None, "")]
    if args.against is not None:
        byte_compile(args.against / "sfmd")
        versions.append((args.against, args.against_label))
    credentials = root / "credentials.toml"
    names = [credential_name(i) for i in range(args.streams)]
    names += [f"x{i}" for i in range(FILTERS + 1)]
    credentials.write_text(credentials_toml(names))
    os.chmod(credentials, 0o600)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    fake = FakeAPIProcess(credentials, args.rate, other_core)
    runs: list[VersionRun] = []
    try:
        for attempt in range(args.repeat):
            for code, label in versions if attempt % 2 == 0 else versions[::-1]:
                print(f"{label or 'this version'}, run {attempt + 1}", flush=True)
                runs.append(await run_version(
                    args, root, fake, code, label, (daemon_core, other_core), attempt
                ))  # fmt: skip
    finally:
        fake.stop()
    return runs


def table(runs: list[VersionRun], args: argparse.Namespace) -> str:
    """Each version's latencies by kind, its runs pooled."""
    pooled: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        into = pooled.setdefault(run.label, {kind: [] for kind in KINDS})
        for kind, values in run.ms.items():
            into[kind] += values
    lines = [
        f"Each request's latency, client side, ms ({args.streams:,} streams, one request at a "
        f"time {args.gap:g} s apart, {args.rounds} of each kind per run, {args.repeat} run(s) "
        "per version):",
        "",
        "| version | request | n | p50 | p90 | max |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, kinds in pooled.items():
        for kind, values in kinds.items():
            lines.append(
                f"| {label or 'this'} | {kind} | {len(values)} | {statistics.median(values):.1f}"
                f" | {percentile(values, 90):.1f} | {max(values):.1f} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000, help="sample streams (default 5000)")
    parser.add_argument(
        "--rate", type=float, default=0.05, help="messages/s per stream (default 0.05)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="requests of each kind per run")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between two requests")
    parser.add_argument("--repeat", type=int, default=1, help="runs per version")
    parser.add_argument(
        "--against", type=Path, metavar="DIR",
        help="also run the sfmd package in DIR (another version)",
    )  # fmt: skip
    parser.add_argument(
        "--against-label", default="before", help="what --against's rows are called"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the daemon's rounds into DIR"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="copy the work dirs (logs, data) into DIR"
    )
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument(
        "--doc", type=Path, default=REPO / "docs" / "benchmarks.md", help="the file to append to"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= 9999:
        parser.error("--streams: between 1 and 9999")
    if args.rounds < 1 or args.repeat < 1:
        parser.error("--rounds and --repeat: at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sfmd-api-cost-") as tmp:
        try:
            runs = asyncio.run(run_all(args, Path(tmp)))
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
        finally:
            keep_work(tmp, args.keep)
    body = table(runs, args)
    facts = machine_facts()
    command = f"bench/api_cost.py --streams {args.streams} --rate {args.rate:g}"
    command += f" --rounds {args.rounds} --repeat {args.repeat}"
    if args.against:
        command += f" --against DIR ({args.against_label})"
    note = (" (sfmd's defaults otherwise; modules byte-compiled, as pip installs them; daemon "
            "pinned to one core, fake API and client to the other)")
    heading = f"control API cost per request, {args.streams:,} streams, the loop otherwise quiet"
    section = dated_section(heading, args.title, facts, command, body, note)
    publish(args.doc, facts, body, section, args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
