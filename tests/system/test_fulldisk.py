"""A full disk, for real: one stream's folder is a small tmpfs that fills up (ENOSPC).

The stream `small` writes onto its own tiny filesystem, nearly filled by a filler file; the
stream `big` writes onto the ordinary disk. Once `small`'s disk is full: its status and the
log must say so loudly, no torn file may ever carry a final name, and `big` must not notice.
When the filler is deleted, `small` must recover by itself, and every message either stream
stored must be byte-exact, once, in order, with each connection's stored messages an unbroken
prefix of what it was sent (a connection may lose its tail to a refused write, never a middle).

Mounting needs root (CI and the development machines run tests as root); elsewhere the test
is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sfmd.archive import iso_utc
from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.checks import check_entry, check_prefixes, check_published, check_whole_file
from tests.helpers.config import write_credentials, write_daemon_config
from tests.helpers.daemon import start_daemon
from tests.helpers.files import manifest, stored_messages
from tests.helpers.logs import log_path, read_log
from tests.helpers.waits import wait_until

DISK = 512 * 1024  # the small filesystem
FREE = 48 * 1024  # left free by the filler: a few seconds of `small`'s gzip output
RATE = 500  # messages per second per connection
ENOSPC = "No space left on device"
SMALL = {"name": "small", "kind": "filter", "track": ["small"], "credential": "alpha"}
BIG = {"name": "big", "kind": "sample", "credential": "beta"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK bytes at `small`'s folder under data_dir, unmounted afterwards."""
    folder = tmp_path / "data" / "small"
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK // 1024}k", "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Leave about FREE bytes free on the filesystem of `folder`."""
    filler = folder / "filler.bin"  # not an archive name: sfmd leaves it alone
    stats = os.statvfs(folder)
    with open(filler, "wb") as f:
        f.write(b"\0" * (stats.f_bavail * stats.f_frsize - FREE))
    return filler


def check_finals(data: Path, stream: str) -> int:
    """Every file with a final name is whole, listed or not (yet); returns how many."""
    finals = [p for p in (data / stream).rglob(f"{stream}-*") if not p.name.endswith(".part")]
    for path in finals:
        check_whole_file(path)
    for entry in manifest(data, stream):
        check_entry(data, entry)
    return len(finals)


def last_sent_is_written(api: FakeAPI, data: Path, endpoint: str, stream: str) -> bool:
    record = [r for r in api.log if r.endpoint == endpoint][-1]
    sent = api.sent_messages(record.conn)
    if not sent:
        return False
    try:
        return b"\n" + sent[-1] + b"\n" in written(data, stream)
    except FileNotFoundError:  # renamed while we looked: look again
        return False


def written(data: Path, stream: str) -> bytes:
    """Everything the stream handed to the OS: published files and open `.part`s."""
    out = [b""]
    for path in (data / stream).rglob(f"{stream}-*"):
        raw = path.read_bytes()
        if ".gz" in path.name:
            raw = zlib.decompressobj(wbits=31).decompress(raw)  # a sync-flushed prefix
        out.append(raw)
    return b"\n".join(out)


async def status(ctl: Api, name: str) -> dict[str, Any]:
    answer: dict[str, Any] = (await ctl.ok("GET", f"/streams/{name}"))["status"]
    return answer


