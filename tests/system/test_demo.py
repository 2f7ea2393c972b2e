"""`sfmd demo` (what `make demo` runs) works out of the box, teaches the commands a user
would type, shows that the filter's tweets match its terms, ends cleanly, and leaves no
temp folder behind unless asked to keep it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "sfmd", "demo", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def test_demo_runs_rotates_and_stops_cleanly(tmp_path: Path) -> None:
    out = demo("--seconds", "4.5", "--dir", str(tmp_path / "demo")).stdout
    assert "added filter stream demo-filter: track 'archive', 'public library'" in out
    assert "added sample stream demo-sample" in out
    socket = tmp_path / "demo" / "sfmd.sock"
    # The commands a user would type for the same streams, and for the table.
    assert (f"by hand: sfmctl --socket {socket} add demo-filter --track archive "
            "--track 'public library' --people librarycongress --credential demo-filter") in out
    assert f"by hand: sfmctl --socket {socket} sample demo-sample --credential demo-sample" in out
    assert f"$ sfmctl --socket {socket} status" in out
    assert re.search(r"demo-filter\s+twitter/v1\.1\s+filter\s+streaming", out)
    assert ".part files left: 0" in out
    # Every tweet the filter stored matches one of its terms, and each term is met.
    held = re.search(r"^  demo-filter: (\d+) tweets and \d+ delete or limit notices; (.+)$",
                     out, re.M)
    assert held, out
    counts = {term: int(n) for n, term in
              (part.split(" match ", 1) for part in held.group(2).split(", "))}
    assert set(counts) == {"'archive'", "'public library'", "@librarycongress"}, counts
    assert sum(counts.values()) == int(held.group(1))
    data = Path(re.search(r"^data: (.+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert data == tmp_path / "demo" / "data"
    for name in ("demo-filter", "demo-sample"):
        published = list((data / name).rglob("*.jsonl.gz"))
        assert len(published) >= 2, f"{name} did not rotate"


def test_demo_removes_its_temp_folder_unless_kept() -> None:
    out = demo("--seconds", "0.5").stdout
    base = Path(re.search(r"^sfmd demo in (.+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert f"removed {base} (sfmd demo --keep keeps the files to look at)" in out
    assert not base.exists()

    out = demo("--seconds", "0.5", "--keep").stdout
    base = Path(re.search(r"^sfmd demo in (.+)$", out, re.M).group(1))  # type: ignore[union-attr]
    try:
        assert base.name.startswith("sfmd-demo-") and (base / "data" / "demo-filter").is_dir()
        assert f"data: {base / 'data'}" in out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_demo_refuses_a_folder_that_holds_something(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "sfmd", "demo", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "is not empty" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
