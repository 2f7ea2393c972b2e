"""For tests of the collector: an object it tracks (the `unfrozen` fixture is in conftest)."""

from __future__ import annotations


class Node:
    """A container the collector tracks; two that point at each other make a cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None

