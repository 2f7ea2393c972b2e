"""Run sfmd with a loop-lag probe: `python bench/lagprobe.py OUT.txt run --config FILE`.

The probe is one task on sfmd's event loop that asks to wake every `INTERVAL` seconds and
writes down how late it woke whenever that is over `RECORD` seconds: a callback that holds
the loop (a big answer, 1,000 files published at once, a garbage collection) shows as a late
wake-up of about its length. So does the kernel giving the core to another process: each line
also holds the loop thread's own CPU time over the late interval, so the two can be told
apart (a stall that is sfmd's own work shows as CPU time close to the lag; on a busy machine
preemption shows as lag without it; waiting for the GIL held by sfmd's worker threads shows
as neither). Lines are `wall_clock lag_ms loop_cpu_ms`, written with one `os.write` each (a
late wake-up is rare; the probe must not become the load it measures). The last line,
written at exit, is `# wakeups N`.

It lives in the bench, not in sfmd: the daemon has no use for it, and the bench needs it
around the unchanged `sfmd` entry point (`python -m sfmd ...`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from typing import Any

INTERVAL = 0.01  # seconds between wake-ups asked for
RECORD = 0.005  # a wake-up later than this is written down


async def _probe(fd: int, counter: list[int]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + INTERVAL
        cpu = time.thread_time()
        await asyncio.sleep(INTERVAL)
        lag = loop.time() - asked
        counter[0] += 1
        if lag > RECORD:
            used = time.thread_time() - cpu
            os.write(fd, f"{time.time():.3f} {lag * 1e3:.1f} {used * 1e3:.1f}\n".encode())


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    counter = [0]
    real_run = asyncio.run

    def run_with_probe(main: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
        async def wrapped() -> Any:
            probe = asyncio.create_task(_probe(fd, counter))
            try:
                return await main
            finally:
                probe.cancel()

        return real_run(wrapped(), **kwargs)

    asyncio.run = run_with_probe  # type: ignore[assignment]
    from sfmd.cli import main as sfmd_main

    try:
        return sfmd_main(argv)
    finally:
        os.write(fd, f"# wakeups {counter[0]}\n".encode())
        os.close(fd)


def read(path: str | os.PathLike[str]) -> list[tuple[float, float, float]]:
    """(wall clock, lag, the loop thread's CPU time meanwhile; seconds) of every late
    wake-up the probe wrote down."""
    out: list[tuple[float, float, float]] = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            wall, lag_ms, cpu_ms = line.split()
            out.append((float(wall), float(lag_ms) / 1e3, float(cpu_ms) / 1e3))
    return out


if __name__ == "__main__":
    sys.exit(main())
