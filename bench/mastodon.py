"""Mastodon: 100 hashtag streams on one account's socket against the same on 100 sockets.

Run by hand: `python bench/mastodon.py [--streams 100] [--rate 50] [--seconds 30]
[--idle 15]` (about two minutes with the defaults).

One `sfmd fakeapi` process, pinned to one core, posts `--rate` statuses a second in all
(`mastodon_rate`), each with 0-3 distinct tags drawn from `--streams` tags (`t000`, `t001`,
...; the fake's mix: 30 % of statuses carry no tag, the rest one to three), so every tagged
status lands on one or more of the streams. Then, one after the other, a real `sfmd run`
process, pinned to the other core, collects `--streams` hashtag streams, one a tag, laid out
in two ways:

- **one socket**: every stream on one credential, so sfmd carries them all on one WebSocket
  (`AccountConnection`) and routes each frame by its `stream` array;
- **N sockets**: each stream on a credential of its own: N accounts, N sockets.

For each layout:

1. The streams are in the registry before `sfmd run` starts (sfmd's defaults otherwise,
   `start_jitter` included). The bench waits until the fake has taken every stream's
   `subscribe` (its subscription log, on the fake's monotonic clock: a status posted after
   that is sent); start-up is from spawning `sfmd run` to the last subscribe.
2. After `--warmup` seconds, a steady window of `--seconds`: the daemon's user+sys CPU (all
   threads, from /proc) and the fake's over the window, and VmRSS and the peak VmHWM at its
   end (`--profile DIR` records the daemon's GIL-holding stacks with py-spy meanwhile).
3. Once the daemon shows at least as many messages on each stream as the fake posted on its
   tag by the window's end, the fake stops posting and, after 2 s, an idle window of
   `--idle` seconds measures what the same streams cost with nothing arriving (timers,
   pings, the archives' bookkeeping); "above idle" sets the posting window against it.
4. SIGTERM: the daemon must exit 0 and leave no `.part` file.
5. Stored-equals-sent, from the published files (the manifests' files, read back) and the
   fake's post log: on every stream, no status stored twice, nothing stored that was not
   posted with the stream's tag, nothing filled by REST (`backfill`), and every status posted
   with the tag between the last subscribe and the window's end stored. The window's count
   is the stored lines whose status was posted within the window (a status on two tags is two
   stored posts, one in each stream's files); it must equal the statuses-times-tags the fake
   posted then.

CPU per stored post is the daemon's CPU over the window divided by that count (posts counted
from the files after the clean SIGTERM, not from status counters). Results print as a table
and, unless `--no-doc`, are appended with the machine's facts to docs/benchmarks.md.
`--runs N` repeats both layouts, alternating their order, and shows medians. The script
exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(BENCH))

from benchlib import (  # noqa: E402
    cpu_seconds,
    cpu_times,
    dated_section,
    keep_work,
    load_average,
    pinned,
    publish,
    terminate,
)
from fanout import (  # noqa: E402
    BenchError,  # a run did not do what it must (a crash, no subscribe): no numbers
    Control,
    DaemonProcess,
    open_fds,
    proc_status,
    profile_summary,
    start_profile,
)
from ingest import busy_cores, machine_facts  # noqa: E402

from sfmd.archive import read_manifest  # noqa: E402
from sfmd.credentials import load_credentials  # noqa: E402
from sfmd.registry import Registry, validate_stream  # noqa: E402

LAYOUTS = ("one socket", "N sockets")
SHARED_CREDENTIAL = "acct"
#: A placeholder instance for the fake's own copy of the credentials: it checks the tokens
#: only, and its port is known once it runs.
PLACEHOLDER = "http://127.0.0.1:9"
STARTUP_TIMEOUT = 120.0
DRAIN_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
POLL = 0.2
IDLE_SETTLE = 2.0  # seconds between the last post and the idle window


def tag_name(i: int) -> str:
    return f"t{i:03d}"


def stream_name(i: int) -> str:
    return f"s{i:03d}"


def credential_name(layout: str, i: int) -> str:
    return SHARED_CREDENTIAL if layout == "one socket" else f"a{i:03d}"


# --------------------------------------------------------------------------- the fake instance


class FakeInstance:
    """`sfmd fakeapi` in its own process: the Mastodon instance posting `rate` statuses/s."""

    def __init__(self, workdir: Path, tokens: dict[str, str], tags: list[str], rate: float,
                 core: int | None) -> None:
        credentials = workdir / "fake-credentials.toml"
        write_credentials(credentials, tokens, PLACEHOLDER)
        command = [
            sys.executable, "-m", "sfmd", "fakeapi", "--port", "0",
            "--credentials", str(credentials), "--mastodon-rate", str(rate),
            "--mastodon-tags", ",".join(tags), "--jetstream-rate", "0",
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
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path) as resp:
            if resp.status != 200:
                raise BenchError(f"the fake answered {resp.status} to GET {path}")
            return await resp.json()

    async def configure(self, **settings: Any) -> None:
        async with self.session.post(self.url + "/_fake/configure", json=settings) as resp:
            if resp.status != 200:
                raise BenchError(f"the fake refused {settings}: {await resp.text()}")

    async def sockets(self, credentials: set[str], since: float) -> list[dict[str, Any]]:
        """The streaming sockets upgraded for these credentials since a monotonic time."""
        return [r for r in await self.get("/_fake/log")
                if r["endpoint"] == "mastodon/streaming" and r["status"] == 101
                and r["credential"] in credentials and r["opened"] >= since]

    async def subscribed(self, sockets: list[dict[str, Any]]) -> dict[str, float]:
        """Tag -> when the fake took its subscribe (monotonic), over these sockets."""
        out: dict[str, float] = {}
        for record in sockets:
            for entry in await self.get(f"/_fake/mastodon/subscriptions/{record['conn']}"):
                if entry["type"] == "subscribe" and entry.get("result") == "subscribed":
                    out[entry["tag"]] = entry["at"]
        return out

    async def posted(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.get("/_fake/mastodon/posted")
        return result

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def close(self) -> None:
        await self.session.close()

    def stop(self) -> None:
        terminate(self.proc, 10)


def write_credentials(path: Path, tokens: dict[str, str], instance: str) -> None:
    tables = [f'[{name}]\nmastodon_instance = "{instance}"\nmastodon_token = "{token}"\n'
              for name, token in tokens.items()]
    path.write_text("\n".join(tables))
    os.chmod(path, 0o600)


# --------------------------------------------------------------------------- one layout


@dataclass
class Check:
    """Stored-equals-sent over one layout's streams."""

    sent_window: int = 0  # statuses x tags posted within the window
    stored_window: int = 0  # stored lines whose status was posted within the window
    statuses_window: int = 0  # statuses posted within the window, tagged or not
    tagged_window: int = 0  # of which carried a tag
    sent_since: int = 0  # statuses x tags posted from the last subscribe to the window's end
    stored_since: int = 0
    stored: int = 0  # every update line stored
    duplicates: int = 0
    foreign: int = 0
    missing: int = 0
    backfilled: int = 0
    manifest_tweets: int = 0  # the manifests' `tweets`, summed: must equal `stored`
    not_update: int = 0

    @property
    def ok(self) -> bool:
        return (self.sent_window == self.stored_window and self.sent_since == self.stored_since
                and not (self.duplicates or self.foreign or self.missing or self.backfilled
                         or self.not_update) and self.manifest_tweets == self.stored)

    def line(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"stored-equals-sent {verdict}: window: sent {self.sent_window:,} (statuses x tags;"
            f" {self.tagged_window:,} tagged statuses of {self.statuses_window:,}), stored "
            f"{self.stored_window:,}; since the last subscribe: sent {self.sent_since:,}, "
            f"stored {self.stored_since:,}; duplicates {self.duplicates}, foreign "
            f"{self.foreign}, missing {self.missing}, backfilled {self.backfilled}, not an "
            f"update {self.not_update}; manifest tweets {self.manifest_tweets:,} of "
            f"{self.stored:,} stored"
        )


