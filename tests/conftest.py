"""Shared fixtures: credentials, a fake API on a real loopback socket, configs, waits.

Nothing here sleeps to synchronise: `wait_until` polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfmd.credentials import Credential, load_credentials
from sfmd.fake import FakeAPI
from sfmd.registry import Registry, validate_stream

CREDENTIALS_TOML = """
[alpha]
consumer_key = "ck-alpha-SECRET"
consumer_secret = "cs-alpha-SECRET"
access_token = "at-alpha-SECRET"
access_token_secret = "ats-alpha-SECRET"
bearer_token = "bt-alpha-SECRET"

[beta]
consumer_key = "ck-beta-SECRET"
consumer_secret = "cs-beta-SECRET"
access_token = "at-beta-SECRET"
access_token_secret = "ats-beta-SECRET"
bearer_token = "bt-beta-SECRET"
"""

# Short versions of Twitter's timings, so fault tests run in seconds.
FAST_TIMING = {
    "stall_timeout": 1.0,
    "tcp_backoff_step": 0.2,
    "tcp_backoff_max": 1.0,
    "http_backoff_start": 0.4,
    "http_backoff_max": 1.6,
    "ratelimit_backoff_start": 0.8,
    "ratelimit_backoff_max": 3.2,
    "connect_timeout": 2.0,
    "flush_interval": 0.2,
}


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll `predicate` until it holds; fail with `what` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def credentials_file(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(CREDENTIALS_TOML)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def credentials(credentials_file: Path) -> dict[str, Credential]:
    return load_credentials(credentials_file)


@pytest.fixture
async def fake_api(credentials: dict[str, Credential]) -> AsyncIterator[FakeAPI]:
    api = FakeAPI(credentials, record_bytes=True, keepalive_interval=0.25, message_size=600)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def write_config(
    tmp_path: Path,
    stream_url: str,
    *,
    save_interval: int = 60,
    compress: bool = True,
    timing: dict[str, float] | None = None,
    twitter: dict[str, Any] | None = None,
) -> Path:
    """An sfmd.toml under tmp_path with short timings; paths relative to it, as allowed."""
    lines = [
        "[daemon]",
        'data_dir = "data"',
        'state_dir = "state"',
        'log_dir = "log"',
        'control_socket = "sfmd.sock"',
        f"save_interval = {save_interval}",
        f"compress = {'true' if compress else 'false'}",
        "[twitter]",
        f'stream_url = "{stream_url}"',
        'credentials_file = "credentials.toml"',
        'default_credential = "alpha"',
    ]
    for key, value in (twitter or {}).items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines.append("[timing]")
    for key, value in {**FAST_TIMING, **(timing or {})}.items():
        lines.append(f"{key} = {value}")
    path = tmp_path / "sfmd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def register(tmp_path: Path, credentials: dict[str, Credential], **body: Any) -> None:
    registry = Registry.load(tmp_path / "state", credentials=credentials.keys())
    registry.add(validate_stream(body, credentials=credentials.keys()))


def manifest(data_dir: Path, name: str) -> list[dict[str, Any]]:
    path = data_dir / name / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def read_published(data_dir: Path, entry: dict[str, Any]) -> bytes:
    raw = (data_dir / entry["file"]).read_bytes()
    return gzip.decompress(raw) if entry["file"].endswith(".gz") else raw


def stored_messages(data_dir: Path, name: str) -> list[bytes]:
    """Every message in the stream's published files, in manifest (publish) order."""
    out: list[bytes] = []
    for entry in manifest(data_dir, name):
        body = read_published(data_dir, entry)
        assert body.endswith(b"\n") or not body, f"{entry['file']} does not end in a newline"
        out += body.split(b"\n")[:-1]
    return out


def messages_on_disk(data_dir: Path, name: str) -> int:
    """Complete lines in published and open (.part) files: what a stop can no longer lose."""
    total = 0
    for path in (data_dir / name).rglob(f"{name}-*.jsonl*"):  # not manifest.jsonl
        raw = path.read_bytes()
        if ".gz" in path.name:
            raw = zlib.decompressobj(wbits=31).decompress(raw)  # a sync-flushed prefix
        total += raw.count(b"\n")
    return total


def sent_messages(api: FakeAPI) -> list[bytes]:
    """Everything the fake API fully sent on stream connections, in connection order."""
    out: list[bytes] = []
    for record in api.log:
        if record.endpoint in ("filter", "sample"):
            out += api.sent_messages(record.conn)
    return out


class SfmdProcess:
    """`sfmd ...` as a real child process, with its stderr kept for failure messages."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.stderr_path = cwd / f"stderr-{time.monotonic_ns()}.txt"
        self._stderr = open(self.stderr_path, "wb")  # closed in wait() or kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sfmd", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"sfmd did not exit within {timeout} s")
            await asyncio.sleep(0.02)
        self._stderr.close()
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


class Api:
    """A client for the control socket: real HTTP over the real Unix socket."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket_path))
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> tuple[int, Any]:
        assert self._session is not None
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": content_type} if content_type and data is not None else {}
        async with self._session.request(
            method, f"http://sfmd{path}", data=data, headers=headers
        ) as resp:
            text = await resp.read()
            if resp.content_type == "application/json" and text:
                return resp.status, json.loads(text)
            return resp.status, text.decode()

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer = await self.call(method, path, body)
        assert got == status, (method, path, got, answer)
        return answer


def write_daemon_config(tmp_path: Path, fake_api: FakeAPI, **kwargs: Any) -> Path:
    """A daemon config against the fake API: REST calls go to it too, no start-up jitter."""
    twitter = {
        "rest_url": fake_api.stream_url, "api_url": fake_api.api_url, **kwargs.pop("twitter", {})
    }
    timing = {"start_jitter": 0, "reconcile_interval": 1, **kwargs.pop("timing", {})}
    return write_config(tmp_path, fake_api.stream_url, twitter=twitter, timing=timing, **kwargs)


async def start_daemon(tmp_path: Path, config: Path) -> SfmdProcess:
    """`sfmd run` as a child process, returned once its socket answers /health."""
    proc = SfmdProcess("run", "--config", str(config), cwd=tmp_path)
    socket_path = tmp_path / "sfmd.sock"
    deadline = time.monotonic() + 15
    while True:
        if proc.proc.poll() is not None:
            raise AssertionError(f"sfmd run exited early: {proc.stderr}")
        if socket_path.exists():
            try:
                async with Api(socket_path) as api:
                    status, _ = await api.call("GET", "/health")
                if status == 200:
                    return proc
            except aiohttp.ClientError:
                pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("sfmd run did not answer on its socket within 15 s")
        await asyncio.sleep(0.05)
