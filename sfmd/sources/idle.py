"""A connection that goes silent is dead: one timer per idle period, not one per read.

Every source's socket can stop sending without closing (Twitter sends a keep-alive every
30 s, Jetstream and Mastodon sockets answer pings), so each read loop runs an `IdleWatch`
that closes the connection once nothing at all has come for `idle` seconds. The read loop
marks each read with `frame()` (a clock read, nothing more) and, seeing the connection end,
asks `fired` whether the watch ended it.

A timeout per read (aiohttp's `sock_read`) does the same with a new timer for every chunk
received, cancelled at the next one: at 5,000 streams of a message a second that was 5,000
timers made and cancelled a second, about a tenth of the event loop's work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class IdleWatch:
    """Closes a connection that stayed silent for `idle` seconds. A timer, not a task: a
    task, its coroutine and its sleep cost about a kilobyte a stream, a timer a few hundred
    bytes."""

    def __init__(self, close: Callable[[], Awaitable[object]], idle: float) -> None:
        self.close = close  # ends the connection; the read loop then sees it end
        self.idle = idle
        self.fired = False
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[object] | None = None

    def __enter__(self) -> IdleWatch:
        self._timer = self._loop.call_at(self._last + self.idle, self._check)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closing is not None:
            self._closing.cancel()

    def frame(self) -> None:
        """Something came: the connection is alive."""
        self._last = self._loop.time()

    def _check(self) -> None:
        deadline = self._last + self.idle
        if deadline > self._loop.time():  # something came since the timer was set
            self._timer = self._loop.call_at(deadline, self._check)
            return
        self._timer = None
        self.fired = True
        self._closing = asyncio.ensure_future(self.close())
