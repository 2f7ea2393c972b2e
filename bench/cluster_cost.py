"""What cluster mode costs at 1,000 streams: one host alone against two hosts on NATS.

Run by hand: `python bench/cluster_cost.py [--streams 1000] [--jetstream 0] [--no-doc]`.

The same streams, side by side in one run, with real processes on loopback and one `sfmd
fakeapi` serving both layouts (`--rate` messages of 4.8 KB a second per Twitter connection, as
`bench/fanout.py`):

1. **one host**: `sfmd run` without `[cluster]`, the streams already in its registry file
   (`--streams` v1.1 sample streams on a credential each; with `--jetstream K`, K of them are
   Jetstream streams instead, which have resume points).
2. **two hosts**: a fresh `nats-server -js` and two `sfmd run` with `[cluster] nats_url`; the
   streams are created through host A's `POST /streams` (the registry lives in the bucket),
   and placement gives each host about half.
3. with `--layouts one,split,cluster`, also **two hosts, no NATS**: two `sfmd run` without
   `[cluster]`, each with half the streams in its own registry file. The control: what
   running the streams in two processes costs by itself, apart from cluster mode.

For each layout, once every stream streams (each with a message stored) and `--settle`
seconds more: a quiet window of `--quiet` s (nobody calls the API) gives each process's CPU %
(user+sys, all threads, from /proc) and NATS's message counters (its /varz: `in_msgs`,
`out_msgs`; and each JetStream stream's writes, from its last sequence number in /jsz);
a load window of `--load` s gives the control API's latency from one client
calling host A a few times a second (`--api-rate`) with fanout's mix: GET /health, GET
/streams/{name}, GET /streams (every stream), GET /metrics and a PATCH of a filter stream's
`track` (four filters on spare credentials, created as the window opens). Then GET /cluster
is timed on its own (two hosts only), and each process's VmRSS and peak (VmHWM) are read.

What cluster mode should cost: every held slot's lease renewed every `lease_ttl / 3` (1,000
slots, 15 s: 200 renewals a second over the two hosts), each host's heartbeat every
`lease_ttl / 3` and poll of the hosts and the registry every `poll_interval`, and, for streams
with resume points, a checkpoint put (a read and a compare-and-set) when a stream's flushed
mark moved, at most every `checkpoint_interval`. Nothing is pinned to a core: the two hosts,
NATS, the fake and this client share the machine's cores (and other users' load, recorded).
`--profile DIR` records each host's busy threads with py-spy during the quiet window (py-spy
then takes CPU of its own on the same cores: keep such runs out of the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import cpu_seconds, dated_section, keep_work, load_average, percentile, publish
from clusterlib import (
    BenchError,
    FakeAPIProcess,
    HostProcess,
    NatsProcess,
    write_host_config,
)
from fanout import (
    MESSAGE_SIZE,
    MIX,
    Control,
    credential_name,
    credentials_toml,
    machine_facts,
    proc_status,
    profile_summary,
    sample_name,
    start_profile,
)

REPO = Path(__file__).resolve().parent.parent
FILTERS = 4  # filter streams on spare credentials, for PATCH
STARTUP_TIMEOUT = 300.0
#: --layouts names -> the rows' labels.
LAYOUTS = {"one": "one host", "split": "two hosts, no NATS", "cluster": "two hosts"}


def stream_bodies(n: int, jetstream: int) -> list[dict[str, Any]]:
    """n streams, each its own slot: the last `jetstream` of them Jetstream streams, the
    rest v1.1 sample streams on a credential each."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i >= n - jetstream:
            out.append({"name": sample_name(i), "source": "bluesky", "kind": "jetstream"})
        else:
            out.append({"name": sample_name(i), "kind": "sample",
                        "credential": credential_name(i)})  # fmt: skip
    return out


@dataclass
class ProcFigures:
    """One process's figures in a layout."""

    cpu_pct: float = 0.0  # quiet window
    cpu_load_pct: float = 0.0  # load window
    rss_mb: float = 0.0  # after the load window
    hwm_mb: float = 0.0  # peak
    streams: int = 0  # streams it runs (hosts)
    messages_per_s: float = 0.0  # stored in the quiet window (hosts)


