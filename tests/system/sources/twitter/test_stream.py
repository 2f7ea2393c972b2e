"""End to end: the real `sfmd stream` process against the fake API on a loopback socket.

Every check compares what the API says it fully sent with what was published.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sfmd.credentials import Credential
from sfmd.fake import FakeAPI
from sfmd.sources.backoff import BackoffPolicy
from sfmd.sources.twitter.stream import Stream, StreamTarget, StreamTiming
from sfmd.sources.twitter.v1 import V1
from tests.helpers.config import FAST_TIMING, register, write_config
from tests.helpers.daemon import SfmdProcess, stop
from tests.helpers.fakeapi import sent_messages
from tests.helpers.files import manifest, messages_on_disk, read_published, stored_messages
from tests.helpers.servers import serving
from tests.helpers.waits import wait_until

FILTER = {
    "name": "f1",
    "kind": "filter",
    "track": ["archive", "public library"],
    "follow": ["12", "783214"],
    "locations": [[-74.25, 40.5, -73.75, 40.9]],
    "language": ["en"],
    "credential": "alpha",
}


def start_stream(tmp_path: Path, name: str, config: Path) -> SfmdProcess:
    return SfmdProcess("stream", name, "--config", str(config), cwd=tmp_path)


def start_filter(
    tmp_path: Path, api: FakeAPI, credentials: dict[str, Credential], **config: Any
) -> tuple[Path, SfmdProcess]:
    """The FILTER stream, registered and running as `sfmd stream f1` against `api`."""
    path = write_config(tmp_path, api.stream_url, **config)
    register(tmp_path, credentials, **FILTER)
    return path, start_stream(tmp_path, "f1", path)


def is_tweet_json(line: bytes) -> bool:
    try:
        value = json.loads(line)
    except ValueError:
        return False
    return isinstance(value, dict) and "text" in value and "user" in value


def check_manifest(data_dir: Path, name: str) -> list[dict[str, Any]]:
    """Every manifest line matches its file: counts, bytes, sha256; no .part is left."""
    entries = manifest(data_dir, name)
    for entry in entries:
        stored = (data_dir / entry["file"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == entry["sha256"]
        body = read_published(data_dir, entry)
        lines = body.split(b"\n")[:-1]
        assert len(lines) == entry["messages"]
        assert len(body) == entry["bytes"]
        assert entry["tweets"] == sum(1 for line in lines if is_tweet_json(line))
    assert not list((data_dir / name).rglob("*.part"))
    return entries


async def test_filter_stream_stores_every_message_sent_byte_exact(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    fake_api.configure(total=300, delete_every=7, limit_every=50)
    _, proc = start_filter(tmp_path, fake_api, credentials)
    try:
        await wait_until(lambda: messages_on_disk(tmp_path / "data", "f1") == 300,
                         what="300 messages on disk")
        await stop(proc)
    finally:
        proc.kill()

    (record,) = fake_api.log
    assert record.auth_ok and record.credential == "alpha"
    assert record.method == "POST" and record.endpoint == "filter"
    assert record.params == {
        "track": "archive,public library",
        "follow": "12,783214",
        "locations": "-74.25,40.5,-73.75,40.9",
        "language": "en",
        "stall_warnings": "true",
    }
    data = tmp_path / "data"
    assert stored_messages(data, "f1") == sent_messages(fake_api)
    (entry,) = check_manifest(data, "f1")
    assert entry["file"].startswith("f1/") and entry["file"].endswith(".jsonl.gz")
    assert entry["messages"] == 300

    log_lines = [json.loads(line) for line in (tmp_path / "log" / "stream-f1.log").open()]
    events = {line["event"] for line in log_lines}
    assert {"connecting", "connected", "published", "shutdown"} <= events
    assert all({"timestamp", "level", "event"} <= line.keys() for line in log_lines)
    assert all(line.get("stream") == "f1" for line in log_lines if line["event"] == "connected")
    everything = (tmp_path / "log" / "stream-f1.log").read_text() + proc.stderr
    assert "SECRET" not in everything


async def test_sample_stream_plain_files_with_length_framing(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    fake_api.configure(total=120)
    config = write_config(tmp_path, fake_api.stream_url, compress=False,
                          twitter={"delimited": True})
    register(tmp_path, credentials, name="s1", kind="sample", credential="beta")
    proc = start_stream(tmp_path, "s1", config)
    try:
        await wait_until(lambda: messages_on_disk(tmp_path / "data", "s1") == 120)
        await stop(proc)
    finally:
        proc.kill()
    (record,) = fake_api.log
    assert record.method == "GET" and record.endpoint == "sample"
    assert record.params == {"stall_warnings": "true", "delimited": "length"}
    data = tmp_path / "data"
    assert stored_messages(data, "s1") == sent_messages(fake_api)
    (entry,) = check_manifest(data, "s1")
    assert entry["file"].endswith(".jsonl")


@pytest.mark.parametrize("compress", [True, False])
async def test_files_rotate_on_the_clock_while_flowing_and_while_quiet(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential], compress: bool
) -> None:
    fake_api.configure(total=200, rate=100)  # two seconds of data, then only keep-alives
    _, proc = start_filter(tmp_path, fake_api, credentials, save_interval=1, compress=compress)
    data = tmp_path / "data"
    try:
        # Every message is published by the clock alone: no stop, no further data needed.
        await wait_until(
            lambda: sum(e["messages"] for e in manifest(data, "f1")) == 200
            and fake_api.log[-1].sent_count == 200,
            timeout=15, what="all 200 messages published while the stream is quiet",
        )
        assert not list(data.rglob("*.part"))
        published = len(manifest(data, "f1"))
        await stop(proc)
    finally:
        proc.kill()
    entries = check_manifest(data, "f1")
    assert len(entries) == published >= 2  # a quiet interval adds no file, even at stop
    assert stored_messages(data, "f1") == sent_messages(fake_api)
    for entry in entries:
        stamp = Path(entry["file"]).name.split("-")[1].split(".")[0]
        assert entry["start"].replace("-", "").replace(":", "").startswith(stamp[:15])
    names = [Path(e["file"]).name for e in entries]
    assert len(set(names)) == len(names)


# fault, expected wait before the next connection, what the first connection sends
FAULTS: list[tuple[str, dict[str, Any], float]] = [
    ("http_503", {"status": 503}, FAST_TIMING["http_backoff_start"]),
    ("http_401", {"status": 401}, FAST_TIMING["http_backoff_start"]),
    ("http_406", {"status": 406}, FAST_TIMING["http_backoff_start"]),
    ("http_420", {"status": 420}, FAST_TIMING["ratelimit_backoff_start"]),
    ("http_429", {"status": 429}, FAST_TIMING["ratelimit_backoff_start"]),
    ("cut_mid_message", {"cut_after": 40}, FAST_TIMING["tcp_backoff_step"]),
    ("stall", {"stall_after": 40}, FAST_TIMING["tcp_backoff_step"]),
    ("disconnect_10", {"disconnect_after": 40, "code": 10}, FAST_TIMING["tcp_backoff_step"]),
    ("disconnect_7", {"disconnect_after": 40, "code": 7}, FAST_TIMING["http_backoff_start"]),
]


@pytest.mark.parametrize(("fault", "wait"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
async def test_fault_is_survived_with_the_right_wait_and_nothing_lost(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential],
    fault: dict[str, Any], wait: float,
) -> None:
    fake_api.configure(total=100)
    fake_api.script(fault)
    _, proc = start_filter(tmp_path, fake_api, credentials)
    try:
        await wait_until(
            lambda: len(fake_api.log) >= 2 and fake_api.log[1].sent_count == 100
            and messages_on_disk(tmp_path / "data", "f1") == len(sent_messages(fake_api)),
            timeout=15, what="a second connection that delivered everything",
        )
        await stop(proc)
    finally:
        proc.kill()
    first, second = fake_api.log[:2]
    assert len(fake_api.log) == 2, [r.close_reason for r in fake_api.log]
    assert first.closed is not None
    gap = second.opened - first.closed
    assert wait - 0.05 <= gap <= wait + 1.0, (gap, wait)
    if "stall_after" in fault:
        # The client noticed the silence after stall_timeout (the 40 messages go at once).
        assert first.first_byte is not None
        stalled = first.closed - first.first_byte
        assert FAST_TIMING["stall_timeout"] - 0.05 <= stalled <= FAST_TIMING["stall_timeout"] + 1
    if "cut_after" in fault:
        assert first.partial_seq is not None  # half a message really was sent, and dropped
    data = tmp_path / "data"
    assert stored_messages(data, "f1") == sent_messages(fake_api)
    check_manifest(data, "f1")
    log_text = (tmp_path / "log" / "stream-f1.log").read_text()
    # One line tells the disconnect, its reason and the backoff wait.
    disconnect = next(e for e in map(json.loads, log_text.splitlines())
                      if e["event"] == "disconnected")
    assert disconnect["wait"] == wait and disconnect["state"] == "backoff"
    if "code" in fault:
        assert f'"code": {fault["code"]}' in log_text


@pytest.mark.parametrize(
    "fault", [{"oversized_after": 20, "size": 700_000}, {"malformed_after": 20}],
    ids=["oversized_700KB", "malformed_line"],
)
async def test_odd_messages_are_stored_without_reconnecting(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential], fault: dict[str, Any]
) -> None:
    fake_api.configure(total=60)
    fake_api.script(fault)
    _, proc = start_filter(tmp_path, fake_api, credentials)
    try:
        await wait_until(
            lambda: fake_api.log and fake_api.log[0].sent_count == 60
            and messages_on_disk(tmp_path / "data", "f1") == 60,
            what="60 messages, the odd one among them, on disk",
        )
        await stop(proc)
    finally:
        proc.kill()
    assert len(fake_api.log) == 1
    data = tmp_path / "data"
    stored = stored_messages(data, "f1")
    assert stored == sent_messages(fake_api)
    assert len(stored) == 60
    if "size" in fault:
        assert max(len(m) for m in stored) >= 700_000


async def test_sigkill_then_restart_recovers_and_resumes(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    fake_api.configure(rate=2000)
    config, proc = start_filter(tmp_path, fake_api, credentials)
    data = tmp_path / "data"
    try:
        await wait_until(lambda: fake_api.log and fake_api.log[0].sent_count > 2000)
        await wait_until(lambda: any(p.stat().st_size > 0 for p in data.rglob("*.part")))
        proc.kill()  # SIGKILL: no chance to publish
    finally:
        proc.kill()
    assert list(data.rglob("*.part")) and not manifest(data, "f1")
    fake_api.configure(total=1000, rate=0)  # for the next connection: a known amount

    proc = start_stream(tmp_path, "f1", config)
    try:
        await wait_until(lambda: len(manifest(data, "f1")) == 1, what="the leftover published")
        recovered_count = manifest(data, "f1")[0]["messages"]
        await wait_until(
            lambda: len(fake_api.log) == 2 and fake_api.log[1].sent_count == 1000
            and messages_on_disk(data, "f1") == recovered_count + 1000,
            what="the resumed connection's 1000 messages on disk",
        )
        await stop(proc)
    finally:
        proc.kill()

    entries = check_manifest(data, "f1")
    assert len(entries) == 2
    assert entries[0]["file"] != entries[1]["file"]
    killed = fake_api.sent_messages(0)
    recovered = read_published(data, entries[0]).split(b"\n")[:-1]
    # Up to flush_interval of buffered data may die with the process; what survived is an
    # exact prefix of what was sent: no torn line, no gap, nothing reordered.
    assert 0 < len(recovered) <= len(killed)
    assert recovered == killed[: len(recovered)]
    resumed = read_published(data, entries[1]).split(b"\n")[:-1]
    assert resumed == fake_api.sent_messages(1)
    for entry in entries:
        gzip.decompress((data / entry["file"]).read_bytes())  # valid gzip, each one


async def test_sighup_reopens_the_log_after_logrotate_renames_it(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    _, proc = start_filter(tmp_path, fake_api, credentials)
    log = tmp_path / "log" / "stream-f1.log"
    try:
        await wait_until(lambda: log.exists() and '"connected"' in log.read_text())
        log.rename(log.with_suffix(".log.1"))
        proc.signal(signal.SIGHUP)
        await wait_until(lambda: log.exists() and "logs_reopened" in log.read_text(),
                         what="a new log file after SIGHUP")
        await stop(proc)
    finally:
        proc.kill()
    assert '"shutdown"' in log.read_text()
    assert '"shutdown"' not in log.with_suffix(".log.1").read_text()


async def test_a_second_process_on_the_same_credential_is_refused(
    tmp_path: Path, fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    config = write_config(tmp_path, fake_api.stream_url)
    register(tmp_path, credentials, **FILTER)
    register(tmp_path, credentials, name="s2", kind="sample", credential="alpha")
    first = start_stream(tmp_path, "f1", config)
    try:
        await wait_until(lambda: len(fake_api.log) == 1)
        second = start_stream(tmp_path, "s2", config)
        assert await second.wait(10) == 1
        assert "credential 'alpha' is in use by stream 'f1'" in second.stderr
        assert "SECRET" not in second.stderr
        await stop(first)
    finally:
        first.kill()
    assert len(fake_api.log) == 1


async def test_startup_errors_are_plain_sentences(tmp_path: Path, credentials_file: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/1.1")
    proc = SfmdProcess("stream", "nope", "--config", str(config), cwd=tmp_path)
    assert await proc.wait(10) == 1
    assert "no stream named 'nope'" in proc.stderr
    credentials_file.chmod(0o644)
    proc = SfmdProcess("stream", "nope", "--config", str(config), cwd=tmp_path)
    assert await proc.wait(10) == 1
    assert "chmod 600" in proc.stderr and "Traceback" not in proc.stderr


class _ListSink:
    """Keeps what the stream hands over, in memory: this test is about the connection."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.current_file = None
        self.error = None

    async def write(self, messages: list[bytes], tweets: int) -> None:
        self.messages.extend(messages)

    def streaming(self) -> None:
        pass

    def not_streaming(self, reason: str, error: str | None = None) -> None:
        pass

    def asking(self, what: dict[str, Any]) -> None:
        pass


