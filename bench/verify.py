"""`sfmd verify` against `sha256sum` over the same files: ~10 GB of gzip, as sfmd writes it.

Run by hand, as root for the cold-cache figures:
`python bench/verify.py [--gigabytes 10] [--runs 3] [--workers 2] [--data-dir DIR] [--keep]`.

First a data folder is generated once, in a new temp dir under `--data-dir` (default: the
system's temp dir; it must be on a real disk, not tmpfs): a config TOML whose `data_dir`
points at it, and `--streams` streams (default 8) of many interval files each, written
through sfmd's own `sfmd.archive.Archive` with its default gzip settings (level 6, 4 KiB
window), so the files and manifest lines are exactly what sfmd writes. Each archive has a
clock of its own that the bench moves to the next 15-minute boundary for every file, so
files rotate as fast as they can be compressed. The messages are tweet-shaped v1.1 JSON of
2-7 KB (a user object, entities, half of them with a retweeted status), drawn from a pool of
pre-made lines with a fresh id each, so gzip sees varied text (ratio about 4.4) and the
bench's own Python stays cheap. File sizes are drawn log-uniformly, about 1 MB to 60 MB as
stored. Generation stops when `--gigabytes` are stored (10 GB take several minutes: zlib
at level 6 is the limit).

Then, for `--runs` rounds, alternating and in reverse order every other round:

- `xargs -0 sha256sum < LIST`: the files the manifests list, hashed one after another, as
  people run it;
- `xargs -0 -P 2 -n 16 sha256sum < LIST`: the same on two processes, the fair comparison on
  a 2-core machine (sfmd verify uses threads);
- `sfmd verify --config CFG --json`, default workers (cores + 2, at most 8), which does
  more: it inflates every file, counts its bytes and lines and checks the gzip ends, besides
  the sha256;
- `sfmd verify --config CFG --json --workers N` for each N of `--workers` (default 2).

Each of the first three runs cold, right after `sync; echo 3 > /proc/sys/vm/drop_caches`
(root only; without it the bench says so and runs warm only), and then warm, at once. The
`--workers` rows run warm only. After a drop, every tool is started once untimed (its
`--version`, `sfmd verify --help`), so a cold figure is the data's, not the program's. The
sha256sum output must match every manifest sha256, and verify must report clean with every
file and byte counted, or the bench fails.

Per run: wall seconds, GB/s as stored, the CPU of the tool (user+sys of all its processes and
threads), the other load on the machine during the run (busy cores from /proc/stat minus the
tool's CPU), and how much of the data the page cache held (fincore) before it. Medians and
ratios (verify time / sha256sum time, same cache state) are printed and, unless `--no-doc`,
appended with the machine's facts to docs/benchmarks.md. The data folder is deleted at the
end unless `--keep`; `--reuse DIR` runs against a folder a `--keep` run left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(BENCH))

from benchlib import dated_section, load_average, publish  # noqa: E402
from ingest import machine_facts  # noqa: E402

from sfmd.archive import Archive, PublishedFile, interval_start  # noqa: E402
from sfmd.sources.twitter.framing import count_tweets  # noqa: E402

SAVE_INTERVAL = 900  # sfmd's default
LEVEL, WINDOW = 6, 12  # sfmd's default compress_level and compress_window
POOL_LINES = 1500  # pre-made tweets per stream
BATCH = 256  # messages per Archive.write(), about 1 MB
ID_MARK = b"4444444444444444444"  # stands for the top-level id while the pool is made
TWITTER_EPOCH_MS = 1288834974657
STREAMS = (
    "sample-en", "sample-es", "election-2024", "football", "music-awards", "newsrooms",
    "weather-alerts", "markets",
)  # fmt: skip
PARALLEL_N = 16  # files per sha256sum process with xargs -P 2
TIMEOUT = 3600.0


class BenchError(Exception):
    """A run did not check what it should (a wrong hash, a missed file): no figure then."""


# --------------------------------------------------------------------------- the messages


COMMON = (
    "the a to of and in is for on you that it with this be at are was have my not but just so "
    "we me can all your they like what do if no love out up get one now new day good people "
    "time today will when more how about know see go think want make really vote game music "
    "news city rain sun world live watch first happy great tomorrow el la que de en y los por "
    "un con para es lo se del las una"
).split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"
HANDLE = LETTERS + "0123456789_"
COLORS = ("1DA1F2", "C0DEED", "000000", "FFFFFF", "DDEEF6", "333333", "F5F8FA", "E81C4F")
SOURCES = (
    '<a href="http://twitter.com/download/iphone" rel="nofollow">Twitter for iPhone</a>',
    '<a href="http://twitter.com/download/android" rel="nofollow">Twitter for Android</a>',
    '<a href="https://mobile.twitter.com" rel="nofollow">Twitter Web App</a>',
)
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class TweetMaker:
    """Tweet-shaped v1.1 JSON: the keys real tweets carry, varied words, ids and URLs."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _token(self, alphabet: str, low: int, high: int) -> str:
        return "".join(self.rng.choices(alphabet, k=self.rng.randint(low, high)))

    def word(self) -> str:
        r = self.rng.random()
        if r < 0.7:
            return self.rng.choice(COMMON)
        if r < 0.85:
            return self._token(LETTERS, 3, 10)
        if r < 0.92:
            return "#" + self._token(LETTERS, 4, 12)
        return "@" + self._token(HANDLE, 5, 14)

    def text(self, words: int) -> str:
        return " ".join(self.word() for _ in range(words))

    def date(self) -> str:
        r = self.rng
        return (
            f"{r.choice(DAYS)} {r.choice(MONTHS)} {r.randint(10, 28)} {r.randint(10, 23)}:"
            f"{r.randint(10, 59)}:{r.randint(10, 59)} +0000 {r.randint(2007, 2024)}"
        )

    def user(self) -> dict[str, Any]:
        r = self.rng
        uid = r.getrandbits(r.choice((32, 40, 60)))
        image = f"pbs.twimg.com/profile_images/{r.getrandbits(60)}/{r.getrandbits(40):x}"
        theme = f"abs.twimg.com/images/themes/theme{r.randint(1, 19)}/bg.png"
        return {
            "id": uid, "id_str": str(uid), "name": self.text(2).title(),
            "screen_name": self._token(HANDLE, 5, 15),
            "location": r.choice(("", "London", "New York, NY", "Madrid", self.text(2))),
            "url": r.choice((None, f"https://t.co/{r.getrandbits(40):x}")),
            "description": self.text(r.randint(3, 25)), "translator_type": "none",
            "protected": False, "verified": r.random() < 0.05,
            "followers_count": r.randrange(10**6), "friends_count": r.randrange(10**4),
            "listed_count": r.randrange(1000), "favourites_count": r.randrange(10**5),
            "statuses_count": r.randrange(10**6), "created_at": self.date(),
            "utc_offset": None, "time_zone": None, "geo_enabled": r.random() < 0.3,
            "lang": None, "contributors_enabled": False, "is_translator": False,
            "profile_background_color": r.choice(COLORS),
            "profile_background_image_url": f"http://{theme}",
            "profile_background_image_url_https": f"https://{theme}",
            "profile_background_tile": False, "profile_link_color": r.choice(COLORS),
            "profile_sidebar_border_color": r.choice(COLORS),
            "profile_sidebar_fill_color": r.choice(COLORS),
            "profile_text_color": r.choice(COLORS), "profile_use_background_image": True,
            "profile_image_url": f"http://{image}_normal.jpg",
            "profile_image_url_https": f"https://{image}_normal.jpg",
            "profile_banner_url": f"https://pbs.twimg.com/profile_banners/{uid}/{r.getrandbits(31)}",
            "default_profile": r.random() < 0.5, "default_profile_image": False,
            "following": None, "follow_request_sent": None, "notifications": None,
        }  # fmt: skip

    def tweet(self, top: bool = True) -> dict[str, Any]:
        r = self.rng
        tid = int(ID_MARK) if top else r.getrandbits(60)
        words = self.text(r.randint(8, 45)).split()
        mentions = []
        for i, w in enumerate(words):
            if w.startswith("@"):
                uid = r.getrandbits(40)
                mentions.append({
                    "screen_name": w[1:], "name": self.text(2).title(), "id": uid,
                    "id_str": str(uid), "indices": [i, i + len(w)],
                })  # fmt: skip
        entities: dict[str, Any] = {
            "hashtags": [
                {"text": w[1:], "indices": [i, i + len(w)]}
                for i, w in enumerate(words)
                if w.startswith("#")
            ],
            "urls": [],
            "user_mentions": mentions,
            "symbols": [],
        }
        if r.random() < 0.3:
            site = r.choice(COMMON) + self._token(LETTERS, 2, 8)
            entities["urls"].append({
                "url": f"https://t.co/{r.getrandbits(40):x}",
                "expanded_url": f"https://{site}.com/{r.getrandbits(48):x}",
                "display_url": f"{site}.com/\u2026", "indices": [0, 23],
            })  # fmt: skip
        tweet: dict[str, Any] = {
            "created_at": self.date(), "id": tid, "id_str": str(tid), "text": " ".join(words),
            "source": r.choice(SOURCES), "truncated": False, "in_reply_to_status_id": None,
            "in_reply_to_status_id_str": None, "in_reply_to_user_id": None,
            "in_reply_to_user_id_str": None, "in_reply_to_screen_name": None,
            "user": self.user(), "geo": None, "coordinates": None, "place": None,
            "contributors": None,
        }  # fmt: skip
        if top and r.random() < 0.5:
            tweet["retweeted_status"] = self.tweet(top=False)
        tweet.update({
            "is_quote_status": False, "quote_count": r.randrange(100),
            "reply_count": r.randrange(100), "retweet_count": r.randrange(10000),
            "favorite_count": r.randrange(10000), "entities": entities, "favorited": False,
            "retweeted": False, "filter_level": "low",
            "lang": r.choice(("en", "es", "fr", "und", "ja")),
        })  # fmt: skip
        if top:
            tweet["timestamp_ms"] = str(1539202764000 + r.randrange(10**9))
        return tweet

    def template(self) -> tuple[bytes, bytes, bytes]:
        """A tweet as (before id, between id and id_str, after id_str): a line is
        `a + id + b + id + c`, so every message gets a fresh id for the price of a join."""
        while True:
            raw = json.dumps(self.tweet(), ensure_ascii=False, separators=(",", ":")).encode()
            parts = raw.split(ID_MARK)
            if len(parts) == 3:
                return parts[0], parts[1], parts[2]


