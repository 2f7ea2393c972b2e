"""sfmd against the tools people use today: one filter stream, flat out, fake API to a file.

Run by hand: `python bench/compare.py [--messages 100000] [--runs 5] [--data-dir DIR]`.

One `sfmd fakeapi` process (pinned to one core) serves N tweets of ~4.8 KB as fast as it can
to every connection on `statuses/filter.json`; each collector in turn, pinned to the other
core, opens one filter stream on the same word and writes what it gets to a file on the same
disk:

- `curl → /dev/null` and `aiohttp → /dev/null` throw the bytes away: they show how fast the
  fake API can serve, so that it is known not to be what limits the rows below.
- `curl → file`: `curl -sN -o FILE` with the signed request, the raw body to a file.
- `twarc filter → file`: twarc 2.14's own command line (`bench/twarc_filter.py`, which mounts
  a requests adapter sending twarc's stream.twitter.com requests to the fake API; the fake
  API accepts a signature made for that host). `twarc library → file` is twarc's `filter()`
  in a bare loop without the CLI's per-tweet log line: twarc at its fastest.
- `sfmd, compress = false` and `sfmd, compress = true`: `sfmd stream` with sfmd's defaults
  otherwise, timed and checked as bench/ingest.py does (exactly N messages in the manifest
  and the published file).

Every run is timed from the fake API receiving the request (its log) to the N-th message in
the file (the file's mtime, or twarc's own clock once its file is closed). Rows alternate,
in reverse order every other round, and each waits for the machine to be quiet first. The
medians, and the ratios the project's targets are about (each round's rows ran minutes
apart at most), are printed and, unless `--no-doc`, appended to docs/benchmarks.md with the
machine, the commit and the load average.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchlib import cpu_times, dated_section, load_average, pinned, publish  # noqa: E402
from ingest import (  # noqa: E402
    CREDENTIAL,
    MESSAGE_SIZE,
    REPO,
    TIMEOUT,
    Bench,
    BenchError,
    Result,
    Summary,
    machine_facts,
    table,
    wait_for,
    wait_for_quiet,
)

TRACK = "sfmdbench"
BOUND_SHARE = 0.8  # a writer this close to the discarding readers may be the fake API's limit
TWARC_SCRIPT = BENCH / "twarc_filter.py"

CURL_NULL = "curl → /dev/null"
AIOHTTP_NULL = "aiohttp → /dev/null"
CURL_FILE = "curl → file"
TWARC_CLI = "twarc filter → file"
TWARC_LIB = "twarc library → file"
SFMD_PLAIN = "sfmd, compress = false"
SFMD_GZIP = "sfmd, compress = true"
#: --rows name -> row label, in the order a round runs them.
ROWS = {
    "curl-null": CURL_NULL,
    "aiohttp-null": AIOHTTP_NULL,
    "curl-file": CURL_FILE,
    "twarc-cli": TWARC_CLI,
    "twarc-lib": TWARC_LIB,
    "sfmd-plain": SFMD_PLAIN,
    "sfmd-gzip": SFMD_GZIP,
}

#: (what, of, target ratio): the issue's targets, judged per round and on the medians.
TARGETS = (
    (SFMD_PLAIN, "twarc", 10.0),
    (SFMD_PLAIN, CURL_FILE, 0.5),
    (SFMD_GZIP, "twarc", 3.0),
)


class CompareBench(Bench):
    """ingest.py's bench on a filter stream, plus the collectors sfmd is compared with."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir, track=TRACK)

    def _scratch(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="sfmd-compare-", dir=self.data_root))

    def run_curl_file(self) -> Result:
        api_cpu = self.api.cpu()
        scratch = self._scratch()
        output = scratch / "body.json"
        expected = self.n * self.framed  # the raw body: every tweet ends in "\r\n"
        curl = subprocess.Popen(
            [*self.curl_command(), "-o", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pinned(self.client_core),
        )
        try:
            record = self._await_connection()

            def written() -> bool:
                if curl.poll() is not None:
                    raise BenchError(f"curl exited with {curl.returncode}")
                return output.exists() and output.stat().st_size >= expected

            wait_for(written, "curl to write every message")
            stat = output.stat()
            user, system = cpu_times(curl.pid)
        finally:
            curl.kill()
            curl.wait()
            shutil.rmtree(scratch, ignore_errors=True)
        if stat.st_size != expected:
            raise BenchError(f"curl wrote {stat.st_size} bytes; expected {expected}")
        done = stat.st_mtime_ns / 1e9 - (time.time() - time.monotonic())
        return Result(
            CURL_FILE,
            self.n / (done - record["opened"]),
            cpu_us=(user + system) / self.n * 1e6,
            sys_us=system / self.n * 1e6,
            api_cpu_us=(self.api.cpu() - api_cpu) / self.n * 1e6,
        )

    def run_twarc(self, lean: bool) -> Result:
        api_cpu = self.api.cpu()
        scratch = self._scratch()
        command = [
            sys.executable, str(TWARC_SCRIPT), "--api", self.api.url,
            "--credentials", str(self.credentials_file), "--credential", CREDENTIAL,
            "--track", TRACK, "--output", str(scratch / "tweets.jsonl"),
            "--messages", str(self.n),
        ]  # fmt: skip
        if lean:
            command.append("--lean")
        stderr_path = self.workdir / "twarc-stderr.txt"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                preexec_fn=pinned(self.client_core),
            )
        try:
            record = self._await_connection()
            out, _ = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(scratch, ignore_errors=True)
        if proc.returncode != 0:
            tail = stderr_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"twarc exited with {proc.returncode}: {tail}")
        report = json.loads(out)
        if report["messages"] != self.n:
            raise BenchError(f"twarc wrote {report['messages']} tweets; expected {self.n}")
        return Result(
            TWARC_LIB if lean else TWARC_CLI,
            self.n / (report["done"] - record["opened"]),
            cpu_us=report["cpu"] / self.n * 1e6,
            sys_us=report["sys"] / self.n * 1e6,
            rss_mb=report["rss_mb"],
            api_cpu_us=(self.api.cpu() - api_cpu) / self.n * 1e6,
        )

    def runner(self, row: str) -> Callable[[], Result]:
        jobs: dict[str, Callable[[], Result]] = {
            CURL_NULL: lambda: self.run_reader("curl"),
            AIOHTTP_NULL: lambda: self.run_reader("aiohttp"),
            CURL_FILE: self.run_curl_file,
            TWARC_CLI: lambda: self.run_twarc(lean=False),
            TWARC_LIB: lambda: self.run_twarc(lean=True),
            SFMD_PLAIN: lambda: self.run_sfmd("plain"),
            SFMD_GZIP: lambda: self.run_sfmd("gzip-6"),
        }
        return jobs[row]