@dataclass
class Result:
    layout: str
    streams: int
    sockets: int = 0
    startup_s: float = 0.0  # spawn -> the fake took the last subscribe
    window_s: float = 0.0
    cpu_s: float = 0.0  # user+sys over the window
    sys_s: float = 0.0
    fake_cpu_s: float = 0.0
    idle_s: float = 0.0  # the idle window: the same streams, nothing posted
    idle_cpu_s: float = 0.0
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    fds: int = 0
    threads: int = 0
    stop_s: float = 0.0
    stop_code: int | None = None
    parts_left: int = 0
    load: str = ""
    check: Check = field(default_factory=Check)

    @property
    def us_per_post(self) -> float:
        return self.cpu_s / max(1, self.check.stored_window) * 1e6

    @property
    def sys_us_per_post(self) -> float:
        return self.sys_s / max(1, self.check.stored_window) * 1e6

    @property
    def us_per_status(self) -> float:
        return self.cpu_s / max(1, self.check.tagged_window) * 1e6

    @property
    def cpu_pct(self) -> float:
        return self.cpu_s / self.window_s * 100 if self.window_s else 0.0

    @property
    def idle_pct(self) -> float:
        return self.idle_cpu_s / self.idle_s * 100 if self.idle_s else 0.0

    @property
    def marginal_us_per_post(self) -> float:
        """CPU per stored post above what the same streams cost with nothing posted."""
        if not self.idle_s:
            return float("nan")
        above = self.cpu_s - self.idle_cpu_s / self.idle_s * self.window_s
        return above / max(1, self.check.stored_window) * 1e6

    @property
    def posts_per_s(self) -> float:
        return self.check.stored_window / self.window_s if self.window_s else 0.0

    @property
    def fake_us_per_post(self) -> float:
        return self.fake_cpu_s / max(1, self.check.stored_window) * 1e6


