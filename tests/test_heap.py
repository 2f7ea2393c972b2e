"""Settled objects stay out of routine collections; the scheduled full one reclaims them."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from sfmd.heap import YOUNG_THRESHOLD, Heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> Node:
    """A two-object cycle: once dropped, only the collector can free it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settling_collects_garbage_first_then_freezes_the_living() -> None:
    heap = Heap(full_interval=3600)
    dropped = weakref.ref(cycle())
    kept = cycle()
    heap.settle()
    assert dropped() is None  # garbage at settle time is not frozen
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD  # fewer routine collections

    watched = weakref.ref(kept)
    del kept  # garbage now, but frozen: routine and explicit collections pass it by
    gc.collect()
    assert watched() is not None

    assert heap.tick() is None  # not due
    heap.full_interval = 0
    done = heap.tick()
    assert done is not None and done.collected >= 2 and done.frozen > 0
    assert watched() is None


def test_the_first_full_collection_can_come_sooner() -> None:
    """The daemon's second settle, once its streams have connected."""
    soon = Heap(full_interval=3600, first_full=0)
    assert soon.tick() is not None
    assert soon.tick() is None  # then the regular interval
    assert Heap(full_interval=3600, first_full=60).tick() is None
