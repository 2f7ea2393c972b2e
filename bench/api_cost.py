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
`--repeat`). The daemon is pinned to one core, the fake API and this client to the other.
`--kind` limits the rounds to some kinds of request.

`--profile DIR` records with py-spy, during each version's rounds, the thread that holds the
GIL (the event loop's, mostly), and prints what each kind of request cost the loop: the
samples within its handler, per request (a page built in turns counts every turn). With
`--all-threads` it records every busy thread instead (the archive's workers too), and prints
where they were. `--save-interval` sets the rotation interval (default 60 s, as in fanout):
a rotation boundary within the rounds puts the workers' turn-overs beside the requests.
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
    PROFILE_RATE,
    REPO,
    SAVE_INTERVAL,
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

#: Each kind of request, and the control API's method that answers it.
HANDLERS = {
    "GET /health": "ControlApi.health",
    "GET /streams/{name}": "ControlApi.show",
    "GET /streams": "ControlApi.list_streams",
    "GET /metrics": "ControlApi.metrics",
    "PATCH /streams/{name}": "ControlApi.modify",
    "POST /streams": "ControlApi.create",
    "DELETE /streams/{name}": "ControlApi.delete",
}
KINDS = tuple(HANDLERS)


class VersionRun:
    """One version's daemon at N streams: every kind's latencies, ms (and, profiled, the
    loop's CPU per request of each kind, ms)."""

    def __init__(self, label: str, kinds: tuple[str, ...]) -> None:
        self.label = label
        self.ms: dict[str, list[float]] = {kind: [] for kind in kinds}
        self.cpu_ms: dict[str, float] = {}


def loop_cpu_per_request(path: Path, requests: int, kinds: tuple[str, ...]) -> dict[str, float]:
    """From a py-spy record of the GIL's holder (raw format): the ms of samples within each
    of `kinds`' handlers, per request."""
    samples = dict.fromkeys(kinds, 0)
    handlers = {f"{HANDLERS[kind]} (": kind for kind in kinds}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        for frame in stack.split(";"):
            kind = next((k for prefix, k in handlers.items() if frame.startswith(prefix)), None)
            if kind is not None:
                samples[kind] += int(count)
                break
    return {kind: n / PROFILE_RATE * 1000 / requests for kind, n in samples.items()}


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
    config = write_config(
        workdir, fake, root / "credentials.toml", {}, save_interval=args.save_interval
    )
    write_registry(workdir / "state", args.streams)
    daemon = DaemonProcess(workdir, config, daemon_core, code=code)
    control = Control(workdir / "sfmd.sock")
    result = VersionRun(label, args.kind)
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
            seconds = args.rounds * len(args.kind) * (args.gap + 0.1) + 5
            output = args.profile / f"{label or 'this'}-{attempt}.txt"
            spy = start_profile(
                daemon.pid, output, seconds, other_core, gil=not args.all_threads
            )
        for r in range(args.rounds):
            await _round(control, result, r, args.streams, args.gap)
        if spy is not None:
            await asyncio.to_thread(spy.wait, 120)
            if args.all_threads:
                print(profile_summary(output), flush=True)
            else:
                result.cpu_ms = loop_cpu_per_request(output, args.rounds, args.kind)
                print(f"    {output.name}: the loop's CPU per request, ms: " + ", ".join(
                    f"{kind} {ms:.1f}" for kind, ms in result.cpu_ms.items()), flush=True)
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
    for kind in result.ms:
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
        into = pooled.setdefault(run.label, {kind: [] for kind in args.kind})
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
    profiled = [run for run in runs if run.cpu_ms]
    if profiled:
        lines += [
            "",
            "The event loop's CPU per request, ms (py-spy on the GIL's holder, "
            f"{PROFILE_RATE} samples/s: the samples within each kind's handler, per request; "
            "one column per run):",
            "",
            "| version | request | " + " | ".join(f"run {i + 1}" for i in range(args.repeat))
            + " |",
            "|---|---|" + "---:|" * args.repeat,
        ]
        for label in pooled:
            mine = [run for run in profiled if run.label == label]
            for kind in args.kind:
                lines.append(f"| {label or 'this'} | {kind} | "
                             + " | ".join(f"{run.cpu_ms[kind]:.1f}" for run in mine) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000, help="sample streams (default 5000)")
    parser.add_argument(
        "--rate", type=float, default=0.05, help="messages/s per stream (default 0.05)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="requests of each kind per run")
    parser.add_argument(
        "--kind", action="append", choices=KINDS,
        help="only this kind of request (repeatable; default: every kind)",
    )  # fmt: skip
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
        "--all-threads", action="store_true",
        help="with --profile: every busy thread, not the GIL's holder",
    )  # fmt: skip
    parser.add_argument(
        "--save-interval", type=int, default=SAVE_INTERVAL,
        help=f"the rotation interval, s (default {SAVE_INTERVAL})",
    )  # fmt: skip
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
    if args.save_interval < 1:
        parser.error("--save-interval: at least 1 s")
    if args.all_threads and args.profile is None:
        parser.error("--all-threads goes with --profile")
    args.kind = tuple(kind for kind in KINDS if kind in (args.kind or KINDS))
    if "DELETE /streams/{name}" in args.kind and "POST /streams" not in args.kind:
        parser.error("--kind 'DELETE /streams/{name}' deletes what 'POST /streams' creates")
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
    if args.kind != KINDS:
        command += "".join(f" --kind '{kind}'" for kind in args.kind)
    command += f" --save-interval {args.save_interval}"
    if args.profile is not None:
        command += " --profile DIR" + (" --all-threads" if args.all_threads else "")
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