class LayoutRun:
    def __init__(self, args: argparse.Namespace, layout: str, root: Path, fake: FakeInstance,
                 tokens: dict[str, str], cores: tuple[int | None, int | None], run: int
                 ) -> None:
        self.args = args
        self.layout = layout
        self.n: int = args.streams
        self.fake = fake
        self.tokens = tokens
        self.daemon_core, self.other_core = cores
        self.workdir = root / f"{'one' if layout == 'one socket' else 'many'}-{run}"
        self.workdir.mkdir()
        self.label = f"{'one' if layout == 'one socket' else 'many'}-{run}"
        self.credentials = {credential_name(layout, i) for i in range(self.n)}
        self.tags = {stream_name(i): tag_name(i) for i in range(self.n)}
        self.result = Result(layout, self.n)

    def _setup(self) -> Path:
        used = {name: self.tokens[name] for name in sorted(self.credentials)}
        creds = self.workdir / "credentials.toml"
        write_credentials(creds, used, self.fake.url)
        keys = load_credentials(creds).keys()
        registry = Registry.load(self.workdir / "state", credentials=keys)
        for i in range(self.n):
            body = {"name": stream_name(i), "source": "mastodon", "kind": "hashtag",
                    "tag": tag_name(i), "credential": credential_name(self.layout, i)}
            registry.add(validate_stream(body, credentials=keys))
        settings: dict[str, dict[str, str]] = {
            "daemon": {"data_dir": '"data"', "state_dir": '"state"', "log_dir": '"log"',
                       "control_socket": '"sfmd.sock"'},
            # sfmd wants a default credential to exist even with no Twitter stream.
            "twitter": {"credentials_file": '"credentials.toml"',
                        "default_credential": json.dumps(min(self.credentials))},
        }
        for dotted, value in self.args.set.items():
            section, key = dotted.split(".", 1)
            settings.setdefault(section, {})[key] = value
        lines = []
        for section, values in settings.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in values.items()]
        config = self.workdir / "sfmd.toml"
        config.write_text("\n".join(lines) + "\n")
        return config

    async def run(self) -> Result:
        r = self.result
        config = self._setup()
        r.load = load_average()
        await self.fake.configure(mastodon_rate=self.args.rate)
        daemon = DaemonProcess(self.workdir, config, self.daemon_core)
        proc = daemon.proc
        control = Control(self.workdir / "sfmd.sock")
        try:
            last_sub = await self._subscribed(daemon)
            r.startup_s = last_sub - daemon.spawned
            print(f"  {self.layout}: {r.sockets} socket(s), every stream subscribed "
                  f"{r.startup_s:.1f} s after spawning sfmd run", flush=True)
            await asyncio.sleep(max(0.0, last_sub + self.args.warmup - time.monotonic()))
            t0, t1 = await self._window(proc)
            await self._drain(control, daemon, last_sub, t1)
            if self.args.idle > 0:
                await self._idle(proc)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                r.stop_code = await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                r.stop_code = None
            r.stop_s = time.monotonic() - began
        finally:
            await control.close()
            daemon.kill()
        data = self.workdir / "data"
        r.parts_left = sum(1 for _ in data.rglob("*.part"))
        # The post log once the daemon has stopped: it holds every status it could store.
        r.check = self._check(data, await self.fake.posted(), last_sub, t0, t1)
        print(f"  {self.layout}: {r.check.line()}", flush=True)
        if r.stop_code != 0:
            raise BenchError(f"sfmd run exited with {r.stop_code} on SIGTERM: see "
                             f"{daemon.stderr_path} (--keep DIR keeps it)")
        return r

    async def _subscribed(self, daemon: DaemonProcess) -> float:
        """Wait until the fake took every tag's subscribe from this daemon's sockets; when
        the last came (the fake's monotonic clock, which is CLOCK_MONOTONIC like ours)."""
        deadline = daemon.spawned + STARTUP_TIMEOUT
        wanted = set(self.tags.values())
        while True:
            daemon.check_alive()
            sockets = await self.fake.sockets(self.credentials, daemon.spawned)
            subs = await self.fake.subscribed(sockets)
            if wanted <= set(subs):
                self.result.sockets = len(sockets)
                return max(subs[t] for t in wanted)
            if time.monotonic() > deadline:
                raise BenchError(f"after {STARTUP_TIMEOUT:g} s the fake had {len(subs)} of "
                                 f"{self.n} subscribes on {len(sockets)} socket(s)")
            await asyncio.sleep(POLL)

    async def _window(self, proc: subprocess.Popen[bytes]) -> tuple[float, float]:
        r = self.result
        spy = None
        if self.args.profile is not None:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            spy = start_profile(proc.pid, self.args.profile / f"{self.label}.txt",
                                self.args.seconds, self.other_core)
        t0 = time.monotonic()
        user0, sys0 = cpu_times(proc.pid)
        fake0 = self.fake.cpu()
        await asyncio.sleep(self.args.seconds)
        user1, sys1 = cpu_times(proc.pid)
        fake1 = self.fake.cpu()
        t1 = time.monotonic()
        status = proc_status(proc.pid)
        r.window_s = t1 - t0
        r.cpu_s, r.sys_s = user1 + sys1 - user0 - sys0, sys1 - sys0
        r.fake_cpu_s = fake1 - fake0
        r.rss_mb, r.hwm_mb = status["VmRSS"] / 1024, status["VmHWM"] / 1024
        r.threads, r.fds = status["Threads"], open_fds(proc.pid)
        print(f"  {self.layout}: window {r.window_s:.1f} s, daemon CPU {r.cpu_pct:.1f} % of a "
              f"core, RSS {r.rss_mb:.0f} MB (peak {r.hwm_mb:.0f}), {r.fds} fds", flush=True)
        if spy is not None:
            try:
                await asyncio.to_thread(spy.wait, 30)
            except subprocess.TimeoutExpired:
                spy.kill()
            output = self.args.profile / f"{self.label}.txt"
            if output.exists():
                print(profile_summary(output), flush=True)
        return t0, t1

    async def _idle(self, proc: subprocess.Popen[bytes]) -> None:
        """The same streams with nothing posted: what they cost by themselves (timers,
        pings, the archives' bookkeeping), to set against the posting window."""
        r = self.result
        await self.fake.configure(mastodon_rate=0)
        await asyncio.sleep(IDLE_SETTLE)  # what was posted before has been stored
        began = time.monotonic()
        cpu0 = cpu_seconds(proc.pid)
        await asyncio.sleep(self.args.idle)
        r.idle_cpu_s = cpu_seconds(proc.pid) - cpu0
        r.idle_s = time.monotonic() - began
        print(f"  {self.layout}: idle {r.idle_s:.1f} s, daemon CPU {r.idle_pct:.1f} % of a "
              "core", flush=True)

    async def _drain(self, control: Control, daemon: DaemonProcess, last_sub: float,
                     t1: float) -> None:
        """Wait (a while) until each stream shows at least as many messages as the fake
        posted on its tag from the last subscribe to the window's end, so that SIGTERM cuts
        nothing the check counts; the check, not this wait, decides."""
        posted = await self.fake.posted()
        want = {tag: 0 for tag in self.tags.values()}
        for status in posted:
            if last_sub < status["monotonic"] <= t1:
                for tag in status["tags"]:
                    if tag in want:
                        want[tag] += 1
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            daemon.check_alive()
            _, body, _ = await control.call("GET", "/streams")
            have = {s["name"]: s["status"]["messages"] for s in body["streams"]}
            if all(have.get(name, 0) >= want[tag] for name, tag in self.tags.items()):
                break
            await asyncio.sleep(POLL)
        else:
            print("  the daemon did not show every status of the window before the deadline;"
                  " stopping it anyway", flush=True)

    def _check(self, data: Path, posted: list[dict[str, Any]], last_sub: float, t0: float,
               t1: float) -> Check:
        c = Check()
        by_tag: dict[str, dict[str, float]] = {tag: {} for tag in self.tags.values()}
        for status in posted:
            if t0 <= status["monotonic"] < t1:
                c.statuses_window += 1
                c.tagged_window += bool(status["tags"])
            for tag in status["tags"]:
                if tag in by_tag:
                    by_tag[tag][status["id"]] = status["monotonic"]
        for name, tag in self.tags.items():
            on_tag = by_tag[tag]
            entries = read_manifest(data / name / "manifest.jsonl")
            c.manifest_tweets += sum(e["tweets"] for e in entries)
            ids: list[str] = []
            for entry in entries:
                raw = (data / entry["file"]).read_bytes()
                body = gzip.decompress(raw) if entry["file"].endswith(".gz") else raw
                for line in body.splitlines():
                    frame = json.loads(line)
                    if frame.get("event") != "update" or frame.get("stream") != ["hashtag", tag]:
                        c.not_update += 1
                        continue
                    c.backfilled += bool(frame.get("backfill"))
                    ids.append(json.loads(frame["payload"])["id"])
            unique = set(ids)
            c.stored += len(ids)
            c.duplicates += len(ids) - len(unique)
            c.foreign += len(unique - on_tag.keys())
            window = {i for i, at in on_tag.items() if t0 <= at < t1}
            since = {i for i, at in on_tag.items() if last_sub < at <= t1}
            c.sent_window += len(window)
            c.sent_since += len(since)
            c.stored_window += sum(i in window for i in ids)
            c.stored_since += sum(i in since for i in ids)
            c.missing += len(since - unique)
        return c


