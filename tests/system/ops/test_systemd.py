"""sd_notify against a real AF_UNIX datagram socket standing in for systemd, from this
process and from `sfmd run`; and the shipped unit file through systemd-analyze.

The receiver runs in its own thread and stamps each datagram on arrival, so the tests can
tell when the daemon's event loop sent something even while that loop is blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from sfmd.credentials import Credential
from sfmd.fake import FakeAPI
from sfmd.ops.systemd import Notifier, watchdog_loop
from sfmd.status import describe_states
from tests.helpers.api import Api
from tests.helpers.config import register, write_daemon_config
from tests.helpers.daemon import SfmdProcess
from tests.helpers.paths import REPO
from tests.helpers.waits import wait_until

PING_USEC = 200_000  # WATCHDOG_USEC: pings every 0.1 s


class FakeSystemd:
    """systemd's notify socket: a bound datagram socket that records what arrives, and when."""

    def __init__(self, env_value: str) -> None:
        self.env_value = env_value  # what NOTIFY_SOCKET holds
        address = "\0" + env_value[1:] if env_value.startswith("@") else env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def messages(self) -> list[str]:
        return [text for _, text in list(self.received)]

    def with_field(self, field: str) -> list[tuple[float, str]]:
        """(arrival, datagram) for every datagram holding the line `field` (or KEY=... prefix)."""
        return [
            (at, text)
            for at, text in list(self.received)
            if any(
                line == field or (field.endswith("=") and line.startswith(field))
                for line in text.split("\n")
            )
        ]


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A folder with a short path: a socket path must fit in 107 bytes, pytest's may not."""
    path = Path(tempfile.mkdtemp(prefix="sfmd-n-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest) -> Iterator[FakeSystemd]:
    if request.param == "abstract":
        fake = FakeSystemd(f"@sfmd-test-{uuid.uuid4().hex}")
        try:
            yield fake
        finally:
            fake.close()
        return
    with short_dir() as folder:
        fake = FakeSystemd(str(folder / "notify"))
        try:
            yield fake
        finally:
            fake.close()


@pytest.fixture
async def notifier(systemd: FakeSystemd) -> AsyncIterator[Notifier]:
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": str(PING_USEC)})
    try:
        yield n
    finally:
        n.close()


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# -- environment -------------------------------------------------------------------------


# -- messages ----------------------------------------------------------------------------


async def test_ready_status_stopping_arrive_as_single_datagrams(
    systemd: FakeSystemd, notifier: Notifier
) -> None:
    assert notifier.ready("1 stream: 1 streaming")
    assert notifier.status("2 streams: 2 streaming")
    assert notifier.stopping("stopping 2 streams")
    assert notifier.watchdog()
    await wait_until(lambda: len(systemd.messages()) == 4, 5, "four datagrams")
    assert systemd.messages() == [
        "READY=1\nSTATUS=1 stream: 1 streaming",
        "STATUS=2 streams: 2 streaming",
        "STOPPING=1\nSTATUS=stopping 2 streams",
        "WATCHDOG=1",
    ]


async def test_a_newline_in_status_cannot_smuggle_a_field(
    systemd: FakeSystemd, notifier: Notifier
) -> None:
    notifier.status("bad\nREADY=1")
    await wait_until(lambda: len(systemd.messages()) == 1, 5, "one datagram")
    assert systemd.messages() == ["STATUS=bad READY=1"]


async def test_send_errors_are_swallowed_and_logged_once() -> None:
    with short_dir() as folder:
        path = folder / "notify"
        n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
        with structlog.testing.capture_logs() as logs:
            results = [n.ready("up"), n.watchdog(), n.status("x")]
        assert results == [False, False, False]
        assert [e["event"] for e in logs] == ["notify_failed"]
        assert logs[0]["log_level"] == "warning"
        assert logs[0]["socket"] == str(path)

        fake = FakeSystemd(str(path))  # systemd is back: sends work again, once noted
        try:
            with structlog.testing.capture_logs() as logs:
                assert n.watchdog()
            assert [e["event"] for e in logs] == ["notify_recovered"]
            await wait_until(lambda: fake.messages() == ["WATCHDOG=1"], 5, "the ping")
        finally:
            fake.close()
            n.close()


# -- the watchdog loop -------------------------------------------------------------------


async def test_watchdog_pings_at_half_the_timeout_and_carry_the_status(
    systemd: FakeSystemd, notifier: Notifier
) -> None:
    states = ["streaming", "streaming", "backoff"]
    task = asyncio.create_task(watchdog_loop(notifier, lambda: describe_states(states)))
    try:
        await wait_until(lambda: len(systemd.with_field("WATCHDOG=1")) >= 3, 5, "three pings")
        states.append("streaming")
        await wait_until(lambda: len(systemd.with_field("WATCHDOG=1")) >= 13, 5, "13 pings")
    finally:
        await cancel(task)
    pings = systemd.with_field("WATCHDOG=1")
    window = pings[12][0] - pings[2][0]  # ten intervals, measured on arrival
    assert 0.85 <= window <= 1.3, f"10 pings took {window:.3f} s, expected about 1.0 s"
    assert all(len(text.split("\n")) == 2 for _, text in pings)
    assert "STATUS=3 streams: 2 streaming, 1 backoff" in pings[0][1]
    assert "STATUS=4 streams: 3 streaming, 1 backoff" in pings[-1][1]


async def test_a_hung_event_loop_stops_the_pings(systemd: FakeSystemd, notifier: Notifier) -> None:
    task = asyncio.create_task(watchdog_loop(notifier, lambda: "ok"))
    try:
        await wait_until(lambda: len(systemd.with_field("WATCHDOG=1")) >= 2, 5, "two pings")
        hang_start = time.monotonic()
        # The fault under test, not a synchronisation: something blocks the event loop.
        time.sleep(0.5)  # noqa: ASYNC251
        hang_end = time.monotonic()
        await wait_until(
            lambda: any(at > hang_end for at, _ in systemd.with_field("WATCHDOG=1")),
            5,
            "a ping after the hang",
        )
    finally:
        await cancel(task)
    during = [at for at, _ in systemd.with_field("WATCHDOG=1") if hang_start + 0.05 < at < hang_end]
    assert during == [], "pings kept coming while the loop was blocked"


async def test_without_a_watchdog_only_the_status_is_refreshed(systemd: FakeSystemd) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value})
    task = asyncio.create_task(watchdog_loop(n, lambda: "fine", refresh=0.05))
    try:
        await wait_until(lambda: len(systemd.messages()) >= 3, 5, "three status updates")
    finally:
        await cancel(task)
        n.close()
    assert set(systemd.messages()) == {"STATUS=fine"}


