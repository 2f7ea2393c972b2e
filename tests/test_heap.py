"""Frozen objects stay out of routine collections; the scheduled full one reclaims them."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from sfmd.heap import Heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object cycle only the collector can free; a weak reference to watch it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_settled_cycles_survive_routine_collections_until_the_full_one() -> None:
    heap = Heap(full_interval=3600)
    watched = cycle()
    heap.settle()
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert watched() is not None  # frozen: out of the collector's sight

    assert heap.tick() is None  # not due: only settles
    heap.full_interval = 0
    done = heap.tick()
    assert done is not None and done.collected >= 2 and done.frozen > 0
    assert watched() is None
