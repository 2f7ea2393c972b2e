"""Tell systemd how sfmd is doing (sd_notify), without libsystemd.

Under `Type=notify` systemd passes `NOTIFY_SOCKET`: a datagram socket that takes
`KEY=VALUE` lines, one message per datagram. `READY=1` ends start-up (so `systemctl start`
returns only once the control socket answers), `STATUS=` is the line `systemctl status` shows,
`STOPPING=1` says a stop is under way, and `WATCHDOG=1` proves the event loop still turns.
Anywhere else (a terminal, supervisord) the variable is absent and every call does nothing,
so callers never need to ask which manager runs them.

A notification is never worth crashing or stalling the daemon for: send errors are logged
once and swallowed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

from sfmd.logs import get_logger

# How often the status line is refreshed when systemd asked for no watchdog.
STATUS_REFRESH = 5.0

# A send may block only this long: a full queue at systemd must not freeze the event loop.
SEND_TIMEOUT = 1.0


class Notifier:
    """One daemon's channel to systemd; a no-op when `address` is None."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._failing = False  # warn once per run of failures, not once per datagram

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """The notifier systemd's environment asks for (no-op outside systemd)."""
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        return cls(_address(env.get("NOTIFY_SOCKET", "")), _watchdog_usec(env, pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status_field(status))

    def status(self, text: str) -> bool:
        return self.send(*_status_field(text))

    def reloading(self) -> bool:
        """A reload (SIGHUP) is under way; `ready()` ends it. systemd shows the unit as
        reloading meanwhile (MONOTONIC_USEC: when it began, as systemd asks)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status_field(status))

    def watchdog(self, status: str | None = None) -> bool:
        return self.send("WATCHDOG=1", *_status_field(status))

    def send(self, *fields: str) -> bool:
        """Send `fields` as one datagram; True if it left, False if not (never raises)."""
        if self.address is None or not fields:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.settimeout(SEND_TIMEOUT)
                self._socket = sock
            self._socket.sendto(message, self.address)
        except OSError as e:
            if not self._failing:
                self._failing = True
                get_logger().warning(
                    "notify_failed",
                    socket=self._printable_address(),
                    error=str(e),
                    note="later failures are not logged until a send succeeds",
                )
            return False
        if self._failing:
            self._failing = False
            get_logger().info("notify_recovered", socket=self._printable_address())
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _printable_address(self) -> str:
        address = self.address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _address(value: str) -> str | None:
    """A sendto() address for NOTIFY_SOCKET: `@name` is abstract (a leading NUL byte)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        # systemd 252 only passes paths and abstract names; anything else is not for us.
        get_logger().warning("notify_socket_unsupported", socket=value)
    return None


def _watchdog_usec(env: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC if it is meant for this process (WATCHDOG_PID, when set, must match)."""
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid is not None and watchdog_pid.strip() != str(pid):
        return None  # inherited from a parent that systemd watches, not us
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _status_field(text: str | None) -> tuple[str, ...]:
    """A STATUS= field; a newline would start a new field, so it is flattened."""
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)


async def watchdog_loop(
    notifier: Notifier,
    status_text: Callable[[], str],
    refresh: float = STATUS_REFRESH,
) -> None:
    """Ping the watchdog and refresh STATUS from the event loop, until cancelled.

    Running on the loop is the point: if the loop hangs, the pings stop and systemd
    restarts sfmd. Without a watchdog the status line is still refreshed every `refresh`
    seconds; without systemd this returns at once.
    """
    if not notifier.enabled:
        return
    watchdog = notifier.watchdog_interval()
    period = watchdog or refresh
    loop = asyncio.get_running_loop()
    due = loop.time()
    broken_status = False
    while True:
        try:
            text: str | None = status_text()
        except Exception as e:  # a status bug must not silence the watchdog
            text = None
            if not broken_status:
                broken_status = True
                get_logger().error("notify_status_failed", error=f"{type(e).__name__}: {e}")
        if watchdog is not None:
            notifier.watchdog(text)
        elif text is not None:
            notifier.status(text)
        # Keep to the grid rather than sleeping a full period after each send: no drift.
        due = max(due + period, loop.time())
        await asyncio.sleep(due - loop.time())