# --------------------------------------------------------------------------- report


def median(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def table(by_layout: dict[str, list[Result]], n: int) -> str:
    rows = [
        "| layout | runs | sockets | start-up s | stored posts/s | daemon CPU % | idle CPU % "
        "| CPU µs/stored post | of which sys | above idle | CPU µs/tagged status | VmRSS MB "
        "| peak VmHWM MB | fds | fake CPU µs/post | SIGTERM→exit s | stored = sent |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for layout, results in by_layout.items():
        if not results:
            continue
        name = layout.replace("N", f"{n:,}")
        spread = ""
        if len(results) > 1:
            values = [r.us_per_post for r in results]
            spread = f" ({min(values):.0f}-{max(values):.0f})"
        checks = [r.check for r in results]
        verdict = "yes" if all(c.ok for c in checks) else "**no**"
        verdict += f": {sum(c.stored_window for c in checks):,} of "
        verdict += f"{sum(c.sent_window for c in checks):,}"
        rows.append(
            f"| {name} | {len(results)} | {results[0].sockets} | {median(results, 'startup_s'):.1f}"
            f" | {median(results, 'posts_per_s'):.1f} | {median(results, 'cpu_pct'):.1f} "
            f"| {median(results, 'idle_pct'):.1f} "
            f"| {median(results, 'us_per_post'):.0f}{spread} "
            f"| {median(results, 'sys_us_per_post'):.0f} "
            f"| {median(results, 'marginal_us_per_post'):.0f} "
            f"| {median(results, 'us_per_status'):.0f} "
            f"| {median(results, 'rss_mb'):.0f} | {median(results, 'hwm_mb'):.0f} "
            f"| {median(results, 'fds'):.0f} | {median(results, 'fake_us_per_post'):.0f} "
            f"| {median(results, 'stop_s'):.2f} | {verdict} |"
        )
    return "\n".join(rows)


def command_line(args: argparse.Namespace) -> str:
    words = [f"--streams {args.streams}", f"--rate {args.rate:g}",
             f"--seconds {args.seconds:g}", f"--idle {args.idle:g}", f"--runs {args.runs}"]
    words += [f"--set {k}={v}" for k, v in args.set.items()]
    if args.no_pin:
        words.append("--no-pin")
    return " ".join(["bench/mastodon.py", *words])


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100, help="hashtag streams (and tags)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="statuses the fake posts per second, in all")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="seconds of each layout's steady window")
    parser.add_argument("--idle", type=float, default=15.0,
                        help="seconds of the idle window (nothing posted); 0: none")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds between the last subscribe and the window")
    parser.add_argument("--runs", type=int, default=1, help="runs of each layout")
    parser.add_argument("--layouts", default="one,many",
                        help="one (one socket), many (a socket a stream), or both")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a daemon config setting (a TOML value); repeatable")
    parser.add_argument("--quiet", type=float, default=0.5, metavar="CORES",
                        help="before each layout, wait while other work uses more than this")
    parser.add_argument("--patience", type=float, default=20.0,
                        help="seconds to wait for quiet, then run anyway")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the daemon's windows into DIR")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy the work dirs (logs, data) into DIR")
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.set = dict(item.split("=", 1) for item in args.set)
    if any("." not in key for key in args.set):
        parser.error("--set takes SECTION.KEY=VALUE")
    if not 1 <= args.streams <= 999:
        parser.error("--streams: between 1 and 999")
    if args.rate <= 0 or args.seconds <= 0 or args.runs < 1:
        parser.error("--rate and --seconds must be above 0, --runs at least 1")
    chosen = [w.strip() for w in args.layouts.split(",") if w.strip()]
    if not chosen or set(chosen) - {"one", "many"}:
        parser.error("--layouts: one, many or one,many")
    args.chosen = [LAYOUTS[0] if w == "one" else LAYOUTS[1] for w in chosen]
    return args


def wait_quiet(args: argparse.Namespace) -> float:
    """Wait (up to --patience) until other work uses under --quiet cores; the load seen."""
    deadline = time.monotonic() + args.patience
    load = busy_cores()
    while load > args.quiet and time.monotonic() < deadline:
        print(f"  the machine is busy ({load:.2f} cores in use); waiting", flush=True)
        time.sleep(2)
        load = busy_cores()
    return load


async def run_all(args: argparse.Namespace, root: Path) -> tuple[dict[str, list[Result]], float]:
    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    daemon_core, other_core = (cores[-1], cores[0]) if pin else (None, None)
    if other_core is not None:
        os.sched_setaffinity(0, {other_core})  # this client shares a core with the fake
    names = [SHARED_CREDENTIAL, *(credential_name("N sockets", i) for i in range(args.streams))]
    tokens = {name: secrets.token_hex(16) for name in names}  # no real secret here
    tags = [tag_name(i) for i in range(args.streams)]
    fake = FakeInstance(root, tokens, tags, args.rate, other_core)
    by_layout: dict[str, list[Result]] = {layout: [] for layout in args.chosen}
    background = 0.0
    try:
        for run in range(args.runs):
            order = args.chosen if run % 2 == 0 else list(reversed(args.chosen))
            for layout in order:
                background = max(background, await asyncio.to_thread(wait_quiet, args))
                print(f"run {run + 1}/{args.runs}: {args.streams} streams, "
                      f"{layout.replace('N', str(args.streams))}", flush=True)
                bench = LayoutRun(args, layout, root, fake, tokens, (daemon_core, other_core),
                                  run)
                by_layout[layout].append(await bench.run())
    finally:
        await fake.close()
        fake.stop()
    return by_layout, background


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sfmd-mastodon-") as tmp:
        try:
            by_layout, background = asyncio.run(run_all(args, Path(tmp)))
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
        finally:
            keep_work(tmp, args.keep)
    results = [r for rs in by_layout.values() for r in rs]
    body = table(by_layout, args.streams)
    body += "\n\n" + "\n".join(f"- {r.layout.replace('N', str(args.streams))}: {r.check.line()}"
                               for r in results)
    facts = machine_facts(Path(tempfile.gettempdir()))
    facts["load averages before the layouts"] = "; ".join(r.load for r in results)
    facts["other load before the layouts"] = f"up to {background:.2f} cores"
    pin = "" if args.no_pin else (
        "; daemon pinned to one core, the fake and this client to the other")
    note = (f" ({args.streams} hashtag streams, {args.rate:g} statuses/s in all, window "
            f"{args.seconds:g} s after {args.warmup:g} s of warm-up, then {args.idle:g} s with "
            f"nothing posted; sfmd's defaults otherwise"
            f"{pin}; medians of the runs)")
    heading = f"Mastodon, {args.streams} hashtag streams on one socket and on {args.streams}"
    section = dated_section(heading, args.title, facts, command_line(args), body, note)
    publish(args.doc, facts, body, section, args.no_doc)
    failed = [r for r in results if not r.check.ok or r.parts_left]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
