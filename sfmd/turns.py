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
from collections.abc import Callable, Iterable
from typing import TypeVar

#: Seconds of work between two turns given to the rest of the event loop.
TURN = 0.010
#: Work done ahead of any request (`sfmd.control.warm`) gives way: this much work, then this
#: long a pause, so a request that comes meanwhile waits a couple of ms at most; a pause that
#: ends later than `GIVE_WAY_BUSY` after it should have means others' work is waiting (after a
#: rotation boundary, say), so it pauses again.
GIVE_WAY_TURN = 0.002
GIVE_WAY_PAUSE = 0.008
GIVE_WAY_BUSY = 0.005

_T = TypeVar("_T")


async def in_turns(
    items: Iterable[_T],
    do: Callable[[_T], object] | None = None,
    turn: float | None = None,
    *,
    giving_way: bool = False,
) -> None:
    """`do(item)` for each of `items` (produced lazily, so a generator's own steps count as
    work), with a turn of the event loop whenever `turn` seconds (`TURN` unless given) have
    gone since the last one; `giving_way`: `GIVE_WAY_TURN` of work, then a `GIVE_WAY_PAUSE`
    (again while the loop is busy). A plain loop, not an async iterator: stepping an async
    generator cost 0.27 µs an item against 0.09, and a page goes through 5,000 streams
    twice."""
    turn = GIVE_WAY_TURN if giving_way else TURN if turn is None else turn
    clock = time.perf_counter
    due = clock() + turn
    for item in items:
        if do is not None:
            do(item)
        if clock() >= due:
            await (_give_way() if giving_way else asyncio.sleep(0))
            due = clock() + turn


async def _give_way() -> None:
    """Pause, and again for as long as the pauses end late: others' work is waiting."""
    clock = time.perf_counter
    while True:
        asked = clock()
        await asyncio.sleep(GIVE_WAY_PAUSE)
        if clock() - asked - GIVE_WAY_PAUSE <= GIVE_WAY_BUSY:
            return
