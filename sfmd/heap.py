"""Keeping Python's garbage collector from pausing a daemon that holds 1,000 streams.

A full collection walks every tracked object. With 1,000 streams that is about 200,000
objects and, measured in the fan-out benchmark, pauses of 100-400 ms several times a minute:
every API call waiting at that moment waits too. Nearly all of those objects live as long as
their stream, so they are moved out of the collector's sight (`gc.freeze`) once they have
settled, and a full collection over everything, frozen objects included, runs rarely and on
a schedule (`timing.gc_interval`) so that garbage cycles among them are still reclaimed.
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
    frozen: int


class Heap:
    def __init__(self, full_interval: float) -> None:
        self.full_interval = full_interval
        self._last_full = time.monotonic()

    def settle(self) -> None:
        """Everything alive now is long-lived: keep it out of routine collections."""
        gc.freeze()

    def tick(self) -> Collection | None:
        """Call now and then: settles new objects; once per interval, collects everything."""
        now = time.monotonic()
        if now - self._last_full < self.full_interval:
            self.settle()
            return None
        self._last_full = now
        gc.unfreeze()
        collected = gc.collect()
        self.settle()
        return Collection(collected, time.monotonic() - now, gc.get_freeze_count())