async def start_and_stop(api: FakeAPI, credentials: dict[str, Credential], times: int) -> None:
    """A sample stream started, and stopped mid-read once it has stored a message, `times`
    times over."""
    sink = _ListSink()
    target = StreamTarget("mem", "sample", {}, credentials["alpha"])
    async with aiohttp.ClientSession() as session:
        stream = Stream(target, V1(api.stream_url), session=session, sink=sink)
        for _ in range(times):
            seen = len(sink.messages)
            stream.start()
            await wait_until(lambda seen=seen: len(sink.messages) > seen, timeout=10)
            await stream.stop()


async def test_a_stopped_connection_leaves_nothing_alive(
    fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    """Each filter change stops a connection mid-read. aiohttp hands the reader one shared
    "Connection closed" exception, and raising it again and again chained every stopped
    connection (response, parser, buffers: 10-20 KB) to that module-level object: the soak's
    slow RSS climb. Here, 15 stops must leave no response behind."""
    await start_and_stop(fake_api, credentials, 15)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientResponse)]
    assert alive == []


async def test_a_stopped_connection_is_freed_without_the_collector(
    fake_api: FakeAPI, credentials: dict[str, Credential]
) -> None:
    """The exception that ends a read holds its frames in its traceback, they hold the
    response, and the response's reader holds the exception: a cycle that waits for a
    collection, the hourly one if it was frozen (see Heap). With the tracebacks let go,
    reference counting alone frees each stopped connection."""
    gc.collect()
    gc.disable()
    try:
        await start_and_stop(fake_api, credentials, 5)
        alive = [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientResponse)]
    finally:
        gc.enable()
    assert alive == []


async def test_a_server_that_never_answers_is_a_stall(credentials: dict[str, Credential]) -> None:
    """The stall timeout also bounds the wait for the answer's headers: a server that takes
    the request and says nothing is left and asked again."""
    requests = 0
    never = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", silent)
    sink = _ListSink()
    timing = StreamTiming(stall_timeout=0.3, connect_timeout=0.2,
                          backoff=BackoffPolicy(tcp_step=0.05, tcp_max=0.05))
    async with serving(app) as url:
        try:
            async with aiohttp.ClientSession() as session:
                stream = Stream(StreamTarget("quiet", "sample", {}, credentials["alpha"]),
                                V1(f"{url}/1.1"), session=session, sink=sink, timing=timing)
                stream.start()
                await wait_until(lambda: requests >= 2, timeout=10, what="a second request")
                assert stream.status.last_error is not None
                assert "stall" in stream.status.last_error
                await stream.stop()
        finally:
            never.set()
