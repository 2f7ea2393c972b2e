"""The idle watch: a connection that sends nothing for its idle period is closed, once."""

from __future__ import annotations

import asyncio

from sfmd.sources.idle import IdleWatch
from tests.helpers.waits import wait_until


class _Connection:
    def __init__(self) -> None:
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1


async def test_a_silent_connection_is_closed_once() -> None:
    conn = _Connection()
    with IdleWatch(conn.close, 0.05) as watch:
        await wait_until(lambda: conn.closes == 1, timeout=5, what="the idle close")
        assert watch.fired
    assert conn.closes == 1


async def test_frames_keep_a_connection_open_past_its_idle_period() -> None:
    conn = _Connection()
    loop = asyncio.get_running_loop()
    with IdleWatch(conn.close, 0.2) as watch:
        until = loop.time() + 1.0  # five idle periods, a frame every 20 ms
        while loop.time() < until:
            watch.frame()
            await asyncio.sleep(0.02)
        assert (conn.closes, watch.fired) == (0, False)
        await wait_until(lambda: conn.closes == 1, timeout=5, what="the close once frames stop")


async def test_leaving_the_watch_stops_it() -> None:
    conn = _Connection()
    with IdleWatch(conn.close, 0.05):
        pass
    never = IdleWatch(conn.close, 0.05)  # a second watch, still running, shows time passed
    with never:
        await wait_until(lambda: never.fired, timeout=5, what="the second watch")
    assert conn.closes == 1  # the second watch's close, not the first's
