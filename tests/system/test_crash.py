"""Crash safety: SIGKILL the daemon at 20 moments, restart it each time, and lose nothing published.

Two streams write flat out with one-second rotation (so files are published every second and
recovered at every start) while a client rewrites the registry as fast as the API allows. The
daemon is killed at a random moment of one of four kinds, in turn:

* writing: somewhere in the middle of an interval, data flowing;
* publishing: just after a UTC second boundary, when both streams finish, fsync and rename a
  file and append its manifest line;
* registry: just after a PATCH was sent, while the registry file is being replaced;
* recovering: just after the control socket answers, while start-up publishes the leftovers.

After every kill, with the daemon dead (nothing moves): the registry loads and holds the last
acknowledged change or the one in flight; every manifest line matches its file; every file with
a final name is a complete gzip; nothing published earlier changed or vanished; the manifest
only grew. At the end every message stored is byte-exact, stored once, in order, and what a
connection stored is an unbroken prefix of what it was sent: a kill may cost a connection the
tail not yet handed to the OS (up to `flush_interval` of data, plus what was still in the
socket), never a middle. Run with `-s` to see the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import math
import random
import signal
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from sfmd.fake import FakeAPI
from sfmd.registry import Registry
from tests.helpers.api import Api
from tests.helpers.checks import check_entry, check_prefixes, check_published, check_whole_file
from tests.helpers.config import write_credentials, write_daemon_config
from tests.helpers.daemon import start_daemon
from tests.helpers.files import manifest
from tests.helpers.logs import log_text
from tests.helpers.waits import wait_until

KILLS = 20
MOMENTS = ("writing", "publishing", "registry", "recovering")
RATE = 1000  # messages per second per connection
LAST_RUN = 500  # messages each stream receives after the last start, before a clean stop
STREAMS = {
    "w1": {"name": "w1", "kind": "filter", "track": ["w1"], "credential": "alpha"},
    "w2": {"name": "w2", "kind": "sample", "credential": "beta"},
}
# Never connects (inactive): its settings are rewritten over and over to keep the registry busy.
CHURNED = {"name": "reg", "kind": "filter", "track": ["t0"], "credential": "alpha",
           "active": False}


@dataclass
class Churn:
    """A client rewriting the registry: what was acknowledged, and what is in flight."""

    acked: str = "t0"
    inflight: str | None = None
    count: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, ctl: Api) -> None:
        while True:
            self.count += 1
            value = f"t{self.count}"
            self.inflight = value
            self.started.set()
            try:
                code, _ = await ctl.call("PATCH", "/streams/reg", {"track": [value]})
            except aiohttp.ClientError:
                return  # the daemon died under us: `inflight` stays what it was sent
            assert code == 200
            self.acked, self.inflight = value, None


@dataclass
class Figures:
    kills: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    files_checked: int = 0  # file checks after kills (a file is checked at every kill after it)
    distinct_files: int = 0
    # Evidence of where the kills landed:
    registry_mid_write: int = 0  # kills that left a new registry temp file
    parts_left: int = 0  # .part files found after kills
    parts_finished: int = 0  # complete gzip, not yet renamed: killed mid-publish
    unlisted_finals: int = 0  # renamed, no manifest line yet: killed mid-publish
    messages_stored: int = 0
    messages_sent: int = 0
    connections: int = 0
    largest_tail_lost: int = 0  # messages, of one killed connection


def stream_files(data: Path, stream: str) -> list[Path]:
    return sorted(p for p in (data / stream).rglob(f"{stream}-*") if p.is_file())


def parts(data: Path) -> list[Path]:
    return [p for s in STREAMS for p in (data / s).rglob("*.part")]


def streaming_since(api: FakeAPI, started: float) -> bool:
    """Both streams have a connection opened after `started` that delivered something."""
    return all(
        any(r.opened > started and r.sent_count > 0 for r in api.log if r.endpoint == kind)
        for kind in ("filter", "sample")
    )


def check_registry(state: Path, churn: Churn) -> None:
    """Old or new, never torn: the file loads and holds an acknowledged or in-flight value."""
    registry = Registry.load(state, credentials={"alpha", "beta"})
    assert {"w1", "w2", "reg"} <= {s.name for s in registry.list()}
    allowed = {churn.acked} | ({churn.inflight} if churn.inflight else set())
    found = registry.get("reg").track[0]
    assert found in allowed, (found, allowed)
    assert json.loads((state / "streams.json").read_text())["version"] == 1
    # What the file holds now is the "old" of the next kill (an unanswered PATCH may have
    # been applied or not: both are right).
    churn.acked, churn.inflight = found, None


def check_disk_after_kill(
    data: Path, published: dict[str, str], manifests: dict[str, bytes], figures: Figures
) -> None:
    """With the daemon dead: everything published is whole, and nothing published changed."""
    for stream in STREAMS:
        path = data / stream / "manifest.jsonl"
        raw = path.read_bytes() if path.exists() else b""
        # Append-only: what the manifest said before is still its beginning.
        assert raw.startswith(manifests.get(stream, b"")), f"{stream}: manifest rewritten"
        manifests[stream] = raw
        entries = manifest(data, stream)  # every line parses: none torn
        for entry in entries:
            check_entry(data, entry)
            published[entry["file"]] = entry["sha256"]
        listed = {e["file"] for e in entries}
        for path in stream_files(data, stream):
            rel = path.relative_to(data).as_posix()
            if path.name.endswith(".part"):
                figures.parts_left += 1
                with contextlib.suppress(EOFError, OSError, zlib.error):
                    raw = path.read_bytes()
                    gzip.decompress(raw)  # a torn one raises: that is allowed
                    figures.parts_finished += bool(raw)
                continue
            figures.files_checked += 1
            if rel not in listed:  # renamed, manifest line not yet written
                figures.unlisted_finals += 1
                check_whole_file(path)
                published[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    for rel, sha in published.items():
        path = data / rel
        assert path.exists(), f"published {rel} vanished"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, f"published {rel} changed"


def check_messages(data: Path, stream: str, api: FakeAPI, figures: Figures) -> None:
    records = [r for r in api.log if r.endpoint == STREAMS[stream]["kind"]]
    counts = check_prefixes(data, stream, api, records)
    figures.messages_stored += sum(stored for stored, _ in counts.values())
    figures.messages_sent += sum(sent for _, sent in counts.values())
    figures.connections += len(records)
    figures.largest_tail_lost = max(
        figures.largest_tail_lost, *(sent - stored for stored, sent in counts.values())
    )
    # The last connection ended with a clean stop: all of it was stored. (Also proves that
    # the prefix checks were not passed by storing nothing.)
    stored, sent = counts[records[-1].conn]
    assert stored == sent >= LAST_RUN, (stream, stored, sent)


async def wait_until_received(ctl: Api, count: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        listed = (await ctl.ok("GET", "/streams"))["streams"]
        received = {s["name"]: s["status"]["messages"] for s in listed if s["name"] in STREAMS}
        if all(received.get(name) == count for name in STREAMS):
            return
        assert time.monotonic() < deadline, f"not all received: {received}"
        await asyncio.sleep(0.05)


async def kill_moment(moment: str, rng: random.Random, churn: Churn) -> None:
    """Wait until the kind of moment asked for; the kill follows at once."""
    if moment == "writing":
        await asyncio.sleep(rng.uniform(0.2, 0.8))
    elif moment == "publishing":
        boundary = math.ceil(time.time() + 0.1)  # the next UTC second: both streams publish
        await asyncio.sleep(boundary - time.time() + rng.uniform(0.0, 0.03))
    elif moment == "registry":
        churn.started.clear()
        await churn.started.wait()  # a PATCH has just gone out
        await asyncio.sleep(rng.uniform(0.0, 0.01))
    else:  # recovering: start-up publishes leftovers after the socket answers
        await asyncio.sleep(rng.uniform(0.0, 0.15))


async def test_sigkill_at_twenty_moments_loses_nothing_published(tmp_path: Path) -> None:
    api = FakeAPI(write_credentials(tmp_path), record_bytes=True,
                  keepalive_interval=0.25, message_size=600, rate=RATE)
    await api.start()
    config = write_daemon_config(tmp_path, api, save_interval=1)
    data, state = tmp_path / "data", tmp_path / "state"
    rng = random.Random(20)
    churn = Churn()
    figures = Figures()
    published: dict[str, str] = {}  # every file ever published -> its sha256
    manifests: dict[str, bytes] = {}
    leftovers: list[Path] = []  # the .part files the last kill left
    seen_temps: set[str] = set()
    proc = None
    try:
        for kill in range(KILLS + 1):
            moment = MOMENTS[kill % len(MOMENTS)]
            started, started_wall = time.monotonic(), time.time()
            if kill == KILLS:
                api.configure(total=LAST_RUN)  # a known amount, all of which must be stored
            proc = await start_daemon(tmp_path, config)
            churning: asyncio.Task[None] | None = None
            try:
                async with Api(tmp_path / "sfmd.sock") as ctl:
                    if kill == 0:
                        for body in (*STREAMS.values(), CHURNED):
                            await ctl.ok("POST", "/streams", body, status=201)
                    if moment != "recovering" or kill == KILLS:
                        # Streams connect only after start-up published the leftovers.
                        await wait_until(lambda s=started: streaming_since(api, s),
                                         timeout=20, what="both streams streaming again")
                        # Gone, or a new file that took a removed empty leftover's name.
                        stale = [p for p in leftovers
                                 if p.exists() and p.stat().st_ctime < started_wall]
                        assert not stale, f"leftovers not recovered: {stale}"
                    churning = asyncio.create_task(churn.run(ctl))
                    if kill == KILLS:  # the last start: a clean stop once all is received
                        await wait_until_received(ctl, LAST_RUN)
                        break
                    await kill_moment(moment, rng, churn)
                    proc.kill()  # SIGKILL
                    figures.kills[moment] += 1
            finally:
                if churning is not None:
                    churning.cancel()
                    await asyncio.gather(churning, return_exceptions=True)
                if kill < KILLS:
                    proc.kill()
            check_registry(state, churn)
            temps = {p.name for p in state.glob(".streams.json.*.tmp")}
            figures.registry_mid_write += bool(temps - seen_temps)
            seen_temps |= temps
            check_disk_after_kill(data, published, manifests, figures)
            leftovers = parts(data)

        assert proc is not None
        proc.signal(signal.SIGTERM)
        assert await proc.wait(10) == 0, proc.stderr
    finally:
        if proc is not None:
            proc.kill()
        await api.stop()

    check_registry(state, churn)
    check_disk_after_kill(data, published, manifests, figures)
    for stream in STREAMS:
        check_published(data, stream)  # no .part left, every file listed once and whole
        check_messages(data, stream, api, figures)
    figures.distinct_files = len(published)
    assert sum(figures.kills.values()) == KILLS
    assert "SECRET" not in log_text(tmp_path)
    print(f"crash figures: {figures}")
