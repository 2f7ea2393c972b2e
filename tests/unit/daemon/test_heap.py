"""Settled objects stay out of routine collections; the scheduled full one reclaims them."""

from __future__ import annotations

import gc
import weakref

import pytest

from sfmd.daemon.heap import YOUNG_THRESHOLD, Heap
from tests.helpers.heap import Node


def cycle() -> Node:
    """A two-object cycle: once dropped, only the collector can free it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


pytestmark = pytest.mark.usefixtures("unfrozen")


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
    assert done is not None and done.collected >= 2 and done.full
    assert watched() is None


def test_one_more_freeze_once_the_streams_have_connected() -> None:
    heap = Heap(full_interval=3600, freeze_after=0)
    heap.settle()
    before = gc.get_freeze_count()
    made_later = [cycle() for _ in range(100)]  # what connecting streams hold
    dropped = weakref.ref(cycle())  # garbage they made on the way
    done = heap.tick()
    assert done is not None and not done.full and gc.get_freeze_count() >= before + 200
    assert all(gc.is_tracked(n) for n in made_later)
    # Nothing collected first (no walk at all): the garbage is frozen too, out of the
    # routine collections' sight, until the scheduled full collection.
    assert done.collected == 0
    gc.collect()
    assert dropped() is not None
    assert heap.tick() is None  # once; then only the scheduled full collections
    heap.full_interval = 0
    assert heap.tick() is not None and dropped() is None
    assert Heap(full_interval=3600, freeze_after=60).tick() is None