async def status_until(
    ctl: Api, name: str, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll the stream's status until `check` holds; fail after 30 s naming `what`."""
    deadline = time.monotonic() + 30
    while not check(shown := await status(ctl, name)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {shown}"
        await asyncio.sleep(0.05)
    return shown


async def test_a_full_disk_is_loud_harms_no_file_or_neighbour_and_heals(
    tmp_path: Path, small_disk: Path
) -> None:
    api = FakeAPI(write_credentials(tmp_path), record_bytes=True,
                  keepalive_interval=0.25, message_size=600, rate=RATE)
    await api.start()
    config = write_daemon_config(tmp_path, api, save_interval=1)
    data, log_file = tmp_path / "data", log_path(tmp_path)
    filler = fill(small_disk)
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as ctl:
            for body in (SMALL, BIG):
                await ctl.ok("POST", "/streams", body, status=201)

            # -- the disk fills up
            await status_until(ctl, "small", lambda s: ENOSPC in (s["last_error"] or ""),
                               "small to report the full disk")
            big_before = (await status(ctl, "big"))["messages"]
            # While full: `small` keeps failing, loudly; `big` keeps streaming.
            small_states: set[str] = set()
            deadline = time.monotonic() + 30
            while True:
                shown = await status(ctl, "small")
                small_states.add(shown["state"])
                assert ENOSPC in (shown["last_error"] or ""), shown
                check_finals(data, "small")  # never a torn file under a final name
                big_now = await status(ctl, "big")
                if big_now["messages"] >= big_before + 2 * RATE and "backoff" in small_states:
                    break
                assert time.monotonic() < deadline, (big_now, small_states)
                await asyncio.sleep(0.1)
            assert big_now["state"] == "streaming" and big_now["reconnects"] == 0
            assert big_now["last_error"] is None
            full_log = read_log(log_file, "small", missing_ok=True)
            failures = [e for e in full_log if e["event"] == "archive_write_failed"]
            assert failures and all(e["level"] == "error" for e in failures)
            assert all(ENOSPC in e["error"] for e in failures)
            assert str(small_disk) in failures[0]["error"]  # names the place to look at
            cut = [e for e in full_log if e["event"] == "disconnected"
                   and e.get("reason", "").startswith("archive: ")]
            assert cut and ENOSPC in cut[0]["reason"]

            # -- space is freed: `small` heals by itself
            files_while_full = len(manifest(data, "small"))
            filler.unlink()
            freed = time.time()
            await wait_until(
                lambda: any(e["event"] == "archive_write_resumed"
                            for e in read_log(log_file, "small", missing_ok=True)),
                timeout=30, what="small's archive writing again",
            )
            await status_until(
                ctl, "small",
                lambda s: s["state"] == "streaming"
                and len(manifest(data, "small")) >= files_while_full + 2,
                "small streaming and publishing again",
            )
            big_final = await status(ctl, "big")
            # A clean stop loses nothing received; to know that all that was sent was also
            # received, the API stops sending (keep-alives only) and the last messages are
            # waited for on disk. Not before small's new connection has been sent something:
            # the last message of the connection the full disk cut was never stored.
            await wait_until(
                lambda: bool(api.sent_messages(
                    [r for r in api.log if r.endpoint == "filter"][-1].conn)),
                timeout=10, what="a message sent on small's new connection",
            )
            api.configure(total=0)
            await wait_until(
                lambda: last_sent_is_written(api, data, "filter", "small")
                and last_sent_is_written(api, data, "sample", "big"),
                timeout=20, what="the last messages sent on disk",
            )
        proc.signal(signal.SIGTERM)
        assert await proc.wait(10) == 0, proc.stderr
    finally:
        proc.kill()
        await api.stop()

    # Nothing torn, nothing unlisted, nothing left as .part, on either disk.
    small_entries = check_published(data, "small")
    check_published(data, "big")
    assert any(e["start"] >= _iso(freed - 1) for e in small_entries)  # files after the heal
    # `big` never noticed: one connection, everything it was sent stored.
    (big_conn,) = [r for r in api.log if r.endpoint == "sample"]
    assert stored_messages(data, "big") == api.sent_messages(big_conn.conn)
    assert big_final["reconnects"] == 0
    # `small` lost only the tails its refused writes cut off, never a middle, never twice.
    small_conns = [r for r in api.log if r.endpoint == "filter"]
    counts = check_prefixes(data, "small", api, small_conns)
    stored = sum(s for s, _ in counts.values())
    sent = sum(n for _, n in counts.values())
    last_stored, last_sent = counts[small_conns[-1].conn]
    assert last_stored == last_sent > 0  # the healed connection stores everything again
    log = read_log(log_file, missing_ok=True)
    assert not [e for e in log if e.get("stream") == "big" and e["level"] == "error"]
    assert "SECRET" not in log_file.read_text() + proc.stderr
    print(f"full disk: {len(small_conns)} connections of small, {stored}/{sent} messages stored;"
          f" {len(small_entries)} files published; big {len(stored_messages(data, 'big'))}")


def _iso(t: float) -> str:
    """As the manifest writes times: sortable as text."""
    return iso_utc(datetime.fromtimestamp(t, UTC))
