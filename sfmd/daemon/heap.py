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

#: Young objects allowed before a routine collection (CPython's default: 700). A young collection
#: walks what was made since the last one and still lives, and every stream keeps fifteen to twenty
#: such objects alive from one message to the next (the coroutines and future of its pending read,
#: its batch waiting for the tick, its writer's timer; 23 before the writer's timer looked at the
#: clock for it): at 5,000 streams of a message a second, 50,000-230,000 objects and 30-145 ms of
#: stopped event loop a collection (a lower threshold hands the same objects to the middle
#: generation instead: 2,000 measured worse than 10,000). What the threshold sets is how often: the
#: count is of objects made less objects freed, so it climbs slowly, and at 10,000 it ran every 1-3
#: s at 5,000 streams (and its middle generation every 2-40 s, 75-180 ms). At 100,000 the same climb
#: takes ten times as long; cyclic garbage, what the collector is there for, waits that much longer,
#: and the streams make little of it (about 3,000 objects in two minutes at 5,000 streams, rotations
#: included). Nor does the threshold bound a walk: a message frees about as many objects as it
#: makes, so the young generation fills while the count stands still (262,536 and 337,238 objects,
#: 199 and 216 ms, at counts of 100,013 and 100,018). Collecting it on a clock instead (every 0.1 s,
#: CPython's own collections off) kept each walk short but walked every one of those objects: 16 %
#: more CPU a message at 1,000 streams, and at 5,000 no better latency in three paired runs. Not
#: kept. Tried again with what lived frozen after each collection (every 1 s, then 0.25 s; at
#: 0.25 s the walks after a boundary took 10-20 ms instead of one of 107-170 ms a minute): the CPU
#: a message moved within the noise, and the mix's p99 at 5,000 streams was no better in three
#: paired runs either. Not kept.
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
