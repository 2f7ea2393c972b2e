"""What the WebSocket sources share.

Jetstream and Mastodon sockets can stop sending without closing, so each read loop runs an
`IdleWatch` (`sfmd.sources.idle`) given the socket's `close`. A stop ends the socket with a
`Hangup`, so that what the peer sent before it heard the close is stored, not dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeGuard

import aiohttp

#: A text frame larger than this is refused (these networks' frames are a few KB).
MAX_FRAME_BYTES = 64 << 20

#: How long our side of a close handshake waits for the peer's close frame.
CLOSE_WAIT = 1.0

#: `ws_connect`'s settings for every WebSocket source: pings are answered by the read loop
#: (they count as signs of life, and none may follow our close frame: `Hangup`), and a close
#: handshake with a dead peer waits `CLOSE_WAIT` at most.
CONNECT_OPTIONS: dict[str, Any] = {
    "autoping": False,
    "max_msg_size": MAX_FRAME_BYTES,
    "timeout": aiohttp.ClientWSTimeout(ws_close=CLOSE_WAIT),
    "compress": 0,
}

_NORMAL_CLOSURE = (1000).to_bytes(2, "big")


class Hangup:
    """Our side of a close handshake that loses nothing the peer sent before it heard us.

    aiohttp's `close()` sends the close frame, then reads until the peer's close frame and
    throws away every frame on the way: the frames in flight when a stream is stopped, and
    any the read loop had not taken yet. So `begin()` sends the close frame alone, and the
    read loop goes on reading, and storing, until the peer's close frame ends it (aiohttp
    then finishes the close by itself). A peer that has not closed within `within` seconds
    is closed by aiohttp's `close()`, which drops what it still sends, as a dead peer
    requires. Nothing may follow our close frame: the sources ask `sendable()` before they
    send (a subscription, a pong). `done()` is for the read loop's end: it disarms that
    fallback."""

    def __init__(self, within: float = CLOSE_WAIT) -> None:
        self.within = within
        self.begun = False  # our close frame is sent: no other frame may follow it
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[bool] | None = None  # held: the loop keeps tasks weakly

    def sendable(self, ws: aiohttp.ClientWebSocketResponse | None
                 ) -> TypeGuard[aiohttp.ClientWebSocketResponse]:
        """Whether a frame may go on `ws`: open, and not being hung up."""
        return ws is not None and not ws.closed and not self.begun

    async def begin(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if not self.sendable(ws):  # closed, or our close frame already sent
            return
        self.begun = True
        try:
            await ws.send_frame(_NORMAL_CLOSURE, aiohttp.WSMsgType.CLOSE)
        except (aiohttp.ClientError, ConnectionError):
            await ws.close()  # the connection is going anyway: nothing more will come
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.within, self._unanswered, ws)

    def _unanswered(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._timer = None
        if not ws.closed:
            self._closing = asyncio.ensure_future(ws.close())

    def done(self) -> None:
        self.begun = False  # the next connection's socket is a new one
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
