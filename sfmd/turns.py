"""Long work on the event loop in pieces: everyone else gets a turn every few milliseconds.

GET /streams and /metrics read every stream: at 5,000 streams 50-130 ms of the loop each,
while every other request and every stream's read waited. Cut at a fixed count of streams
(every 250), a page took twenty turns or more, and after a rotation boundary, when a turn of
the loop is long, that made the page itself slow (p99 2.3 s for /metrics). Cut by time, a
page takes as few turns as its work needs and nobody waits behind it longer than `TURN`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

#: Seconds of work between two turns given to the rest of the event loop.
TURN = 0.010

_T = TypeVar("_T")


async def sliced(items: Iterable[_T], turn: float | None = None) -> AsyncIterator[_T]:
    """`items` (produced lazily, as the caller asks), with a turn of the event loop whenever
    `turn` seconds (`TURN` unless given) have gone since the last one."""
    turn = TURN if turn is None else turn
    since = time.perf_counter()
    for item in items:
        yield item
        if time.perf_counter() - since >= turn:
            await asyncio.sleep(0)
            since = time.perf_counter()
