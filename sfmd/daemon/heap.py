"""Keeping Python's garbage collector from pausing a daemon that holds 1,000 streams.

A full collection walks every tracked object. With 1,000 streams that is about 200,000
objects and, measured in the fan-out benchmark, pauses of 100-400 ms several times a minute:
every API call waiting at that moment waits too. Nearly all of those objects live as long as
their stream, so once the streams have started they are moved out of the collector's sight
(`gc.freeze`), and a full collection over everything, frozen objects included, runs rarely
and on a schedule (`timing.gc_interval`): it reclaims garbage frozen with them, and settles
what streams created since then hold.

After settling, the young generation is collected on a clock too (`young`, every
`timing.gc_young_interval`), and CPython's own collections are off. Those start when the
count of objects made less objects freed passes a threshold, and that count hardly moves
while the young generation fills: a stream's message frees the twenty-odd objects that
lived since its last message and makes as many new ones. When a collection finally came it
walked them all: 262,536 and 337,238 objects, 199 and 216 ms of stopped event loop, at
5,000 streams. On a clock a young collection walks only what was made since the last one
and still lives. What survives it moves to the middle generation, which only the full
collection walks: it is mostly a stream's objects that live until its next message, freed
by reference counting then, and the cyclic garbage among them waits for the full collection.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass


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
        collections: it is long-lived. From here on only `young` and `tick` collect.
        Returns how many objects were collected."""
        collected = gc.collect()
        gc.freeze()
        gc.disable()
        return collected

    @staticmethod
    def young() -> int:
        """Collect the young generation: call every `gc_young_interval` once settled.
        Returns how many objects were collected."""
        return gc.collect(0)

    def tick(self) -> Collection | None:
        """Call now and then: once per interval, collects everything and settles again (and
        once, at `freeze_after`, freezes what the streams made while connecting).

        Nothing is frozen in between: that would freeze fresh garbage too (the soak saw RSS
        climb 16 % in 10 minutes that way), and what is made after start-up is mostly
        short-lived, which the young collections handle cheaply.
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
