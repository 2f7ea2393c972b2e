"""Soak: many streams for a long time with the control API in use, then count what was lost.

Run by hand, never as a test: `python bench/soak.py [--streams 1000] [--rate 1] [--minutes 10]`.
Done means (the reliability issue): the daemon's RSS grows less than 10 % over the run, and
every message the fake API sent to a sample stream is in a published file.

1. `sfmd fakeapi --rate R` serves every connection R tweets of 4.8 KB a second. `sfmd run`
   starts with N sample streams in its registry, one credential each, with sfmd's defaults
   except `save_interval = 60` (a rotation of every stream each minute) and the paths; four
   filters on spare credentials are then created through the API. The processes, config and
   API client are bench/fanout.py's.
2. Once every stream streams, one client calls the API at --api-rate requests/s with fanout's
   mix (health, one stream, every stream, metrics, PATCH of a filter's track), each call timed
   to the last byte of its answer, for a warm-up of --warmup seconds and then the M minutes of
   the soak proper. RSS, peak RSS, descriptors, threads and CPU are read every --sample-every
   seconds. The warm-up (two rotations by default) lets every stream's gzip compressor fill its
   window, which at one tweet a second takes a minute or two and is memory the daemon then
   keeps, file after file: growth is measured from the end of the warm-up. RSS when all first
   streamed is reported too.
3. At the end RSS is read again; the fake API stops sending (`total = 0`: keep-alives only);
   the client waits until the daemon has counted every message sent, and SIGTERM stops it,
   which must exit 0 within 10 s and leave no `.part`. Sent (the fake API's count of messages
   fully written on each connection) is compared with stored (the manifests), stream by
   stream; for --verify-ids streams the ids too, in order.

Filters are reported apart: a PATCH that changes a filter makes sfmd drop its connection on
purpose, and what the fake API had already written into that socket is never read. Sample
streams are never changed, so for them sent must equal stored exactly.

The daemon is pinned to one core and the fake API and this client to the other (`--no-pin`
turns that off). Results print as markdown and, unless --no-doc, are appended to
docs/reliability.md (whose last section is "Soak") with the machine's facts and load average.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import cpu_seconds, dated_section, load_average, publish
from fanout import (
    FILTERS,
    MESSAGE_SIZE,
    MIX,
    STOP_LIMIT,
    BenchError,
    Control,
    DaemonProcess,
    FakeAPIProcess,
    credential_name,
    credentials_toml,
    machine_facts,
    open_fds,
    percentile,
    proc_status,
    sample_name,
    stop_daemon,
    wait_streaming,
    write_config,
    write_registry,
)

from sfmd.fake import seq_of

REPO = Path(__file__).resolve().parent.parent
SAVE_INTERVAL = 60  # fanout's write_config sets it; stated here for the report
STARTUP_TIMEOUT = 180.0
DRAIN_TIMEOUT = 120.0  # after the fake API stops sending, for the daemon to count the rest
RSS_GROWTH_LIMIT = 0.10


@dataclass
class Reading:
    at: float  # seconds since the soak began
    rss_mb: float
    hwm_mb: float
    fds: int
    threads: int
    cpu_s: float


@dataclass
class Call:
    kind: str
    at: float  # seconds since the warm-up began
    seconds: float
    status: int


@dataclass
class SoakResult:
    streams: int
    start_s: float = 0.0  # spawn -> every stream streaming with a message
    readings: list[Reading] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    soak_s: float = 0.0
    sent: dict[str, int] = field(default_factory=dict)  # stream -> messages the fake API sent
    stored: dict[str, int] = field(default_factory=dict)  # stream -> messages in its manifest
    connections: dict[str, int] = field(default_factory=dict)  # stream -> connections made
    files: int = 0
    ids_checked: int = 0
    id_mismatches: list[str] = field(default_factory=list)
    stop_s: float = 0.0
    stop_code: int | None = None
    parts_left: int = 0
    log_levels: dict[str, int] = field(default_factory=dict)
    log_warnings: dict[str, int] = field(default_factory=dict)  # event -> count (warn/error)
    fake_rss_mb: float = 0.0
    load_before: str = ""
    load_after: str = ""


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.result = SoakResult(args.streams)
        self.samples = [sample_name(i) for i in range(args.streams)]
        self.filters = [f"f{i}" for i in range(FILTERS)]
        self.credential_of = {sample_name(i): credential_name(i) for i in range(args.streams)}
        self.credential_of.update({f"f{i}": f"x{i}" for i in range(FILTERS)})
        rng = random.Random(0)
        self.checked = set(rng.sample(self.samples, min(args.verify_ids, len(self.samples))))
        self.sent_seqs: dict[str, list[list[int]]] = {}  # stream -> the fake API's id ranges
        cores = sorted(os.sched_getaffinity(0))
        pin = not args.no_pin and len(cores) >= 2
        self.daemon_core, self.other_core = (cores[-1], cores[0]) if pin else (None, None)

    async def run(self) -> SoakResult:
        r = self.result
        r.load_before = load_average()
        if self.other_core is not None:
            os.sched_setaffinity(0, {self.other_core})  # this client shares a core with the API
        credentials = self.root / "credentials.toml"
        credentials.write_text(credentials_toml(self.credential_of.values()))
        os.chmod(credentials, 0o600)
        fake = FakeAPIProcess(credentials, self.args.rate, self.other_core)
        workdir = self.root / "soak"
        workdir.mkdir()
        config = write_config(workdir, fake, credentials, self.args.set)
        write_registry(workdir / "state", self.args.streams)
        daemon = DaemonProcess(workdir, config, self.daemon_core)
        control = Control(workdir / "sfmd.sock")
        try:
            await self._startup(daemon, control)
            await self._soak(daemon, control)
            await self._drain(daemon, control, fake)
            r.fake_rss_mb = proc_status(fake.proc.pid)["VmRSS"] / 1024
            r.stop_s, r.stop_code = await stop_daemon(daemon)
            self._count(workdir)
        finally:
            await control.close()
            daemon.kill()
            fake.stop()
        r.load_after = load_average()
        return r

    # -- start-up ---------------------------------------------------------------------------

    async def _startup(self, daemon: DaemonProcess, control: Control) -> None:
        deadline = daemon.spawned + STARTUP_TIMEOUT
        while not await control.answers():
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("the control socket never answered")
            await asyncio.sleep(0.05)
        names = set(self.samples)
        await wait_streaming(
            daemon, control, names, deadline,
            f"not every stream streamed within {STARTUP_TIMEOUT:g} s",
        )
        self.result.start_s = time.monotonic() - daemon.spawned
        for name in self.filters:
            body = {"name": name, "kind": "filter", "track": [f"{name}-0"],
                    "credential": self.credential_of[name]}  # fmt: skip
            status, answer, _ = await control.call("POST", "/streams", body)
            if status != 201:
                raise BenchError(f"POST /streams {name} answered {status}: {answer}")
        print(f"  all {len(names)} streaming after {self.result.start_s:.1f} s; "
              f"{len(self.filters)} filters added", flush=True)  # fmt: skip

    # -- the soak ---------------------------------------------------------------------------

    def _read(self, daemon: DaemonProcess, began: float) -> Reading:
        status = proc_status(daemon.pid)
        reading = Reading(
            at=time.monotonic() - began,
            rss_mb=status["VmRSS"] / 1024,
            hwm_mb=status["VmHWM"] / 1024,
            fds=open_fds(daemon.pid),
            threads=status["Threads"],
            cpu_s=cpu_seconds(daemon.pid),
        )
        self.result.readings.append(reading)
        return reading

    async def _soak(self, daemon: DaemonProcess, control: Control) -> None:
        r = self.result
        rng = random.Random(self.args.streams)
        kinds, weights = list(MIX), list(MIX.values())
        interval = 1.0 / self.args.api_rate
        began = time.monotonic()
        end = began + self.args.warmup + self.args.minutes * 60
        first = self._read(daemon, began)
        print(f"  warm-up begins: RSS {first.rss_mb:.0f} MB, {first.fds} fds, "
              f"{first.threads} threads", flush=True)  # fmt: skip
        next_call = next_reading = next_report = began
        count = 0
        stored_total = 0
        while (now := time.monotonic()) < end:
            daemon.check_alive()
            if now >= next_reading:
                reading = self._read(daemon, began)
                next_reading += self.args.sample_every
                if now >= next_report:
                    print(f"  {reading.at / 60:5.1f} min: RSS {reading.rss_mb:.0f} MB (peak "
                          f"{reading.hwm_mb:.0f}), {reading.fds} fds, {len(r.calls)} calls, "
                          f"{stored_total:,} messages counted", flush=True)  # fmt: skip
                    next_report += 60
            kind = rng.choices(kinds, weights)[0]
            count += 1
            if kind == "PATCH /streams/{name}":
                name = self.filters[count % len(self.filters)]
                method, path, body = "PATCH", f"/streams/{name}", {"track": [f"{name}-{count}"]}
            elif kind == "GET /streams/{name}":
                method, path, body = "GET", f"/streams/{rng.choice(self.samples)}", None
            else:
                method, path = kind.split(" ")
                body = None
            status, answer, seconds = await control.call(method, path, body)
            r.calls.append(Call(kind, now - began, seconds, status))
            if status != 200:
                r.errors.append(f"{method} {path} answered {status}: {str(answer)[:200]}")
            elif kind == "GET /streams":
                stored_total = sum(s["status"]["messages"] for s in answer["streams"])
            next_call = max(next_call + interval, time.monotonic())
            await asyncio.sleep(max(0.0, next_call - time.monotonic()))
        self._read(daemon, began)
        r.soak_s = time.monotonic() - began - self.args.warmup

    # -- the end ----------------------------------------------------------------------------

    async def _drain(self, daemon: DaemonProcess, control: Control, fake: FakeAPIProcess) -> None:
        """Stop the fake API's messages, then wait until the daemon has counted them all."""
        async with aiohttp.ClientSession() as session:
            async with session.post(fake.url + "/_fake/configure", json={"total": 0}) as resp:
                if resp.status != 200:
                    raise BenchError(f"the fake API refused total=0: {await resp.text()}")
            # One more keep-alive interval would not add messages: every connection re-reads
            # its settings when configure wakes it, so the log read now is final.
            await asyncio.sleep(1.0)
            async with session.get(fake.url + "/_fake/log") as resp:
                log = await resp.json()
        stream_of = {cred: name for name, cred in self.credential_of.items()}
        sent: dict[str, int] = {}
        connections: dict[str, int] = {}
        for record in log:
            name = stream_of.get(record.get("credential") or "")
            if name is None or record["endpoint"] not in ("filter", "sample"):
                continue
            sent[name] = sent.get(name, 0) + record["sent_count"]
            connections[name] = connections.get(name, 0) + 1
            self.sent_seqs.setdefault(name, []).extend(record["sent_seqs"])
        self.result.sent, self.result.connections = sent, connections
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            daemon.check_alive()
            _, body, _ = await control.call("GET", "/streams")
            counted = {s["name"]: s["status"]["messages"] for s in body["streams"]}
            behind = [n for n in self.samples if counted.get(n, 0) < sent.get(n, 0)]
            if not behind:
                break
            if time.monotonic() > deadline:
                print(f"  {len(behind)} streams still behind after {DRAIN_TIMEOUT:g} s",
                      flush=True)  # fmt: skip
                break
            await asyncio.sleep(0.5)

    def _count(self, workdir: Path) -> None:
        r = self.result
        data = workdir / "data"
        r.parts_left = sum(1 for _ in data.rglob("*.part"))
        for stream_dir in data.iterdir():
            manifest = stream_dir / "manifest.jsonl"
            entries = [json.loads(line) for line in manifest.read_text().splitlines() if line]
            r.stored[stream_dir.name] = sum(e["messages"] for e in entries)
            # A `"file": null` line covers an interval in which the stream stored nothing
            # (the drain at the end can span a boundary): no file to read.
            files = [e for e in entries if e["file"] is not None]
            r.files += len(files)
            if stream_dir.name in self.checked:
                self._check_ids(data, stream_dir.name, files)
        for line in (workdir / "log" / "sfmd.log").read_text().splitlines():
            event = json.loads(line)
            level = event.get("level", "?")
            r.log_levels[level] = r.log_levels.get(level, 0) + 1
            if level in ("warning", "error", "critical"):
                key = f"{level} {event.get('event')}"
                r.log_warnings[key] = r.log_warnings.get(key, 0) + 1

    def _check_ids(self, data: Path, name: str, entries: list[dict[str, Any]]) -> None:
        """The stored ids, in order, against the ids the fake API sent on its connections."""
        stored: list[int] = []
        for entry in entries:
            raw = (data / entry["file"]).read_bytes()
            body = gzip.decompress(raw) if entry["file"].endswith(".gz") else raw
            stored += [seq_of(line) for line in body.split(b"\n") if line]
        sent = [seq for first, last in self.sent_seqs.get(name, []) for seq in
                range(first, last + 1)]  # fmt: skip
        self.result.ids_checked += len(stored)
        if stored != sent:
            missing = len(set(sent) - set(stored))
            extra = len(stored) - len(set(stored))
            self.result.id_mismatches.append(
                f"{name}: {len(sent)} sent, {len(stored)} stored, {missing} missing, "
                f"{extra} duplicated"
            )