# --------------------------------------------------------------------------- the data folder


class JumpClock:
    """The wall clock plus an offset the bench moves: one archive's idea of now."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def to(self, moment: float) -> None:
        self.offset = moment - time.time()


@dataclass
class Progress:
    raw: int = 0  # uncompressed bytes handed to the archives
    stored: int = 0  # bytes of published files
    published_raw: int = 0  # their uncompressed bytes
    files: int = 0
    messages: int = 0


@dataclass
class Dataset:
    root: Path
    config: Path
    data_dir: Path
    files: dict[str, str]  # absolute path -> sha256, every file the manifests list
    stored: int
    raw: int
    messages: int
    streams: int
    seconds: float | None = None  # generation time, when generated by this run

    @property
    def ratio(self) -> float:
        return self.raw / self.stored if self.stored else float("nan")


def write_config(root: Path, data_dir: Path) -> Path:
    """What `sfmd verify` reads: data_dir and save_interval; the rest stays in root."""
    config = root / "sfmd.toml"
    config.write_text(
        "[daemon]\n"
        f"data_dir = {json.dumps(str(data_dir))}\n"
        'state_dir = "state"\nlog_dir = "log"\ncontrol_socket = "sfmd.sock"\n'
        f"save_interval = {SAVE_INTERVAL}\ncompress = true\n"
        f"compress_level = {LEVEL}\ncompress_window = {WINDOW}\n"
    )
    return config


def load_dataset(root: Path) -> Dataset:
    """The files every manifest under root/data lists, with their sha256."""
    data_dir = root / "data"
    files: dict[str, str] = {}
    stored = raw = messages = streams = 0
    for manifest in sorted(data_dir.glob("*/manifest.jsonl")):
        streams += 1
        for line in manifest.read_text().splitlines():
            entry = json.loads(line) if line.strip() else {}
            if entry.get("file") is None:
                continue
            path = data_dir / entry["file"]
            files[str(path)] = entry["sha256"]
            stored += path.stat().st_size
            raw += entry["bytes"]
            messages += entry["messages"]
    return Dataset(root, root / "sfmd.toml", data_dir, files, stored, raw, messages, streams)


async def fill_stream(
    data_dir: Path,
    name: str,
    budget: int,
    sizes: tuple[float, float],
    seed: int,
    progress: Progress,
) -> None:
    """One stream's files, through sfmd's Archive, until `budget` bytes are stored."""
    rng = random.Random(seed)
    maker = TweetMaker(rng)
    pool = [maker.template() for _ in range(POOL_LINES)]
    mean_line = statistics.fmean(len(a) + len(b) + len(c) + 40 for a, b, c in pool)
    stored = raw_published = 0

    def published(f: PublishedFile) -> None:
        nonlocal stored, raw_published
        size = f.path.stat().st_size
        stored += size
        raw_published += f.bytes
        progress.stored += size
        progress.published_raw += f.bytes
        progress.files += 1

    clock = JumpClock()
    quiet = structlog.wrap_logger(  # warnings and errors only: no line per published file
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    first = interval_start(time.time() - 120 * 86400, SAVE_INTERVAL)
    clock.to(first + 1)
    archive = Archive(
        data_dir, name, save_interval=SAVE_INTERVAL, compress=True, compress_level=LEVEL,
        compress_window=WINDOW, count=count_tweets, clock=clock, on_publish=published, log=quiet,
    )  # fmt: skip
    await archive.open()
    archive.asking({
        "source": "twitter", "endpoint": "https://stream.twitter.com/1.1/statuses/filter.json",
        "credential": "bench", "params": {"track": name.replace("-", " ")},
    })  # fmt: skip
    archive.streaming()
    planned = 0  # uncompressed bytes written so far
    ratio = 4.3  # until this stream has published a file
    low, high = sizes
    interval = 0
    while True:
        if raw_published:
            ratio = raw_published / stored
        left = (budget - planned / ratio) * ratio  # uncompressed bytes still to write
        if left <= 0:
            break
        size = min(math.exp(rng.uniform(math.log(low), math.log(high))), left)
        start = first + interval * SAVE_INTERVAL
        clock.to(start + 1)  # the next interval; the file of the last one gets published
        snowflake = (int(start * 1000) - TWITTER_EPOCH_MS) << 22
        count = max(1, int(size / mean_line))
        for offset in range(0, count, BATCH):
            n = min(BATCH, count - offset)
            ids = [b"%d" % (snowflake + (offset + i) * 4099) for i in range(n)]
            picks = rng.choices(pool, k=n)
            lines = [a + tid + b + tid + c for (a, b, c), tid in zip(picks, ids, strict=True)]
            await archive.write(lines, n)
            written = sum(map(len, lines)) + n
            planned += written
            progress.raw += written
            progress.messages += n
        interval += 1
    await archive.close()


async def _generate(
    data_dir: Path, streams: list[str], total: int, sizes: tuple[float, float], seed: int
) -> None:
    progress = Progress()
    began = time.monotonic()
    budget = total // len(streams)
    jobs = [
        asyncio.create_task(fill_stream(data_dir, name, budget, sizes, seed + i, progress))
        for i, name in enumerate(streams)
    ]

    async def report() -> None:
        while True:
            await asyncio.sleep(15)
            elapsed = time.monotonic() - began
            ratio = progress.published_raw / progress.stored if progress.stored else 4.3
            rate = progress.raw / elapsed
            eta = max(0.0, (total * ratio - progress.raw) / rate) if rate else 0.0
            print(
                f"  {elapsed:5.0f} s  {progress.stored / 1e9:5.2f} GB stored in "
                f"{progress.files} files, {progress.raw / 1e9:5.1f} GB written "
                f"({rate / 1e6:.0f} MB/s, ratio {ratio:.2f}), about {eta:.0f} s left",
                flush=True,
            )

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*jobs)
    finally:
        reporter.cancel()


def generate(root: Path, gigabytes: float, streams: int, seed: int) -> Dataset:
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    config = write_config(root, data_dir)
    total = int(gigabytes * 1e9)
    # Uncompressed file sizes, log-uniform: 4 MB to 256 MB (about 1-60 MB stored), smaller
    # when the total is small, so that every stream still has a few dozen files.
    high = min(256e6, total / streams * 4.3 / 6)
    sizes = (high / 64, high)
    names = [STREAMS[i % len(STREAMS)] + (f"-{i // len(STREAMS)}" if i >= len(STREAMS) else "")
             for i in range(streams)]  # fmt: skip
    print(
        f"generating {gigabytes:g} GB of gzip in {streams} streams under {data_dir} "
        f"(level {LEVEL}, window {WINDOW}, files of {sizes[0] / 1e6:.0f}-{sizes[1] / 1e6:.0f} "
        "MB uncompressed)",
        flush=True,
    )
    began = time.monotonic()
    asyncio.run(_generate(data_dir, names, total, sizes, seed))
    os.sync()
    dataset = load_dataset(root)
    dataset.config = config
    dataset.seconds = time.monotonic() - began
    print(
        f"generated {len(dataset.files)} files, {dataset.stored / 1e9:.2f} GB stored, "
        f"{dataset.raw / 1e9:.1f} GB uncompressed (ratio {dataset.ratio:.2f}), "
        f"{dataset.messages:,} messages, in {dataset.seconds:.0f} s",
        flush=True,
    )
    return dataset


# --------------------------------------------------------------------------- the runs


@dataclass
class Run:
    row: str
    cache: str  # "cold" or "warm"
    seconds: float
    cpu: float  # user+sys of the tool, all processes and threads
    others: float  # cores busy with other work during the run
    cached: float | None  # share of the data in the page cache before the run


@dataclass
class Row:
    label: str
    command: list[str]
    kind: str  # "sha256sum" or "verify"
    cold: bool
    runs: list[Run] = field(default_factory=list)

    def of(self, cache: str) -> list[Run]:
        return [r for r in self.runs if r.cache == cache]

    def median(self, cache: str, attr: str = "seconds") -> float | None:
        values = [getattr(r, attr) for r in self.of(cache) if getattr(r, attr) is not None]
        return statistics.median(values) if values else None


def busy_jiffies() -> tuple[int, int]:
    """(busy, all) CPU time of the whole machine so far, in clock ticks (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drop_caches() -> bool:
    """Empty the page cache (root only); False if this kernel or user cannot."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def cached_share(files: list[str]) -> float | None:
    """How much of the files the page cache holds (fincore), or None without fincore."""
    if not shutil.which("fincore"):
        return None
    resident = total = 0
    for i in range(0, len(files), 200):
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE",
             *files[i : i + 200]],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        for line in out.splitlines():
            res, size = line.split()
            resident += int(res)
            total += int(size)
    return min(1.0, resident / total) if total else None


class Runner:
    def __init__(self, dataset: Dataset, workdir: Path, can_drop: bool) -> None:
        self.dataset = dataset
        self.can_drop = can_drop
        self.paths = list(dataset.files)
        self.list_file = workdir / "files.txt"
        self.list_file.write_bytes(b"".join(p.encode() + b"\0" for p in self.paths))
        self.warm = False  # every file read since the last drop

    def run(self, row: Row, cache: str) -> Run:
        if cache == "cold":
            if not drop_caches():
                raise BenchError("could not drop the page cache")
            self._start_tools()
        elif not self.warm:
            self._read_all()
        cached = cached_share(self.paths)
        cpu0, (busy0, all0) = children_cpu(), busy_jiffies()
        began = time.perf_counter()
        with self.list_file.open("rb") as stdin:
            done = subprocess.run(row.command, stdin=stdin, capture_output=True, timeout=TIMEOUT)
        seconds = time.perf_counter() - began
        cpu = children_cpu() - cpu0
        busy1, all1 = busy_jiffies()
        cores = os.cpu_count() or 1
        machine = (busy1 - busy0) / max(all1 - all0, 1) * cores * seconds
        self.warm = True
        if done.returncode != 0:
            raise BenchError(
                f"{row.label} exited with {done.returncode}: {done.stderr.decode()[-2000:]}"
            )
        if row.kind == "sha256sum":
            self._check_sums(row, done.stdout.decode())
        else:
            self._check_verify(row, done.stdout.decode())
        return Run(row.label, cache, seconds, cpu, max(0.0, machine - cpu) / seconds, cached)

    def _start_tools(self) -> None:
        """Load each program's own files, untimed, after a drop."""
        for command in (
            ["sha256sum", "--version"],
            ["xargs", "--version"],
            [sys.executable, "-m", "sfmd", "verify", "--help"],
        ):
            subprocess.run(command, capture_output=True, check=True)

    def _read_all(self) -> None:
        for path in self.paths:
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
        self.warm = True

    def _check_sums(self, row: Row, out: str) -> None:
        sums = {}
        for line in out.splitlines():
            digest, _, path = line.partition("  ")
            sums[path] = digest
        if sums != self.dataset.files:
            wrong = sum(1 for p, s in self.dataset.files.items() if sums.get(p) != s)
            raise BenchError(f"{row.label}: {wrong} of {len(self.paths)} files differ or missing")

    def _check_verify(self, row: Row, out: str) -> None:
        report = json.loads(out)
        expected = (True, len(self.paths), self.dataset.stored, self.dataset.streams)
        found = (report["clean"], report["files"], report["bytes"], report["streams"])
        if found != expected:
            raise BenchError(
                f"{row.label}: clean, files, bytes, streams = {found}, expected {expected}; "
                f"problems: {report['problems'][:5]}"
            )


def plan(config: Path, workers: list[int], cold: bool) -> list[Row]:
    verify = [sys.executable, "-m", "sfmd", "verify", "--config", str(config), "--json"]
    rows = [
        Row("sha256sum", ["xargs", "-0", "sha256sum"], "sha256sum", cold),
        Row(
            "sha256sum, xargs -P 2",
            ["xargs", "-0", "-P", "2", "-n", str(PARALLEL_N), "sha256sum"],
            "sha256sum",
            cold,
        ),
        Row("sfmd verify", verify, "verify", cold),
    ]
    rows += [
        Row(f"sfmd verify --workers {n}", [*verify, "--workers", str(n)], "verify", False)
        for n in workers
    ]
    return rows


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row], dataset: Dataset) -> str:
    gb = dataset.stored / 1e9
    base = {cache: rows[0].median(cache) for cache in ("cold", "warm")}
    parallel = {cache: rows[1].median(cache) for cache in ("cold", "warm")}
    lines = [
        "| tool | cache | runs | seconds | (min-max) | GB/s stored | CPU s | CPU / wall "
        "| other load, cores | time ÷ sha256sum | time ÷ sha256sum -P 2 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cache in ("cold", "warm"):
        for row in rows:
            runs = row.of(cache)
            if not runs:
                continue
            seconds = row.median(cache)
            assert seconds is not None
            cpu = row.median(cache, "cpu")
            spread = [r.seconds for r in runs]
            serial, par = base[cache], parallel[cache]
            lines.append(
                f"| {row.label} | {cache} | {len(runs)} | {seconds:.1f} | "
                f"{min(spread):.1f}-{max(spread):.1f} | {gb / seconds:.2f} | {_fmt(cpu, '.1f')} "
                f"| {_fmt(cpu and cpu / seconds, '.2f')} | "
                f"{_fmt(row.median(cache, 'others'), '.2f')} | "
                f"{_fmt(serial and seconds / serial, '.2f')}x | "
                f"{_fmt(par and seconds / par, '.2f')}x |"
            )
    return "\n".join(lines)


def round_ratios(rows: list[Row], runs: int) -> list[str]:
    """verify / sha256sum in each round, same cache state: the spread of the ratio."""
    out = []
    for row in rows[2:]:
        for cache in ("cold", "warm"):
            mine = row.of(cache)
            if not mine:
                continue
            for other in rows[:2]:
                theirs = other.of(cache)
                if len(mine) == len(theirs) == runs:
                    ratios = [m.seconds / t.seconds for m, t in zip(mine, theirs, strict=True)]
                    shown = ", ".join(f"{r:.2f}x" for r in ratios)
                    out.append(f"- {row.label} ÷ {other.label}, {cache}: {shown}")
    return out


def command_line(args: argparse.Namespace) -> str:
    words = [f"--gigabytes {args.gigabytes:g}", f"--runs {args.runs}"]
    words.append(f"--workers {args.workers}" if args.workers else "--workers ''")
    if args.streams != len(STREAMS):
        words.append(f"--streams {args.streams}")
    if args.data_dir:
        words.append(f"--data-dir {args.data_dir}")
    if args.no_cold:
        words.append("--no-cold")
    return " ".join(["bench/verify.py", *words])


def tool_versions() -> str:
    def first_line(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True).stdout
        except OSError:
            return "?"
        return out.splitlines()[0] if out else "?"

    return f"{first_line(['sha256sum', '--version'])}, {first_line(['xargs', '--version'])}"


def ram() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gigabytes", type=float, default=10.0, help="gzip to generate, as stored (default 10)"
    )
    parser.add_argument("--runs", type=int, default=3, help="rounds of every row (default 3)")
    parser.add_argument(
        "--workers",
        default="2",
        help="comma-separated N for extra `sfmd verify --workers N` rows, warm only "
        "(default 2; '' for none)",
    )
    parser.add_argument("--streams", type=int, default=len(STREAMS), help="streams to generate")
    parser.add_argument(
        "--data-dir", type=Path, help="where the data folder is made (default: the temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument(
        "--reuse", type=Path, metavar="DIR", help="a data folder a --keep run left: no generating"
    )
    parser.add_argument("--no-cold", action="store_true", help="warm page cache only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the data folder is removed
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        print(f"--workers {args.workers!r}: comma-separated whole numbers", file=sys.stderr)
        return 2
    load_before = load_average()
    started = time.strftime("%H:%M", time.gmtime())
    if args.reuse is not None:
        root = args.reuse.resolve()
        if not (root / "sfmd.toml").exists():
            print(f"--reuse {root}: no sfmd.toml there", file=sys.stderr)
            return 2
    else:
        parent = args.data_dir or Path(tempfile.gettempdir())
        free = shutil.disk_usage(parent).free
        if free < args.gigabytes * 1e9 * 1.1 + 2e9:
            print(f"{parent}: {free / 1e9:.1f} GB free, not enough", file=sys.stderr)
            return 2
        root = Path(tempfile.mkdtemp(prefix="sfmd-bench-verify-", dir=parent))
    can_drop = not args.no_cold and drop_caches()
    if not args.no_cold and not can_drop:
        print("cannot write /proc/sys/vm/drop_caches (not root?): warm cache only", flush=True)
    keep = args.keep or args.reuse is not None
    try:
        if args.reuse is not None:
            dataset = load_dataset(root)
            print(f"reusing {root}: {len(dataset.files)} files, {dataset.stored / 1e9:.2f} GB")
        else:
            dataset = generate(root, args.gigabytes, args.streams, args.seed)
        rows = plan(dataset.config, workers, can_drop)
        with tempfile.TemporaryDirectory(prefix="sfmd-bench-verify-list-") as tmp:
            runner = Runner(dataset, Path(tmp), can_drop)
            for n in range(args.runs):
                # Alternate, in reverse order every other round: drift, and what one run
                # leaves behind for the next, hit every row alike.
                for row in rows if n % 2 == 0 else reversed(rows):
                    for cache in ("cold", "warm") if row.cold else ("warm",):
                        run = runner.run(row, cache)
                        row.runs.append(run)
                        print(
                            f"run {n + 1}/{args.runs}  {row.label:26} {cache}  "
                            f"{run.seconds:7.2f} s  {dataset.stored / 1e9 / run.seconds:5.2f} GB/s"
                            f"  cpu {run.cpu:6.1f} s  others {run.others:4.2f} cores"
                            f"  cached {_fmt(run.cached and run.cached * 100, '.0f')} %",
                            flush=True,
                        )
                for row in rows[2:]:
                    for cache in ("cold", "warm"):
                        mine = row.of(cache)
                        base = [rows[0].of(cache), rows[1].of(cache)]
                        if mine and all(len(b) == len(mine) for b in base):
                            print(
                                f"  round {n + 1}: {row.label} {cache}: "
                                f"{mine[-1].seconds / base[0][-1].seconds:.2f}x sha256sum, "
                                f"{mine[-1].seconds / base[1][-1].seconds:.2f}x sha256sum -P 2",
                                flush=True,
                            )
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"data kept in {root} (config {root / 'sfmd.toml'})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    body = "\n".join([
        table(rows, dataset),
        "",
        "verify ÷ sha256sum in each round (same cache state):",
        "",
        *round_ratios(rows, args.runs),
    ])  # fmt: skip
    facts = machine_facts(root.parent)
    commit = facts.pop("commit")
    facts["RAM"] = ram()
    facts["commit"] = commit
    facts["tools"] = tool_versions()
    made = f" in {dataset.seconds / 60:.0f} min" if dataset.seconds else ""
    facts["data"] = (
        f"{len(dataset.files)} files in {dataset.streams} streams, "
        f"{dataset.stored / 1e9:.2f} GB stored, {dataset.raw / 1e9:.1f} GB uncompressed "
        f"(ratio {dataset.ratio:.2f}), {dataset.messages:,} tweet-shaped messages, written "
        f"through sfmd.archive.Archive at level {LEVEL}, window {WINDOW}{made}"
    )
    facts["cache"] = (
        "cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before the run (the VM's host may "
        "still cache the disk), then warm at once"
        if can_drop
        else "warm only (could not drop the page cache)"
    )
    facts["load average (1, 5, 15 min)"] = (
        f"{load_before} at the start ({started}), {load_average()} at the end "
        f"({time.strftime('%H:%M', time.gmtime())})"
    )
    heading = f"sfmd verify against sha256sum ({args.gigabytes:g} GB)"
    note = "; medians of the runs, ratios of the medians (same cache state)"
    section = dated_section(heading, args.title, facts, command_line(args), body, note)
    publish(args.doc, facts, body, section, args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
