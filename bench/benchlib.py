"""What every benchmark here shares: /proc readings, CPU pinning, and the results file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, sys) seconds of a live process, all threads (from /proc, 1/CLK_TCK resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


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
