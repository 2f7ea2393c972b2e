"""The control API's Unix socket: claimed safely (never stealing a live daemon's), bound with
the configured mode from the first moment, and closed first at shutdown."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from aiohttp import web

from sfmd.control.api import ControlApi
from sfmd.daemon.app import Daemon, StartupError
from sfmd.logs import get_logger

log = get_logger()

# Connections the kernel queues before the daemon accepts them. aiohttp's default of 128 is
# too few for a burst of sfmctl calls and scrapes: a Unix socket whose queue is full refuses a
# non-blocking connect with EAGAIN, which asyncio takes for "in progress" and then reports as a
# connected socket that fails its first write (ENOTCONN). The kernel caps it at somaxconn.
BACKLOG = 1024


class ControlServer:
    """The API on the Unix socket: claimed safely, chmodded, closed first at shutdown."""

    def __init__(self, daemon: Daemon, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        self.api = ControlApi(daemon)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        claim_socket(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._runner = web.AppRunner(self.api.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        # Bind under a umask that already gives the configured mode: no moment of looser access.
        old = os.umask(0o777 & ~self.mode)
        try:
            await web.UnixSite(self._runner, str(self.path), backlog=BACKLOG).start()
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        log.info("control_socket", path=str(self.path), mode=f"{self.mode:04o}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.path.unlink(missing_ok=True)  # ours: claim_socket made sure at start


def claim_socket(path: Path) -> None:
    """Refuse a live socket (another daemon) or a non-socket; remove a stale one.

    asyncio would unlink whatever is there and bind anew, silently stealing a running
    daemon's socket, so ask first: a connection that succeeds means someone is home.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(
            f"{path} exists and is not a socket; move it away or set daemon.control_socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: its daemon is gone
        log.info("stale_socket_removed", path=str(path))
        return
    except OSError as e:
        raise StartupError(f"cannot check control socket {path}: {e.strerror}") from None
    finally:
        probe.close()
    raise StartupError(
        f"another sfmd is already running: something answers on {path}; stop it first "
        "or point daemon.control_socket elsewhere"
    )
