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
#: The longest path a Unix socket can be bound to (sun_path less its NUL).
MAX_SOCKET_PATH = 107


class ControlServer:
    """The API on the Unix socket: claimed safely, chmodded, closed first at shutdown."""

    def __init__(self, daemon: Daemon, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        self.api = ControlApi(daemon)
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None  # claimed and listening, from `claim`
        self._stale_removed = False  # logged once the log is open

    def claim(self) -> None:
        """Take the socket path, listening at once, before anything else of the daemon
        starts: a second daemon is refused here, before it opens (and writes into) the log
        file the first one writes. Connections made before `start` wait in the queue."""
        if self._sock is not None:
            return
        self._stale_removed = claim_socket(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StartupError(
                f"cannot create the control socket's folder {self.path.parent}: {e.strerror}"
            ) from None
        # Bound and listening under a name of its own, then renamed into place: whoever sees
        # the socket file can connect (a client polling for it never meets a refusal).
        staging = self.path.with_name(f".sfmd-{os.getpid()}.sock")
        if len(os.fsencode(staging)) > MAX_SOCKET_PATH:
            staging = self.path  # too long a name to stage: bound in place
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a umask that already gives the configured mode: no moment of looser
        # access.
        old = os.umask(0o777 & ~self.mode)
        try:
            staging.unlink(missing_ok=True)  # a leftover of a killed start with our pid
            sock.bind(str(staging))
            sock.listen(BACKLOG)
            os.chmod(staging, self.mode)
            if staging != self.path:
                os.rename(staging, self.path)
        except OSError as e:
            sock.close()
            if staging != self.path:
                staging.unlink(missing_ok=True)
            raise StartupError(
                f"cannot listen on control socket {self.path}: {e.strerror}"
            ) from None
        finally:
            os.umask(old)
        self._sock = sock

    async def start(self) -> None:
        """Serve the API on the claimed socket (claimed now if `claim` was not called)."""
        self.claim()
        assert self._sock is not None
        self._runner = web.AppRunner(self.api.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock, backlog=BACKLOG).start()
        if self._stale_removed:
            log.info("stale_socket_removed", path=str(self.path))
        log.info("control_socket", path=str(self.path), mode=f"{self.mode:04o}")

    async def stop(self) -> None:
        """Stop serving and remove the socket file (ours: `claim_socket` made sure)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.release()

    def release(self) -> None:
        """Give the socket up: closed and its file removed. Also what a start that failed
        after `claim` does, so the next start finds nothing in the way."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)


def claim_socket(path: Path) -> bool:
    """Refuse a live socket (another daemon) or a non-socket; remove a stale one (then
    True). Logs nothing: it runs before the daemon's log is open.

    asyncio would unlink whatever is there and bind anew, silently stealing a running
    daemon's socket, so ask first: a connection that succeeds means someone is home.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
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
        return True
    except OSError as e:
        raise StartupError(f"cannot check control socket {path}: {e.strerror}") from None
    finally:
        probe.close()
    raise StartupError(
        f"another sfmd is already running: something answers on {path}; stop it first "
        "or point daemon.control_socket elsewhere"
    )
