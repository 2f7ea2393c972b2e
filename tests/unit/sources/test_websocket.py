"""Our side of a WebSocket close: frames the peer sent before it heard the close are read,
not dropped, and a peer that never answers is closed anyway. A real aiohttp server and
client on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from sfmd.sources.websocket import Hangup
from tests.helpers.servers import serving
from tests.helpers.waits import wait_until

FRAMES = 200
DEADLINE = 10.0


@asynccontextmanager
async def peer(answers_close: bool) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A server that sends FRAMES text frames at once, then waits for the client's close
    (answering it, or not). Yields its URL and an event set once every frame is sent."""
    sent = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=answers_close)
        await ws.prepare(request)
        for i in range(FRAMES):
            await ws.send_str(f"frame {i}")
        sent.set()
        async for _ in ws:  # until the client's close (answered by aiohttp when autoclose)
            pass
        if not answers_close:
            await asyncio.Event().wait()  # a peer that hangs: never a close frame back
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    async with serving(app) as url:
        yield f"{url}/", sent


async def read_all(ws: aiohttp.ClientWebSocketResponse, hangup: Hangup) -> list[str]:
    """A source's read loop in small: every text frame until the socket ends."""
    texts: list[str] = []
    try:
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                return texts
            texts.append(msg.data)
    finally:
        hangup.done()


async def test_frames_sent_before_the_peer_heard_the_close_are_read() -> None:
    async with peer(answers_close=True) as (url, sent):
        hangup = Hangup(within=5.0)
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await wait_until(sent.is_set, DEADLINE, "every frame sent")
            reading = asyncio.create_task(read_all(ws, hangup))
            assert hangup.sendable(ws)
            await hangup.begin(ws)
            assert not hangup.sendable(ws)  # nothing may follow our close frame
            async with asyncio.timeout(DEADLINE):
                texts = await reading
            assert ws.closed
            assert ws.close_code == 1000  # the peer's answer ended the read, not the fallback
        assert not hangup.begun  # done() at the read's end: ready for the next socket
    assert texts == [f"frame {i}" for i in range(FRAMES)]


async def test_aiohttps_own_close_drops_them() -> None:
    """Why the hang-up exists: the same stop with `ws.close()` loses the unread frames."""
    async with peer(answers_close=True) as (url, sent):
        hangup = Hangup()
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await wait_until(sent.is_set, DEADLINE, "every frame sent")
            reading = asyncio.create_task(read_all(ws, hangup))
            await ws.close()
            async with asyncio.timeout(DEADLINE):
                texts = await reading
    assert len(texts) < FRAMES


async def test_a_peer_that_never_answers_is_closed_after_the_wait() -> None:
    async with peer(answers_close=False) as (url, sent):
        hangup = Hangup(within=0.2)
        async with aiohttp.ClientSession() as session, session.ws_connect(
            url, timeout=aiohttp.ClientWSTimeout(ws_close=0.2)
        ) as ws:
            await wait_until(sent.is_set, DEADLINE, "every frame sent")
            reading = asyncio.create_task(read_all(ws, hangup))
            await hangup.begin(ws)
            async with asyncio.timeout(DEADLINE):
                texts = await reading
            await wait_until(lambda: ws.closed, DEADLINE, "the socket closed")
    assert texts == [f"frame {i}" for i in range(FRAMES)]  # read while waiting


async def test_a_closed_socket_is_left_alone() -> None:
    async with peer(answers_close=True) as (url, _sent):
        hangup = Hangup(within=0.2)
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.close()
            await hangup.begin(ws)  # no frame after the close, no error
            assert ws.closed