# --------------------------------------------------------------------------- report


def by_minute(readings: list[Reading]) -> list[Reading]:
    """The first reading of each minute, and the last one."""
    out: list[Reading] = []
    for reading in readings:
        if not out or reading.at >= 60 * len(out):
            out.append(reading)
    if readings and out[-1] is not readings[-1]:
        out.append(readings[-1])
    return out


def report(r: SoakResult, args: argparse.Namespace) -> tuple[str, bool]:
    """The markdown for docs/reliability.md, and whether the run met the issue's bar."""
    streaming, last = r.readings[0], r.readings[-1]
    first = next(x for x in r.readings if x.at >= args.warmup)  # the soak's start
    growth = (last.rss_mb - first.rss_mb) / first.rss_mb
    cpu_pct = (last.cpu_s - first.cpu_s) / max(last.at - first.at, 1e-9) * 100
    calls = [c for c in r.calls if c.at >= args.warmup]
    samples = [n for n in r.sent if n.startswith("s")]
    filters = [n for n in r.sent if n.startswith("f")]
    sent_samples = sum(r.sent[n] for n in samples)
    stored_samples = sum(r.stored.get(n, 0) for n in samples)
    lost = {n: r.sent[n] - r.stored.get(n, 0) for n in samples if r.stored.get(n, 0) != r.sent[n]}
    all_ms = [c.seconds * 1e3 for c in calls]
    met_rss = growth < RSS_GROWTH_LIMIT
    met_lost = not lost and not r.id_mismatches and len(samples) == r.streams
    stopped = r.stop_code == 0 and r.stop_s <= STOP_LIMIT and not r.parts_left
    ok = met_rss and met_lost and stopped and not r.errors

    lines = [
        f"{r.streams:,} sample streams at {args.rate:g} message/s each ({MESSAGE_SIZE:,} B "
        f"tweets) plus {FILTERS} filters, {r.soak_s / 60:.1f} minutes, ~{args.api_rate:g} API "
        f"calls/s, after a warm-up of {args.warmup:g} s under the same load; all streaming "
        f"{r.start_s:.1f} s after start-up.",
        "",
        "| | all streaming | start of soak | end of soak | change over the soak |",
        "|---|---:|---:|---:|---:|",
        f"| RSS MB | {streaming.rss_mb:.1f} | {first.rss_mb:.1f} | {last.rss_mb:.1f} "
        f"| {growth:+.1%} |",
        f"| peak RSS (VmHWM) MB | {streaming.hwm_mb:.1f} | {first.hwm_mb:.1f} "
        f"| {last.hwm_mb:.1f} | |",
        f"| open descriptors | {streaming.fds:,} | {first.fds:,} | {last.fds:,} "
        f"| {last.fds - first.fds:+,} |",
        f"| threads | {streaming.threads} | {first.threads} | {last.threads} "
        f"| {last.threads - first.threads:+} |",
        "",
        "RSS by minute from all streaming (MB): "
        + ", ".join(f"{x.rss_mb:.0f}" for x in by_minute(r.readings)),
        "",
        f"Daemon CPU over the soak: {cpu_pct:.1f} % of one core. Fake API RSS at the end: "
        f"{r.fake_rss_mb:.0f} MB.",
        "",
        "| messages | sent | stored | lost or extra |",
        "|---|---:|---:|---:|",
        f"| sample streams ({len(samples):,}) | {sent_samples:,} | {stored_samples:,} "
        f"| {len(lost)} streams differ |",
    ]
    for name in filters:
        lines.append(
            f"| filter {name} ({r.connections.get(name, 0)} connections: one per PATCH) "
            f"| {r.sent[name]:,} | {r.stored.get(name, 0):,} "
            f"| {r.stored.get(name, 0) - r.sent[name]:+,} (in flight at its reconnects) |"
        )
    reconnected = [n for n in samples if r.connections.get(n, 0) > 1]
    lines += [
        "",
        f"{r.files:,} files published; ids checked in order for {args.verify_ids} sample "
        f"streams ({r.ids_checked:,} messages): "
        + ("; ".join(r.id_mismatches[:5]) or "all equal to what was sent."),
        f"Sample streams that reconnected: {len(reconnected)}.",
        "",
        f"Control API over the soak, client side, ms ({len(all_ms):,} calls):",
        "",
        "| request | n | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    kinds = sorted({c.kind for c in calls})
    for kind, values in [("all", all_ms)] + [
        (k, [c.seconds * 1e3 for c in calls if c.kind == k]) for k in kinds
    ]:
        lines.append(
            f"| {kind} | {len(values):,} | {statistics.median(values):.1f} "
            f"| {percentile(values, 99):.1f} | {max(values):.1f} |"
        )
    warnings = ", ".join(f"{k} ({v})" for k, v in sorted(r.log_warnings.items())) or "none"
    lines += [
        "",
        f"sfmd.log: {sum(r.log_levels.values()):,} lines; warnings and errors: {warnings}.",
        f"SIGTERM → exit {r.stop_code} in {r.stop_s:.2f} s, {r.parts_left} `.part` left.",
        "",
        f"- RSS growth under {RSS_GROWTH_LIMIT:.0%}: {growth:+.1%}, "
        f"{'met' if met_rss else '**not met**'}",
        f"- zero lost (sample streams): {sent_samples - stored_samples:,} lost, "
        f"{len(lost)} streams differ, {'met' if met_lost else '**not met**'}",
        f"- clean stop: {'met' if stopped else '**not met**'}",
    ]
    if r.errors:
        lines.append(f"- API errors: {len(r.errors)}: {'; '.join(r.errors[:5])}")
    if lost:
        worst = sorted(lost.items(), key=lambda kv: -abs(kv[1]))[:5]
        lines.append(f"- streams that differ (sent - stored): {worst}")
    return "\n".join(lines), ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="sample streams (default 1000)")
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per stream")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument(
        "--warmup", type=float, default=2 * SAVE_INTERVAL,
        help="seconds of load before the soak's start (default: two rotations)",
    )  # fmt: skip
    parser.add_argument("--api-rate", type=float, default=8.0, help="API requests per second")
    parser.add_argument(
        "--sample-every", type=float, default=10.0, help="seconds between RSS readings"
    )
    parser.add_argument(
        "--verify-ids", type=int, default=20, metavar="N",
        help="compare stored ids with sent ids, in order, for N sample streams (default 20)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="a config setting (a TOML value); repeatable",
    )  # fmt: skip
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument(
        "--doc", type=Path, default=REPO / "docs" / "reliability.md", help="the file to append to"
    )
    parser.add_argument("--title", default="", help="a few words for the section heading")
    args = parser.parse_args(argv)
    args.set = dict(item.split("=", 1) for item in args.set)
    if not 1 <= args.streams <= 9999:
        parser.error("--streams: between 1 and 9999")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sfmd-soak-") as tmp:
        try:
            result = asyncio.run(Soak(args, Path(tmp)).run())
        except BenchError as e:
            print(f"soak failed: {e}", file=sys.stderr)
            return 1
    body, ok = report(result, args)
    facts = machine_facts()
    facts["load average before, after (1, 5, 15 min)"] = (
        f"{result.load_before}; {result.load_after}"
    )
    settings = "".join(f" --set {k}={v}" for k, v in args.set.items())
    command = (
        f"bench/soak.py --streams {args.streams} --rate {args.rate:g} --minutes "
        f"{args.minutes:g} --warmup {args.warmup:g} --api-rate {args.api_rate:g}{settings}"
    )
    section = dated_section("soak", args.title, facts, command, body)
    publish(args.doc, facts, body, section, args.no_doc)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
