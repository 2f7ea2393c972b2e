"""`sfmd verify` and `sfmd bag` as an operator runs them, on files a real daemon wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import start_daemon, stop
from tests.helpers.fakeapi import stream_connections
from tests.helpers.files import manifest
from tests.helpers.waits import wait_until


def sfmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sfmd", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def bagit_validate(bag: Path) -> subprocess.CompletedProcess[str]:
    """The bagit library's own command line: `bagit.py --validate BAG`."""
    tool = Path(sys.executable).with_name("bagit.py")
    return subprocess.run([sys.executable, str(tool), "--validate", str(bag)],
                          capture_output=True, text=True, timeout=60)


async def collected(tmp_path: Path, fake_api: FakeAPI) -> Path:
    """A daemon ran a filter and a sample for a moment, then stopped: their files are on disk."""
    fake_api.configure(rate=100)
    config = write_daemon_config(tmp_path, fake_api)
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", {"name": "f1", "kind": "filter",
                                              "track": ["cats"], "credential": "alpha"}, 201)
            await api.ok("POST", "/streams", {"name": "s1", "kind": "sample",
                                              "credential": "beta"}, 201)
        await wait_until(lambda: all(r.sent_count > 20 for r in stream_connections(fake_api))
                         and len(stream_connections(fake_api)) == 2, timeout=15)
        await stop(proc)
    finally:
        proc.kill()
    return config


async def test_verify_passes_then_names_each_damaged_file(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = await collected(tmp_path, fake_api)
    clean = sfmd("verify", "--config", str(config), cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "2 streams checked" in clean.stdout and clean.stdout.strip().endswith("clean")
    # A run that crossed a minute boundary has two files: any one will do.
    entry = manifest(tmp_path / "data", "f1")[0]
    damaged = tmp_path / "data" / entry["file"]
    data = bytearray(damaged.read_bytes())
    data[-20] ^= 0xFF
    damaged.write_bytes(bytes(data))
    found = sfmd("verify", "--config", str(config), "--json", cwd=tmp_path)
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert {p["file"] for p in report["problems"]} == {entry["file"]}
    only_s1 = sfmd("verify", "s1", "--config", str(config), cwd=tmp_path)
    assert only_s1.returncode == 0, only_s1.stdout


async def test_bag_makes_a_bag_the_bagit_tool_validates(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = await collected(tmp_path, fake_api)
    entry = manifest(tmp_path / "data", "f1")[0]  # two when the run crossed a minute
    out = tmp_path / "bag"
    made = sfmd("bag", "f1", str(out), "--since", "2000-01-01", "--until", "2100-01-01",
                "--config", str(config), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (out / "data" / entry["file"]).read_bytes() == (
        tmp_path / "data" / entry["file"]).read_bytes()
    lines = (out / "data" / "f1" / "manifest.jsonl").read_text().splitlines()
    assert entry["file"] in [json.loads(line)["file"] for line in lines]
    info = (out / "bag-info.txt").read_text()
    assert "Sfmd-Stream: f1" in info and "statuses/filter.json" in info and "SECRET" not in info
    check = bagit_validate(out)
    assert check.returncode == 0, check.stderr
    again = sfmd("bag", "f1", str(out), "--since", "2000-01-01", "--until", "2100-01-01",
                 "--config", str(config), cwd=tmp_path)
    assert again.returncode == 1 and "not an empty folder" in again.stderr