# --------------------------------------------------------------------------- ratios


def ratio_lines(summaries: dict[str, Summary]) -> tuple[list[str], list[str]]:
    """The ratio table and the verdicts, for the targets whose rows both ran.

    "twarc" in a target means `twarc filter`, the tool as people run it; the same ratio
    against twarc's library loop (no per-tweet log line, faster) is shown as well, stricter.
    "By CPU per message" is the inverse ratio of CPU time per message: what the two would do
    each on a core of its own, whatever else the machine was running.
    """
    table_rows = [
        "| ratio of messages/s | of the medians | each round (min-max) | by CPU per message "
        "| target | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for what, of, target in TARGETS:
        bases = [TWARC_CLI, TWARC_LIB] if of == "twarc" else [of]
        for base in bases:
            top, bottom = summaries.get(what), summaries.get(base)
            if top is None or bottom is None or not top.results or not bottom.results:
                continue
            ratio = (top.median("rate") or 0.0) / (bottom.median("rate") or 1.0)
            rounds = [a.rate / b.rate for a, b in zip(top.results, bottom.results, strict=False)]
            verdict = "met" if ratio >= target else "**not met**"
            missed = sum(r < target for r in rounds)
            if ratio >= target and missed:
                verdict += f" (not in {missed} of {len(rounds)} rounds)"
            by_cpu = (bottom.median("cpu_us") or 0.0) / (top.median("cpu_us") or 1.0)
            table_rows.append(
                f"| {what} / {base} | {ratio:.2f}x | {min(rounds):.2f}x-{max(rounds):.2f}x "
                f"| {by_cpu:.2f}x | ≥ {target:g}x | {verdict} |"
            )
            stricter = " (stricter: twarc's library loop)" if base == TWARC_LIB else ""
            verdicts.append(f"- {what} ≥ {target:g}x {base}{stricter}: {ratio:.2f}x, {verdict}")
    return table_rows, verdicts


def ceiling_line(summaries: dict[str, Summary]) -> str:
    """Is the fake API the bottleneck? Each writer's rate against the fastest discarding reader."""
    ceiling = max(
        (summaries[r].median("rate") or 0.0 for r in (CURL_NULL, AIOHTTP_NULL) if r in summaries),
        default=0.0,
    )
    writers = [r for r in summaries if r not in (CURL_NULL, AIOHTTP_NULL)]
    if not ceiling or not writers:
        return ""
    shares = {r: (summaries[r].median("rate") or 0.0) / ceiling for r in writers}
    close = [r for r, share in shares.items() if share >= BOUND_SHARE]
    listed = ", ".join(f"{r} {share:.0%}" for r, share in shares.items())
    verdict = (
        "none comes near it, so the fake API is not what limits them"
        if not close
        else f"{' and '.join(close)} may be held back by the fake API itself (within "
        f"{1 - BOUND_SHARE:.0%} of what it served a reader that keeps nothing)"
    )
    return (
        f"The fake API served a reader that discards at {ceiling:,.0f} messages/s. Each writer's "
        f"median as a share of that: {listed}; {verdict}."
    )


def zlib_rate(
    level: int, window: int, batch: bytes, count: int, seconds: float
) -> tuple[float, float]:
    """(messages/s, ratio) of one compressor fed `batch` (`count` messages) for `seconds`."""
    try:
        from sfmd.archive import Deflate

        compressor = Deflate(level, window).compressor()
    except ImportError:  # an sfmd before compress_window: zlib's defaults
        compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    done = stored = 0
    began = time.process_time()
    while time.process_time() - began < seconds:
        stored += len(compressor.compress(batch))
        done += 1
    stored += len(compressor.flush())
    return done * count / (time.process_time() - began), done * len(batch) / stored


def zlib_ceiling(config: Path, seconds: float = 1.0) -> str:
    """What sfmd's compression alone can do on varied, tweet-like text, on one core.

    The fake API's tweets differ only in their ids and compress over 100:1, far faster than
    real tweets; this puts a number on the difference, with sfmd's own zlib parameters.
    """
    import random

    from archive_write import fake_tweet

    from sfmd.config import load_config

    daemon = load_config(config).daemon
    level, window = daemon.compress_level, getattr(daemon, "compress_window", 15)
    rng = random.Random(1)
    count = 200
    batch = b"\n".join(fake_tweet(rng) for _ in range(count)) + b"\n"  # ~1 MB, as archives batch
    rate, ratio = zlib_rate(level, window, batch, count, seconds)
    at_level_1 = ""
    if level != 1:
        rate1, ratio1 = zlib_rate(1, window, batch, count, seconds)
        at_level_1 = f" and {rate1:,.0f} at level 1 (ratio {ratio1:.1f})"
    return (
        f"zlib alone, with sfmd's window ({window} bits), compresses varied tweet-like text "
        f"(bench/archive_write.py's) at {rate:,.0f} messages/s on one core at sfmd's level "
        f"{level} (ratio {ratio:.1f}){at_level_1}. The fake API's tweets compress far better "
        f"and faster, so the compressed rows above are upper bounds for real tweets."
    )


# --------------------------------------------------------------------------- report


def tool_versions() -> str:
    twarc = importlib.metadata.version("twarc")
    requests = importlib.metadata.version("requests")
    try:
        curl = subprocess.run(
            ["curl", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        curl = "unknown"
    return f"twarc {twarc} (requests {requests}), curl {curl}"


def command_line(args: argparse.Namespace) -> str:
    words = ["bench/compare.py", f"--messages {args.messages}", f"--runs {args.runs}"]
    if args.rows != ",".join(ROWS):
        words.append(f"--rows {args.rows!r}")
    if args.data_dir:
        words.append(f"--data-dir {args.data_dir}")
    words += [f"--set {key}={value}" for key, value in args.set.items()]
    if args.no_pin:
        words.append("--no-pin")
    return " ".join(words)


def doc_section(facts: dict[str, str], body: str, args: argparse.Namespace) -> list[str]:
    pinning = "" if args.no_pin else ", fake API and collector pinned to different cores"
    note = f"{pinning}; {MESSAGE_SIZE} B tweets; medians of the runs"
    heading = "compare, one filter stream: sfmd, twarc, curl"
    return dated_section(heading, args.title, facts, command_line(args), body, note)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=5, help="rounds of every row")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help="comma-separated, of: " + ", ".join(ROWS)
    )
    parser.add_argument(
        "--data-dir", type=Path, help="where every collector writes (default: the temp dir)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="an sfmd config setting (a TOML value), e.g. daemon.compress_window=13; repeatable",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.2,
        metavar="CORES",
        help="before each run, wait while other work uses more than this many cores",
    )
    parser.add_argument(
        "--patience", type=float, default=120.0, help="seconds to wait for quiet, then run anyway"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy each sfmd run into DIR (raw stacks)"
    )
    parser.add_argument("--title", default="", help="a few words for the docs section heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.set = dict(item.split("=", 1) for item in args.set)
    if any("." not in key for key in args.set):
        parser.error("--set takes SECTION.KEY=VALUE")
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(names) - set(ROWS)
    if unknown:
        parser.error(f"unknown row(s): {', '.join(sorted(unknown))}")
    if any(n.startswith("curl") for n in names) and not shutil.which("curl"):
        parser.error("curl is not on PATH")
    args.row_list = [ROWS[n] for n in names]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summaries = {row: Summary(row) for row in args.row_list}
    background = 0.0
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="sfmd-compare-") as tmp:
        bench = CompareBench(args, Path(tmp))
        try:
            for run in range(args.runs):
                rows = args.row_list if run % 2 == 0 else list(reversed(args.row_list))
                for row in rows:
                    background = max(background, wait_for_quiet(args.quiet, args.patience))
                    result = bench.runner(row)()
                    summaries[row].results.append(result)
                    print(
                        f"run {run + 1}/{args.runs}  {row:24} {result.rate:10,.0f} messages/s"
                        f"  cpu {result.cpu_us or 0:.1f} µs/msg",
                        flush=True,
                    )
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            for name in ("sfmd-stderr.txt", "twarc-stderr.txt"):
                log = Path(tmp, name)
                if log.exists():
                    sys.stderr.write(log.read_text(errors="replace")[-3000:])
            return 1
        finally:
            bench.close()
        zlib_note = ""
        if SFMD_GZIP in summaries:
            zlib_note = zlib_ceiling(bench.write_config(Path(tmp), compress=True, level=6))
    ratios, verdicts = ratio_lines(summaries)
    ceiling = ceiling_line(summaries)
    if zlib_note:
        verdicts += ["", zlib_note]
    body = "\n".join(
        [
            table(list(summaries.values())),
            "",
            *([ceiling, ""] if ceiling else []),
            *ratios,
            "",
            "Targets:",
            "",
            *verdicts,
        ]
    )
    facts = machine_facts(args.data_dir or Path(tempfile.gettempdir()))
    facts["tools"] = tool_versions()
    facts["load average (1, 5, 15 min)"] = f"{load_before} before, {load_average()} after"
    facts["other load before runs"] = f"up to {background:.2f} cores"
    publish(args.doc, facts, body, doc_section(facts, body, args), args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