@dataclass
class Layout:
    label: str
    procs: dict[str, ProcFigures] = field(default_factory=dict)  # "host-a", "nats", "fake"
    latency: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    streaming_s: float = 0.0  # hosts started (or first POST) -> every stream streaming
    created_s: float = 0.0  # two hosts: the POSTs, one after another
    nats_in_per_s: float = 0.0
    nats_out_per_s: float = 0.0
    nats_bytes_in_per_s: float = 0.0
    writes_per_s: dict[str, float] = field(default_factory=dict)  # JetStream stream -> writes/s
    load: str = ""
    profiles: dict[str, str] = field(default_factory=dict)  # host -> py-spy summary
    stops: dict[str, tuple[float, int | None]] = field(default_factory=dict)  # SIGTERM -> exit


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.bodies = stream_bodies(args.streams, args.jetstream)
        self.names = [b["name"] for b in self.bodies]
        self.name_set = set(self.names)
        self.credentials = root / "credentials.toml"
        names = [credential_name(i) for i in range(args.streams)]
        names += [f"x{i}" for i in range(FILTERS)]
        self.credentials.write_text(credentials_toml(names))
        os.chmod(self.credentials, 0o600)

    async def run(self) -> list[Layout]:
        fake = FakeAPIProcess(
            self.credentials, self.root,
            ["--rate", str(self.args.rate), "--message-size", str(MESSAGE_SIZE),
             "--keepalive", "30", "--jetstream-rate", str(self.args.rate),
             "--mastodon-rate", "0"],
        )  # fmt: skip
        try:
            layouts = []
            for name in self.args.layouts:
                print(LAYOUTS[name], flush=True)
                if name == "one":
                    layouts.append(await self.alone(fake, {"alone": self.bodies}, "one host"))
                elif name == "split":
                    half = len(self.bodies) // 2
                    parts = {"half-a": self.bodies[:half], "half-b": self.bodies[half:]}
                    layouts.append(await self.alone(fake, parts, LAYOUTS[name]))
                else:
                    layouts.append(await self.two_hosts(fake))
            return layouts
        finally:
            fake.stop()

    # -- the layouts -------------------------------------------------------------------------

    async def alone(
        self, fake: FakeAPIProcess, parts: dict[str, list[dict[str, Any]]], label: str
    ) -> Layout:
        """Hosts without `[cluster]`, each with its part of the streams in its registry
        file."""
        layout = Layout(label, load=load_average())
        hosts: dict[str, tuple[HostProcess, Control]] = {}
        began = time.monotonic()
        try:
            for host_id, bodies in parts.items():
                home = self.root / host_id
                config = write_host_config(home, fake, self.credentials, None)
                state = home / "state"
                state.mkdir(parents=True)
                registry = {"version": 1, "streams": bodies}
                (state / "streams.json").write_text(json.dumps(registry))
                host = HostProcess(host_id, home, config)
                host.start()
                hosts[host_id] = (host, Control(host.socket))
            await self.wait_streaming(hosts, began, layout, clustered=False)
            await self.measure(layout, hosts, fake, None)
        finally:
            for host, control in hosts.values():
                await control.close()
                layout.stops[host.host_id] = seconds, code = host.stop()
                print(f"  {host.host_id}: SIGTERM -> exit {code} in {seconds:.1f} s", flush=True)
        return layout

    async def two_hosts(self, fake: FakeAPIProcess) -> Layout:
        nats = NatsProcess(self.root / "nats-store")
        layout = Layout("two hosts", load=load_average())
        hosts: dict[str, tuple[HostProcess, Control]] = {}
        try:
            for host_id in ("host-a", "host-b"):
                home = self.root / host_id
                cluster = {"nats_url": nats.url, "host_id": host_id,
                           "lease_ttl": self.args.lease_ttl}  # fmt: skip
                config = write_host_config(home, fake, self.credentials, cluster)
                host = HostProcess(host_id, home, config)
                host.start()
                hosts[host_id] = (host, Control(host.socket))
            for host, control in hosts.values():
                await self.wait_answers(host, control)
            a = hosts["host-a"][1]
            began = time.monotonic()
            for body in self.bodies:
                status, answer, _ = await a.call("POST", "/streams", body)
                if status != 201:
                    raise BenchError(f"POST /streams {body['name']}: {status} {answer}")
            layout.created_s = time.monotonic() - began
            print(f"  {len(self.bodies)} POST /streams in {layout.created_s:.1f} s", flush=True)
            await self.wait_streaming(hosts, began, layout, clustered=True)
            await self.measure(layout, hosts, fake, nats)
        finally:
            for host, control in hosts.values():
                await control.close()
                layout.stops[host.host_id] = seconds, code = host.stop()
                print(f"  {host.host_id}: SIGTERM -> exit {code} in {seconds:.1f} s", flush=True)
            nats.stop()
        return layout

    # -- waiting -----------------------------------------------------------------------------

    async def wait_answers(self, host: HostProcess, control: Control) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not await control.answers():
            host.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{host.host_id}'s control socket never answered")
            await asyncio.sleep(0.05)

    async def wait_streaming(
        self,
        hosts: dict[str, tuple[HostProcess, Control]],
        began: float,
        layout: Layout,
        clustered: bool,
    ) -> None:
        """Until every stream streams with a message stored, on the host that runs it."""
        for host, control in hosts.values():
            await self.wait_answers(host, control)
        while True:
            flowing = 0
            for host_id, (host, control) in hosts.items():
                host.check_alive()
                _, body, _ = await control.call("GET", "/streams")
                for s in body["streams"]:
                    if clustered and s.get("host") != host_id:
                        continue
                    flowing += s["status"]["state"] == "streaming" and s["status"]["messages"] > 0
            if flowing >= len(self.bodies):
                break
            if time.monotonic() - began > STARTUP_TIMEOUT:
                raise BenchError(f"only {flowing} of {len(self.bodies)} streams stream")
            await asyncio.sleep(0.5)
        layout.streaming_s = time.monotonic() - began
        print(f"  every stream streaming {layout.streaming_s:.1f} s after the start", flush=True)

    # -- the windows -------------------------------------------------------------------------

    async def measure(
        self,
        layout: Layout,
        hosts: dict[str, tuple[HostProcess, Control]],
        fake: FakeAPIProcess,
        nats: NatsProcess | None,
    ) -> None:
        await asyncio.sleep(self.args.settle)
        pids = {host_id: host.pid for host_id, (host, _) in hosts.items()}
        pids["fake API"] = fake.pid
        if nats is not None:
            pids["nats-server"] = nats.pid
        for host, _ in hosts.values():
            host.check_alive()
        clustered = nats is not None
        counts0 = await self.counts(hosts, clustered)
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        varz0 = nats.varz() if nats is not None else None
        seqs0 = nats.stream_seqs() if nats is not None else {}
        began = time.monotonic()
        spies = {}
        if self.args.profile is not None:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            for host_id, (host, _) in hosts.items():
                output = self.args.profile / f"{layout.label}-{host_id}.txt".replace(" ", "-")
                spies[host_id] = (
                    output,
                    start_profile(host.pid, output, self.args.quiet, None, gil=False),
                )
        await asyncio.sleep(self.args.quiet)
        elapsed = time.monotonic() - began
        cpu1 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        varz1 = nats.varz() if nats is not None else None
        seqs1 = nats.stream_seqs() if nats is not None else {}
        layout.writes_per_s = {
            name: (seq - seqs0.get(name, 0)) / elapsed for name, seq in sorted(seqs1.items())
        }
        counts1 = await self.counts(hosts, clustered)
        for host_id, (output, spy) in spies.items():
            await asyncio.to_thread(spy.wait, 60)
            if output.exists():
                layout.profiles[host_id] = profile_summary(output)
                print(f"  {host_id}:\n{layout.profiles[host_id]}", flush=True)
        for k in pids:
            layout.procs[k] = ProcFigures(cpu_pct=(cpu1[k] - cpu0[k]) / elapsed * 100)
        for host_id in hosts:
            figures = layout.procs[host_id]
            figures.streams = len(counts1[host_id])
            figures.messages_per_s = (
                sum(counts1[host_id][n] - counts0[host_id].get(n, 0) for n in counts1[host_id])
                / elapsed
            )
        if varz0 is not None and varz1 is not None:
            layout.nats_in_per_s = (varz1["in_msgs"] - varz0["in_msgs"]) / elapsed
            layout.nats_out_per_s = (varz1["out_msgs"] - varz0["out_msgs"]) / elapsed
            layout.nats_bytes_in_per_s = (varz1["in_bytes"] - varz0["in_bytes"]) / elapsed
        print(
            "  quiet: "
            + ", ".join(f"{k} {v.cpu_pct:.1f} %" for k, v in layout.procs.items())
            + (f"; NATS {layout.nats_in_per_s:,.0f} msgs/s in" if nats else ""),
            flush=True,
        )
        # Host A answers for every stream in cluster mode, only for its own ones alone.
        names = self.names if clustered else sorted(counts1[next(iter(hosts))])
        await self.load(layout, hosts, pids, names)
        for k, pid in pids.items():
            status = proc_status(pid)
            layout.procs[k].rss_mb = status["VmRSS"] / 1024
            layout.procs[k].hwm_mb = status["VmHWM"] / 1024

    async def counts(
        self, hosts: dict[str, tuple[HostProcess, Control]], clustered: bool
    ) -> dict[str, dict[str, int]]:
        """host -> {stream: messages} for the streams it runs itself."""
        out: dict[str, dict[str, int]] = {}
        for host_id, (_, control) in hosts.items():
            _, body, _ = await control.call("GET", "/streams")
            out[host_id] = {
                s["name"]: s["status"]["messages"]
                for s in body["streams"]
                if s["name"] in self.name_set and (not clustered or s.get("host") == host_id)
            }
        return out

    async def load(
        self,
        layout: Layout,
        hosts: dict[str, tuple[HostProcess, Control]],
        pids: dict[str, int],
        names: list[str],
    ) -> None:
        control = next(iter(hosts.values()))[1]
        rng = random.Random(len(self.bodies))
        samples: list[tuple[str, float, int]] = []

        async def timed(kind: str, method: str, path: str, body: Any = None) -> None:
            status, _, seconds = await control.call(method, path, body)
            samples.append((kind, seconds, status))

        filters = [f"f{i}" for i in range(FILTERS)]
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        began = time.monotonic()
        for i, name in enumerate(filters):
            body = {"name": name, "kind": "filter", "track": [f"{name}-0"], "credential": f"x{i}"}
            await timed("POST /streams", "POST", "/streams", body)
        kinds, weights = list(MIX), list(MIX.values())
        interval = 1.0 / self.args.api_rate
        next_at = time.monotonic()
        count = 0
        while time.monotonic() < began + self.args.load:
            kind = rng.choices(kinds, weights)[0]
            count += 1
            if kind == "GET /streams/{name}":
                await timed(kind, "GET", f"/streams/{rng.choice(names)}")
            elif kind == "PATCH /streams/{name}":
                name = filters[count % FILTERS]
                await timed(kind, "PATCH", f"/streams/{name}", {"track": [f"{name}-{count}"]})
            else:
                method, path = kind.split(" ", 1)
                await timed(kind, method, path)
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        elapsed = time.monotonic() - began
        for k, pid in pids.items():
            layout.procs[k].cpu_load_pct = (cpu_seconds(pid) - cpu0[k]) / elapsed * 100
        if "nats-server" in pids:
            for _ in range(self.args.cluster_calls):
                await timed("GET /cluster", "GET", "/cluster")
                await asyncio.sleep(interval)
        expected = {"POST /streams": 201}
        for kind, seconds, status in samples:
            layout.latency.setdefault(kind, []).append(seconds)
            if status != expected.get(kind, 200):
                layout.errors.append(f"{kind} answered {status}")
        print(
            f"  load: {len(samples)} requests, p99 "
            f"{percentile([s for _, s, _ in samples], 99) * 1e3:.1f} ms",
            flush=True,
        )


