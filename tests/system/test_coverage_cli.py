"""`sfmctl coverage` on a real manifest, with no daemon running: the table and the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def sfmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sfmd.ctl", *args], capture_output=True,
                          text=True, timeout=30)


def write_manifest(data: Path) -> None:
    (data / "news").mkdir(parents=True)
    lines = [
        {"file": "news/a.jsonl.gz", "start": "2026-12-01T00:00:00.000Z",
         "end": "2026-12-01T00:15:00.000Z", "messages": 5, "tweets": 4, "bytes": 9,
         "sha256": "x", "provenance": {},
         "gaps": [{"from": "2026-12-01T00:05:00.000Z", "to": "2026-12-01T00:06:30.000Z",
                   "reason": "backoff", "error": "HTTP 503", "refilled": "none"}]},
        {"file": None, "start": "2026-12-01T00:15:00.000Z", "end": "2026-12-01T00:30:00.000Z",
         "messages": 0, "tweets": 0, "bytes": 0, "sha256": None, "gaps": [], "provenance": {},
         "closed": True},
    ]
    (data / "news" / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_coverage_reads_the_manifest_while_no_daemon_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_manifest(data)
    shown = sfmctl("--socket", str(tmp_path / "nobody.sock"), "coverage", "news",
                   "--data-dir", str(data))
    assert shown.returncode == 0, shown.stderr
    assert "connected 95.00 % of the 30m00s recorded" in shown.stdout
    assert "backoff" in shown.stdout and "HTTP 503" in shown.stdout and "1m30s" in shown.stdout
    assert "2026-12-01" in shown.stdout


def test_coverage_as_json_over_a_period_from_the_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_manifest(data)
    config = tmp_path / "sfmd.toml"
    config.write_text('[daemon]\ndata_dir = "data"\n')
    shown = sfmctl("coverage", "news", "--config", str(config), "--json",
                   "--since", "2026-12-01T00:10:00Z", "--until", "2026-12-01T00:20:00")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["recorded_seconds"] == 600 and report["connected_seconds"] == 600
    assert report["gaps"] == []


def test_coverage_of_an_unknown_stream_or_a_bad_moment_says_so(tmp_path: Path) -> None:
    missing = sfmctl("coverage", "nope", "--data-dir", str(tmp_path))
    assert missing.returncode == 1 and "no manifest" in missing.stderr
    bad = sfmctl("coverage", "news", "--data-dir", str(tmp_path), "--since", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
