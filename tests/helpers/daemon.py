"""`sfmd` as a real child process: started, waited for, stopped the way production stops it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from sfmd.config import Config
from sfmd.control.server import ControlServer
from sfmd.daemon.app import Daemon
from sfmd.fake import FakeAPI
from sfmd.logs import setup_logging
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.waits import wait_until


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


async def stop(proc: SfmdProcess, timeout: float = 10.0) -> None:
    """SIGTERM, as systemd and supervisord stop sfmd: it must exit 0 within `timeout` s."""
    proc.signal(signal.SIGTERM)
    assert await proc.wait(timeout) == 0, proc.stderr[-3000:]


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


class Teardown(enum.Enum):
    """What `running_daemon` checks when its test is done; every way ends with a kill."""

    #: Only kill: the test stops the daemon itself when stopping is what it checks.
    KILL = "kill"
    #: If the daemon still runs, even after a failed test, it must stop cleanly.
    STOP_IF_RUNNING = "stop_if_running"
    #: After a passing test the daemon must still run, and then stop cleanly.
    MUST_STOP = "must_stop"


@contextlib.asynccontextmanager
async def running_daemon(
    tmp_path: Path, fake_api: FakeAPI, teardown: Teardown, *, stop_timeout: float = 10.0
) -> AsyncIterator[SfmdProcess]:
    """`sfmd run` against the fake API with `write_daemon_config`'s defaults, for a test."""
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, fake_api))
    try:
        yield proc
        if teardown is Teardown.MUST_STOP:
            assert proc.proc.poll() is None, f"sfmd died: {proc.stderr[-3000:]}"
            await stop(proc, stop_timeout)
    finally:
        try:
            if teardown is Teardown.STOP_IF_RUNNING and proc.proc.poll() is None:
                await stop(proc, stop_timeout)
        finally:
            proc.kill()


@contextlib.asynccontextmanager
async def daemon_in_process(config: Config, log: Path) -> AsyncIterator[Daemon]:
    """`sfmd run`'s daemon in the test's own event loop (so a test may patch what it runs or
    read its state), serving its control socket and logging to `log`; stopped as SIGTERM
    stops it, and the log file let go of, when the block ends. The collector's settings the
    daemon changes (`Heap`) are put back too: they are the test process's own."""
    setup_logging(log, stderr=False)
    thresholds = gc.get_threshold()
    daemon = Daemon(config)
    control = ControlServer(daemon, config.daemon.control_socket, config.daemon.socket_mode)
    serving = asyncio.create_task(daemon.serve(control))
    try:
        await wait_until(lambda: config.daemon.control_socket.exists())
        yield daemon
    finally:
        daemon.request_stop()
        try:
            await asyncio.wait_for(serving, 10)
        finally:
            setup_logging(None, stderr=False)
            gc.unfreeze()
            gc.set_threshold(*thresholds)
