"""`sfmd demo` (what `make demo` runs) works out of the box and ends cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_rotates_and_stops_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sfmd", "demo", "--seconds", "4.5"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "added filter stream demo-filter" in out and "added sample stream demo-sample" in out
    assert re.search(r"demo-filter\s+filter\s+streaming", out)
    assert ".part files left: 0" in out
    data = Path(re.search(r"^data: (.+)$", out, re.M).group(1))  # type: ignore[union-attr]
    for name in ("demo-filter", "demo-sample"):
        published = list((data / name).rglob("*.jsonl.gz"))
        assert len(published) >= 2, f"{name} did not rotate"
    assert "Traceback" not in done.stderr