async def test_a_failing_status_function_does_not_stop_the_pings(
    systemd: FakeSystemd, notifier: Notifier
) -> None:
    def broken() -> str:
        raise KeyError("boom")

    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(watchdog_loop(notifier, broken))
        try:
            await wait_until(lambda: len(systemd.with_field("WATCHDOG=1")) >= 3, 5, "pings")
        finally:
            await cancel(task)
    assert set(systemd.messages()) == {"WATCHDOG=1"}
    assert [e["event"] for e in logs] == ["notify_status_failed"]


# -- the real daemon ---------------------------------------------------------------------


async def test_sfmd_run_tells_systemd_ready_watchdog_and_stopping(
    tmp_path: Path,
    fake_api: FakeAPI,
    credentials: dict[str, Credential],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeSystemd(f"@sfmd-test-{uuid.uuid4().hex}")
    monkeypatch.setenv("NOTIFY_SOCKET", fake.env_value)  # the child inherits os.environ
    monkeypatch.setenv("WATCHDOG_USEC", str(PING_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = write_daemon_config(tmp_path, fake_api)
    register(tmp_path, credentials, name="s1", kind="filter", track=["cats"], credential="alpha")
    socket_path = tmp_path / "sfmd.sock"
    proc = SfmdProcess("run", "--config", str(config), cwd=tmp_path)
    try:
        # READY=1 must come, and only once the control socket answers; polling /health meanwhile
        # bounds the wait (a daemon that never says READY fails in seconds, not at a timeout).
        answered_at: float | None = None
        while not fake.with_field("READY=1"):
            assert proc.proc.poll() is None, f"sfmd run exited early: {proc.stderr}"
            if answered_at is None:
                with contextlib.suppress(aiohttp.ClientError, FileNotFoundError):
                    async with Api(socket_path) as api:
                        if (await api.call("GET", "/health"))[0] == 200:
                            answered_at = time.monotonic()
            elif time.monotonic() - answered_at > 3:
                raise AssertionError("no READY=1 within 3 s of the socket answering")
            await asyncio.sleep(0.02)
        async with Api(socket_path) as api:
            await api.ok("GET", "/health")  # READY=1 promised this: no retry

        ready_at = fake.with_field("READY=1")[0][0]
        await wait_until(
            lambda: len([at for at, _ in fake.with_field("WATCHDOG=1") if at > ready_at]) >= 11,
            5,
            "ten watchdog intervals",
        )
        pings = [at for at, _ in fake.with_field("WATCHDOG=1") if at > ready_at]
        window = pings[10] - pings[0]
        assert 0.8 <= window <= 1.5, f"10 ping intervals took {window:.3f} s, expected ~1.0 s"
        await wait_until(
            lambda: any("1 stream: 1 streaming" in text for _, text in fake.with_field("STATUS=")),
            5,
            "a status line showing the stream streaming",
        )

        # `systemctl reload` (SIGHUP): RELOADING=1, then READY=1 once the reload is done.
        proc.signal(signal.SIGHUP)
        await wait_until(lambda: len(fake.with_field("READY=1")) == 2, 5, "READY=1 again")
        reloading = fake.with_field("RELOADING=1")
        assert len(reloading) == 1 and "MONOTONIC_USEC=" in reloading[0][1]
        assert ready_at < reloading[0][0] <= fake.with_field("READY=1")[1][0]

        proc.signal(signal.SIGTERM)
        assert await proc.wait(10) == 0, proc.stderr
        assert len(fake.with_field("STOPPING=1")) == 1
        assert fake.with_field("STOPPING=1")[0][0] > ready_at
        assert len(fake.with_field("READY=1")) == 2
    finally:
        proc.kill()
        fake.close()


# -- the unit file -----------------------------------------------------------------------

UNIT = REPO / "systemd" / "sfmd.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's sfmd, nothing else changes.
    sfmd = shutil.which("sfmd", path=str(Path(sys.executable).parent)) or shutil.which("sfmd")
    assert sfmd, "the sfmd console script is not installed"
    unit = tmp_path / "sfmd.service"
    unit.write_text(UNIT.read_text().replace("/opt/sfmd/bin/sfmd", sfmd))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