# --------------------------------------------------------------------------- report


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.1f}" if values else ""


def body_text(layouts: list[Layout], args: argparse.Namespace) -> str:
    kinds = f"{args.streams - args.jetstream:,} v1.1 sample"
    if args.jetstream:
        kinds += f" + {args.jetstream:,} Jetstream"
    out = [
        f"{args.streams:,} streams ({kinds}, {args.rate:g} msg/s each), layouts in this order: "
        + "; ".join(LAYOUTS[name] for name in args.layouts)
        + f" (two hosts: one nats-server, `lease_ttl` {args.lease_ttl:g} s; sfmd's other "
        f"defaults); quiet window {args.quiet:g} s, load window {args.load:g} s "
        f"(~{args.api_rate:g} requests/s to host A), after {args.settle:g} s of settling:",
        "",
        "| layout | process | streams run | msgs/s stored | CPU % quiet | CPU % API load "
        "| RSS MB | peak MB | load average |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lay in layouts:
        for name, p in lay.procs.items():
            streams = f"{p.streams:,}" if p.streams else ""
            stored = f"{p.messages_per_s:,.0f}" if p.streams else ""
            out.append(
                f"| {lay.label} | {name} | {streams} | {stored} | {p.cpu_pct:.1f} "
                f"| {p.cpu_load_pct:.1f} | {p.rss_mb:.0f} | {p.hwm_mb:.0f} | {lay.load} |"
            )
    out += [
        "",
        "Control API latency on host A under the mix, client side, ms:",
        "",
        "| layout | request | n | p50 | p95 | p99 | max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for lay in layouts:
        every = [v for kind, vs in lay.latency.items() if kind != "GET /cluster" for v in vs]
        for kind, values in [*sorted(lay.latency.items()), ("all of the mix", every)]:
            out.append(
                f"| {lay.label} | {kind} | {len(values)} | {_ms(values, 50)} | {_ms(values, 95)} "
                f"| {_ms(values, 99)} | {max(values) * 1e3:.1f} |"
            )
    out.append("")
    alone = next((x for x in layouts if x.label == LAYOUTS["one"]), None)
    pair = next((x for x in layouts if x.label == LAYOUTS["cluster"]), None)
    split = next((x for x in layouts if x.label == LAYOUTS["split"]), None)
    if pair:
        out += _cluster_lines(alone, pair, split, args)
    stops = [
        f"{lay.label}: {host} {seconds:.1f} s, exit {code}"
        for lay in layouts
        for host, (seconds, code) in lay.stops.items()
    ]
    out.append(f"- SIGTERM → exit (20 s at most, then SIGKILL: exit None): {'; '.join(stops)}")
    errors = [e for lay in layouts for e in lay.errors]
    if errors:
        out.append(f"- errors: {'; '.join(errors[:10])}")
    return "\n".join(out)


def _cluster_lines(
    alone: Layout | None, pair: Layout, split: Layout | None, args: argparse.Namespace
) -> list[str]:
    """What the two hosts on NATS cost above one host alone and above the same split
    without NATS (whichever of the two ran)."""
    hosts = [p for k, p in pair.procs.items() if k.startswith("host-")]
    both = sum(p.cpu_pct for p in hosts)
    nats = pair.procs["nats-server"]
    renewals = args.streams / (args.lease_ttl / 3)
    out = [
        f"- CPU, quiet: two hosts on NATS {' + '.join(f'{p.cpu_pct:.1f}' for p in hosts)} = "
        f"{both:.1f} % of a core, plus nats-server {nats.cpu_pct:.1f} %.",
        f"- What NATS saw, quiet: {pair.nats_in_per_s:,.0f} messages/s in, "
        f"{pair.nats_out_per_s:,.0f} out, {pair.nats_bytes_in_per_s / 1024:,.0f} KiB/s in; "
        f"the lease renewals alone are {args.streams:,} slots / {args.lease_ttl / 3:g} s = "
        f"{renewals:,.0f} a second.",
        "- Writes to NATS's streams, quiet, a second: "
        + ", ".join(f"{name} {rate:,.1f}" for name, rate in pair.writes_per_s.items())
        + " (a bucket's stream takes one sequence number per write: KV_sfm_leases counts "
        "lease acquires and renewals, KV_sfm_hosts heartbeats, KV_sfm_checkpoints resume "
        "points saved).",
    ]
    if alone is not None:
        one = alone.procs["alone"]
        extra = both - one.cpu_pct
        out += [
            f"- Against one host alone ({one.cpu_pct:.1f} %, peak {one.hwm_mb:.0f} MB): "
            f"{extra:+.1f} points on the hosts, {extra + nats.cpu_pct:+.1f} with NATS; "
            f"{extra / 100 / renewals * 1e6:,.0f} µs of host CPU per lease renewal if all of "
            f"it were renewals. Every stream streaming: one host {alone.streaming_s:.1f} s "
            "after the start with its registry file.",
        ]
    out += _split_lines(split, both, renewals)
    out += [
        f"- Memory: two hosts on NATS peak {' and '.join(f'{p.hwm_mb:.0f}' for p in hosts)} MB "
        f"(each running about half), nats-server peak {nats.hwm_mb:.0f} MB.",
        f"- Two hosts on NATS: every stream streaming {pair.streaming_s:.1f} s after the first "
        f"of {args.streams:,} `POST /streams` to host A, which took {pair.created_s:.1f} s one "
        "after another.",
    ]
    return out


def _split_lines(split: Layout | None, both: float, renewals: float) -> list[str]:
    """What cluster mode costs above the same split without NATS (the control layout)."""
    if split is None:
        return []
    halves = [p for k, p in split.procs.items() if k.startswith("half-")]
    total = sum(p.cpu_pct for p in halves)
    above = both - total
    return [
        f"- The control, two hosts without NATS each running half: "
        f"{' + '.join(f'{p.cpu_pct:.1f}' for p in halves)} = {total:.1f} %, peak "
        f"{' and '.join(f'{p.hwm_mb:.0f}' for p in halves)} MB. Cluster mode above that same "
        f"split: {above:+.1f} points on the hosts, {above / 100 / renewals * 1e6:,.0f} µs of "
        "host CPU per lease renewal if all of it were renewals.",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams in all")
    parser.add_argument(
        "--jetstream",
        type=int,
        default=0,
        help="how many of them are Jetstream streams (they have resume points)",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per stream")
    parser.add_argument("--lease-ttl", type=float, default=15.0, help="[cluster] lease_ttl")
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="seconds after every stream streams, before the quiet window",
    )
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds of the CPU window")
    parser.add_argument("--load", type=float, default=60.0, help="seconds of API load")
    parser.add_argument("--api-rate", type=float, default=8.0, help="API requests per second")
    parser.add_argument(
        "--cluster-calls",
        type=int,
        default=50,
        help="GET /cluster calls timed after the load window (two hosts)",
    )
    parser.add_argument(
        "--layouts",
        default="one,cluster",
        help="which layouts, in this order: one (one host), split (two hosts without NATS, "
        "half each), cluster (two hosts on NATS); comma-separated (default one,cluster)",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy each host's quiet window into DIR"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="copy the work folder (logs, data) into DIR"
    )
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--title", default="", help="a few words for the docs heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= 9999 or not 0 <= args.jetstream <= args.streams:
        parser.error("--streams 1-9999, --jetstream at most --streams")
    args.layouts = [name for name in args.layouts.split(",") if name]
    if not args.layouts or any(name not in LAYOUTS for name in args.layouts):
        parser.error(f"--layouts: some of {', '.join(LAYOUTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="sfmd-clustercost-") as tmp:
        try:
            layouts = asyncio.run(Bench(args, Path(tmp)).run())
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
        finally:
            keep_work(tmp, args.keep)
    facts = machine_facts()
    facts["load average (1, 5, 15 min)"] = f"{load_before} before, {load_average()} after"
    body = body_text(layouts, args)
    command = f"bench/cluster_cost.py --streams {args.streams} --rate {args.rate:g}"
    if args.jetstream:
        command += f" --jetstream {args.jetstream}"
    command += f" --layouts {','.join(args.layouts)}"
    note = " (nothing pinned; one sfmd fakeapi for both layouts)"
    heading = f"cluster mode's cost, {args.streams:,} streams on two hosts against one"
    section = dated_section(heading, args.title, facts, command, body, note)
    publish(args.doc, facts, body, section, args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
