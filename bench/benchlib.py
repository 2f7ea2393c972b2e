"""What every benchmark here shares: /proc readings, CPU pinning, stopping a child, and the
results file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, sys) seconds of a live process, all threads (from /proc, 1/CLK_TCK resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def keep_work(work: str | Path, keep: Path | None) -> None:
    """`--keep DIR`: copy a run's work folder (logs, data; not its sockets) into DIR."""
    if keep:
        shutil.copytree(work, keep, ignore=shutil.ignore_patterns("*.sock"), dirs_exist_ok=True)


def byte_compile(package: Path) -> None:
    """Compile a package's modules as pip does when it installs sfmd, so the daemon measured
    loads them instead of compiling each at start (with PYTHONDONTWRITEBYTECODE set, as
    here, it never keeps what it compiled: 3.5 MB more RSS from the compiler's leftovers)."""
    import compileall

    if not compileall.compile_dir(str(package), quiet=1):
        raise RuntimeError(f"cannot byte-compile {package}")


def pinned(core: int | None) -> Callable[[], None] | None:
    """A preexec_fn that pins a child to one core, so two processes do not share one."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def append_section(doc: Path, lines: list[str]) -> None:
    """Append a dated section to docs/benchmarks.md, creating it if need be."""
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text("# Benchmarks\n")
    with doc.open("a") as f:
        f.write("\n".join(lines))


def dated_section(
    heading: str, title: str, facts: dict[str, str], command: str, body: str, note: str = ""
) -> list[str]:
    """The lines of a docs section: "### <UTC minute>: heading (title)", the facts as
    "- key: value", "- `command`note", then the body."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f" ({title})" if title else ""
    return [
        "",
        f"### {stamp}: {heading}{title}",
        "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        f"- `{command}`{note}",
        "",
        body,
        "",
    ]


def publish(doc: Path, facts: dict[str, str], body: str, section: list[str], no_doc: bool) -> None:
    """Print the facts and the body, then, unless --no-doc, append the section to doc."""
    print()
    print("\n".join(f"{k}: {v}" for k, v in facts.items()))
    print(body)
    if not no_doc:
        append_section(doc, section)
        print(f"\nappended to {doc}")


def memory_mb(pid: int) -> dict[str, float]:
    """Rss and Pss of a live process in MB (from /proc/PID/smaps_rollup).

    Pss divides each shared page among the processes mapping it, so summing Pss over many
    Python processes counts the interpreter and libraries once; summing Rss counts them in
    every process.
    """
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key] = int(value.split()[0]) / 1024
    return out


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile: with few samples, p99 is the worst one, not a guess."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a child that still runs, then SIGKILL it if it has not exited within
    `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
