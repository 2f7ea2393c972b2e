"""Pages moved on in the background while someone keeps asking for them.

GET /streams and /metrics keep what they showed of each stream and make again only the
streams that changed since the last page (`sfmd.daemon.shown`). A page after a few quiet
seconds still finds most streams moved on: at 5,000 streams taking a message every 5 s
each, 35-55 ms of the event loop on the request's own path. So while a page is asked for
often (within `window` seconds of the last time), what it keeps is moved on every
`interval` seconds between requests, and a request finds at most that long's changes to
write. A page nobody asks for costs nothing; one asked every few seconds costs about what
it cost before, spread out; a scraper every 15 s (past the window) is not warmed at all.

Warming gives way to everything else: it works in short turns with pauses between them,
longer while the loop is busy (`turns.GIVE_WAY_TURN`), and a request for the page being
warmed stops the warming there and does the rest itself. A first version, warmed in the
pages' own 10 ms turns, made the small requests wait behind it: PATCH's p99 went from 48 to
102 ms at 5,000 streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sfmd.logs import get_logger

log = get_logger()


class Warmer:
    """Each page's `step` (move its kept parts on), run every `interval` seconds while the
    page was asked for within the last `window` seconds (`asked`)."""

    def __init__(
        self,
        steps: dict[str, Callable[[], Awaitable[None]]],
        interval: float,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._steps = steps
        self.interval = interval
        self.window = window
        self._clock = clock
        self._asked = dict.fromkeys(steps, -float("inf"))
        self._warming: tuple[str, asyncio.Task[None]] | None = None  # the step under way
        self._failing: set[str] = set()  # pages whose last step failed, logged once

    def asked(self, page: str) -> None:
        """`page` was just asked for: it is warmed for the next `window` seconds, and a step
        of it under way stops where it is (the request does the rest; what the step did
        stays done)."""
        self._asked[page] = self._clock()
        if self._warming is not None and self._warming[0] == page:
            self._warming[1].cancel()

    async def tick(self) -> list[str]:
        """One round: step each page asked for within the window; the pages stepped (or
        stopped by a request). A step that fails is logged (once, until one of that page
        succeeds again) and the others still run: warming only saves a request work, and
        the request does that work itself anyway."""
        now = self._clock()
        stepped = []
        for page, step in self._steps.items():
            if now - self._asked[page] > self.window:
                continue
            task = asyncio.create_task(step())
            self._warming = (page, task)
            try:
                await asyncio.wait([task])  # a request's cancel is the step's, not ours
            finally:
                self._warming = None
                task.cancel()  # done already, unless this round itself is cancelled
            stepped.append(page)
            if task.cancelled():
                continue
            e = task.exception()  # a bug in a page's step: the page itself will show it
            if e is None:
                self._failing.discard(page)
            elif page not in self._failing:
                self._failing.add(page)
                log.warning("warm_failed", page=page, error=f"{type(e).__name__}: {e}")
        return stepped

    async def run(self) -> None:
        """`tick` every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()
