"""One registry stream brought to life: its credential lock, its archive, its connection task.

The daemon keeps one StreamRunner per active task-isolated stream; `sfmd stream NAME` runs a
single one in the foreground. Start and stop are the only ways in, and stop always publishes
the open file and releases the credential, whatever state the connection was in.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from sfmd.archive import Archive, CountItems
from sfmd.config import Config, TimingConfig
from sfmd.credentials import Credential
from sfmd.locks import CredentialLock
from sfmd.logs import get_logger
from sfmd.registry.store import StreamSpec
from sfmd.sources.backoff import BackoffPolicy
from sfmd.sources.twitter.framing import count_tweets
from sfmd.sources.twitter.stream import Stream, StreamTarget, StreamTiming
from sfmd.sources.twitter.v2 import V2Stream, stream_params
from sfmd.sources.twitter.v2 import count_tweets as count_v2_tweets


def stream_timing(timing: TimingConfig) -> StreamTiming:
    return StreamTiming(
        stall_timeout=timing.stall_timeout,
        connect_timeout=timing.connect_timeout,
        backoff=BackoffPolicy(
            tcp_step=timing.tcp_backoff_step,
            tcp_max=timing.tcp_backoff_max,
            http_start=timing.http_backoff_start,
            http_max=timing.http_backoff_max,
            ratelimit_start=timing.ratelimit_backoff_start,
            ratelimit_max=timing.ratelimit_backoff_max,
        ),
    )


def lock_dir(config: Config) -> Path:
    return config.daemon.state_dir / "locks"


def new_session() -> aiohttp.ClientSession:
    """One session for many long-lived streams: no pool cap (FACTS.md: the default is 100)
    and no total timeout (the default would cut every stream after five minutes)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None),
    )


def status_path(state_dir: Path, name: str) -> Path:
    return state_dir / "status" / f"{name}.json"


def write_status_file(state_dir: Path, name: str, status: dict[str, Any]) -> None:
    """Where a process-isolated stream tells the daemon its counters (rename: never torn).

    No fsync: the file is a live view, rewritten every few seconds, worthless after a crash.
    """
    path = status_path(state_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**status, "pid": os.getpid()}))
    os.replace(tmp, path)


def read_status_file(state_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        value = json.loads(status_path(state_dir, name).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def new_archive(config: Config, name: str, log: Any = None, *, count: CountItems) -> Archive:
    """A stream's archive; `count` is how the stream counts tweets (see `Archive`)."""
    return Archive(
        config.daemon.data_dir,
        name,
        save_interval=config.daemon.save_interval,
        publish_spread=config.daemon.publish_spread,
        compress=config.daemon.compress,
        count=count,
        compress_level=config.daemon.compress_level,
        compress_window=config.daemon.compress_window,
        flush_interval=config.timing.flush_interval,
        log=log if log is not None else get_logger(stream=name),
    )


class StreamRunner:
    def __init__(
        self,
        spec: StreamSpec,
        credential: Credential,
        config: Config,
        session: aiohttp.ClientSession,
    ) -> None:
        self.spec = spec
        self.config = config
        self.log = get_logger(stream=spec.name)
        count = count_v2_tweets if spec.api == "v2" else count_tweets
        self.archive = new_archive(config, spec.name, self.log, count=count)
        self.stream: Stream
        if spec.api == "v2":  # the v2 sample stream: the app's one sample connection
            self.lock = CredentialLock(lock_dir(config), f"{credential.name}.v2-sample")
            self.stream = V2Stream(
                StreamTarget(spec.name, spec.endpoint, stream_params(config.twitter), credential),
                stream_url=config.twitter.api_url,
                session=session,
                sink=self.archive,
                timing=stream_timing(config.timing),
            )
        else:
            self.lock = CredentialLock(lock_dir(config), credential.name)
            self.stream = Stream(
                StreamTarget(spec.name, spec.endpoint, spec.wire_params(), credential),
                stream_url=config.twitter.stream_url,
                session=session,
                sink=self.archive,
                timing=stream_timing(config.timing),
                delimited=config.twitter.delimited,
            )

    async def start(self, delay: float = 0.0) -> None:
        """Take the credential (CredentialBusy if another stream has it), recover, connect."""
        self.lock.acquire(self.spec.name)
        try:
            await self.archive.open()
        except BaseException:
            self.lock.release()
            raise
        self.stream.start(delay)
        self.log.info("stream_started", endpoint=self.spec.endpoint)

    async def stop(self) -> None:
        """Close the connection, publish the open file, release the credential."""
        try:
            try:
                await self.stream.stop(grace=self.config.timing.shutdown_timeout / 2)
            finally:
                await self.archive.close()
        finally:
            self.lock.release()
        self.log.info("stream_stopped", messages=self.stream.status.messages)

    def can_retarget(self, spec: StreamSpec) -> bool:
        """A new filter on the same credential needs a new connection, not a new archive."""
        return spec.credential == self.spec.credential and spec.endpoint == self.spec.endpoint

    async def retarget(self, spec: StreamSpec) -> None:
        """Reconnect with `spec`'s parameters; the open file and the credential lock stay."""
        credential = self.stream.target.credential
        target = StreamTarget(spec.name, spec.endpoint, spec.wire_params(), credential)
        await self.stream.retarget(target, grace=self.config.timing.shutdown_timeout / 2)
        self.spec = spec

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self.stream.task

    def status_dict(self) -> dict[str, Any]:
        return self.stream.status_dict()
