"""Keeping Python's garbage collector from pausing a daemon that holds 1,000 streams.

A full collection walks every tracked object. With 1,000 streams that is about 200,000
objects and, measured in the fan-out benchmark, pauses of 100-400 ms several times a minute:
every API call waiting at that moment waits too. Nearly all of those objects live as long as
their stream, so once the streams have started they are moved out of the collector's sight
(`gc.freeze`), and a full collection over everything, frozen objects included, runs rarely
and on a schedule (`timing.gc_interval`): it reclaims garbage frozen with them, and settles
what streams created since then hold. In between, what is new is collected on a clock and
what lives of it frozen too (`Heap.young`), so no routine collection walks much at once.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

#: Young objects allowed before one of CPython's own collections (its default: 700). With
#: `Heap.young` on a clock those collections are only a backstop for a burst of garbage: each
#: clock collection sets the count back to nothing. Without it (`young_interval = 0`) they do
#: all the routine work, and every stream keeps fifteen to twenty objects alive from one message
#: to the next (the coroutines and future of its pending read, its batch waiting for the tick,
#: its writer's timer), which a young collection walks whenever it runs: at 5,000 streams
#: 50,000-340,000 objects and 30-216 ms of stopped event loop a collection. The threshold does
#: not bound that walk: the count is of objects made less objects freed, and a message frees
#: about as many as it makes, so the young generation fills while the count stands still. At
#: 10,000 the collections came every 1-3 s at 5,000 streams, and their middle generation every
#: 2-40 s (75-180 ms); at 100,000 the same climb takes ten times as long.
YOUNG_THRESHOLD = 100_000


@dataclass
class Collection:
    """What one scheduled full collection did, for the log."""

    collected: int
    seconds: float
    full: bool = True  # False: the one freeze after start-up


class Heap:
    """`freeze_after`: seconds from now to one more, cheap, freeze. The daemon sets it to just
    after its streams have connected: settling at start-up freezes the registry and runners,
    but the connections, archives and buffers come later, and left unfrozen they made each
    automatic full collection pause the loop 60-75 ms (1,000 streams). That freeze collects
    nothing first: collecting the young generations there stopped the loop 27-85 ms at 1,000
    streams and 41-105 ms at 5,000, once, a minute after start (a full collection, 140 ms),
    and a stop that long must not fall in the minute after a rotation. The cyclic garbage
    frozen with the streams (about 1,500 objects at 1,000 streams) waits for the first
    scheduled full collection, which unfreezes everything first.

    Nothing here counts the frozen objects: `gc.get_freeze_count()` walks them all, and at
    5,000 streams that alone stopped the loop 111 ms.
    """

    def __init__(self, full_interval: float, freeze_after: float | None = None) -> None:
        self.full_interval = full_interval
        now = time.monotonic()
        self._last_full = now
        self._freeze_at = None if freeze_after is None else now + freeze_after

    def settle(self) -> int:
        """Collect what is garbage now, then keep everything alive out of routine
        collections: it is long-lived. Returns how many objects were collected."""
        collected = gc.collect()
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
        return collected

    def young(self) -> None:
        """Collect what was made since the last collection, then freeze what lives of it.

        Called on a clock (`timing.young_interval`). Each object that outlives the interval
        is walked once, by the first of these after it was made, and never again by a
        routine collection. CPython's own young collections walked everything made since the
        last one that still lived, at once: at 5,000 streams 210,000-280,000 objects, 107-170
        ms of stopped loop, once or twice a minute. Every 0.25 s the walks after a rotation
        boundary (a thousand publishes waiting for the disk, each a coroutine chain and a
        future) are 10-20 ms. The collection goes first, so the garbage made since the last
        one is freed rather than frozen; frozen objects that become garbage later, in a
        cycle, wait for the scheduled full collection.
        """
        gc.collect(0)
        gc.freeze()

    def tick(self) -> Collection | None:
        """Call now and then: once per interval, collects everything and settles again (and
        once, at `freeze_after`, freezes what the streams made while connecting).

        Nothing is frozen in between: that would freeze fresh garbage too (the soak saw RSS
        climb 16 % in 10 minutes that way), and what is made after start-up is mostly
        short-lived, which the routine collections handle cheaply.
        """
        now = time.monotonic()
        if self._freeze_at is not None and now >= self._freeze_at:
            self._freeze_at = None
            gc.freeze()
            return Collection(0, time.monotonic() - now, False)
        if now - self._last_full < self.full_interval:
            return None
        self._last_full = now
        gc.unfreeze()
        collected = self.settle()
        return Collection(collected, time.monotonic() - now)
