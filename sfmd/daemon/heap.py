"""Keeping Python's garbage collector from pausing a daemon that holds 1,000 streams.

A full collection walks every tracked object. With 1,000 streams that is about 200,000
objects and, measured in the fan-out benchmark, pauses of 100-400 ms several times a minute:
every API call waiting at that moment waits too. Nearly all of those objects live as long as
their stream, so once the streams have started they are moved out of the collector's sight
(`gc.freeze`), and a full collection over everything, frozen objects included, runs rarely
and on a schedule (`timing.gc_interval`): it reclaims garbage frozen with them, and settles
what streams created since then hold.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

#: Young objects allowed before a routine collection (CPython's default: 700). 1,000 streams
#: keep ~27,000 short-lived container objects alive at any moment (timers, futures, sleeping
#: coroutines), so with 700 the collector ran ~5 times a second and its middle generation
#: every 2-3 s, each pass 20-28 ms of stopped event loop. With 10,000 it runs a few times a
#: minute; what it is there for, cyclic garbage, is then at most ~10,000 objects behind.
YOUNG_THRESHOLD = 10_000


@dataclass
class Collection:
    """What one scheduled full collection did, for the log."""

    collected: int
    seconds: float
    frozen: int
    full: bool = True  # False: the one young-generation collection and freeze after start-up


class Heap:
    """`freeze_after`: seconds from now to one more, cheap, freeze. The daemon sets it to just
    after its streams have connected: settling at start-up freezes the registry and runners,
    but the connections, archives and buffers come later, and left unfrozen they made each
    automatic full collection pause the loop 60-75 ms (1,000 streams). That freeze collects
    only the young generations first (a full collection there stopped the loop 140 ms), so
    what cyclic garbage is older than that stays until the first scheduled full collection.
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
            collected = gc.collect(1)
            gc.freeze()
            return Collection(collected, time.monotonic() - now, gc.get_freeze_count(), False)
        if now - self._last_full < self.full_interval:
            return None
        self._last_full = now
        gc.unfreeze()
        collected = self.settle()
        return Collection(collected, time.monotonic() - now, gc.get_freeze_count())
