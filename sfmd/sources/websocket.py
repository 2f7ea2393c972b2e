"""What the WebSocket sources share: a socket that goes silent is dead.

Jetstream and Mastodon sockets can stop sending without closing, so each read loop runs an
`IdleWatch`: one timer per idle period (not one per frame) that closes the socket once
nothing at all, pings included, has come for `idle` seconds. The read loop marks each frame
with `frame()` and, seeing the close, asks `fired` whether the watch caused it.
"""

from __future__ import annotations

import asyncio

import aiohttp

#: A text frame larger than this is refused (these networks' frames are a few KB).
MAX_FRAME_BYTES = 64 << 20


class IdleWatch:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, idle: float) -> None:
        self.ws = ws
        self.idle = idle
        self.fired = False
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> IdleWatch:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def frame(self) -> None:
        """Something came: the socket is alive."""
        self._last = self._loop.time()

    async def _run(self) -> None:
        while not self.ws.closed:
            left = self._last + self.idle - self._loop.time()
            if left <= 0:
                self.fired = True
                await self.ws.close()
                return
            await asyncio.sleep(left)
