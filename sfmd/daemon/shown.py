"""What a view showed of each stream, kept in the registry's order, made again only for the
streams that changed since (`sfmd.changes`).

A value is kept only when its stream can say it changed: a task stream whose status and
archive are watched (`keep` true from `make`). Any other (stopped, failed, shared, in its own
process) is made again every time, as before. A stream whose settings changed is a new spec
object, so it is made again too; when streams are added, removed or renamed, the others'
values move to their new places.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from sfmd.changes import Changes
from sfmd.registry import StreamSpec
from sfmd.turns import in_turns

_T = TypeVar("_T")


class Shown(Generic[_T]):
    """Each stream's value (`make(spec)` → value, keep), in the order of the specs given.

    One reader of `changes` each: two views must not share one, and one view must not refresh
    from two places at once (`refreshed` lets the loop run between two values: its caller
    serialises them).
    """

    def __init__(
        self,
        changes: Changes,
        make: Callable[[StreamSpec], tuple[_T, bool]],
        *,
        move: Callable[[StreamSpec, _T], _T] | None = None,
        counts: bool = True,
    ) -> None:
        """`move(spec, value)`: the value of a stream a message or a rotation only moved on
        (its counters, files and their moments), from the one it replaces; without it such a
        stream is made again. `counts` false: the value shows none of those, and such a
        stream is left as it is (`/health`)."""
        self._changes = changes
        self._reader = changes.reader()
        self._make = make
        self._move = move
        self._counts = counts
        self._specs: list[StreamSpec] = []
        self._values: list[_T] = []
        self._index: dict[str, int] = {}
        self._unkept: set[int] = set()  # made again every time
        self._owed: set[int] = set()  # to be made before they are shown again
        self._moving: set[int] = set()  # to be moved on (`move`) before they are shown again

    def now(self, specs: list[StreamSpec]) -> list[_T]:
        """Every stream's value, in `specs`' order, in one go."""
        for i in self._plan(specs):
            self._make_at(i)
        return self._values

    async def refreshed(self, specs: list[StreamSpec]) -> list[_T]:
        """As `now`, with turns for the rest of the loop while many are made (`turns`)."""
        await in_turns(self._plan(specs), self._make_at)
        return self._values

    async def ahead(self, specs: list[StreamSpec]) -> list[_T]:
        """What the streams told of since the last look, made or moved on ahead of the next
        `refreshed` (`sfmd.control.warm`), which then finds less to do; the values as they
        now are. Those made again every time are left to it (made now, they would be made
        again then), as they were."""
        await in_turns(self._plan(specs, ahead=True), self._make_at, giving_way=True)
        return self._values

    def _make_at(self, i: int) -> None:
        self._moving.discard(i)
        if i not in self._owed:
            assert self._move is not None
            self._values[i] = self._move(self._specs[i], self._values[i])
            return
        value, keep = self._make(self._specs[i])
        self._values[i] = value
        self._owed.discard(i)
        if keep:
            self._unkept.discard(i)
        else:
            self._unkept.add(i)

    def _plan(self, specs: list[StreamSpec], ahead: bool = False) -> list[int]:
        """The positions to make again or move on, in order (`ahead`: not those made again
        every time). What is owed stays owed until it is made, so a caller that stops halfway
        (a cancelled request) leaves nothing stale."""
        changed, moved = self._changes.take(self._reader)
        todo = self._differing(self._specs, specs)
        if todo is None:  # streams added, removed or renamed
            self._move_to(specs)
            todo = set()
        self._specs = specs
        index = self._index
        owed = self._owed
        owed |= todo
        owed.update(index[name] for name in changed if name in index)
        if self._counts:
            (owed if self._move is None else self._moving).update(
                index[name] for name in moved if name in index)
        if ahead:
            return sorted((owed | self._moving) - self._unkept)
        owed |= self._unkept
        return sorted(owed | self._moving)

    def _move_to(self, specs: list[StreamSpec]) -> None:
        """Put each kept value at its stream's place in `specs`, whose names are not those
        of the last specs: a stream added (or renamed to) is owed, one whose spec changed
        too. Adding one stream to 5,000 once made every value again, the whole page's work."""
        old_specs, old_index, old_values = self._specs, self._index, self._values
        owed, moving, unkept = self._owed, self._moving, self._unkept
        values: list[_T] = []
        self._owed, self._moving, self._unkept = set(), set(), set()
        for j, spec in enumerate(specs):
            i = old_index.get(spec.name)
            if i is None or (old_specs[i] is not spec and old_specs[i] != spec):
                values.append(None)  # type: ignore[arg-type]
                self._owed.add(j)
                continue
            values.append(old_values[i])
            if i in owed:
                self._owed.add(j)
            if i in moving:
                self._moving.add(j)
            if i in unkept:
                self._unkept.add(j)
        self._values = values
        self._index = {spec.name: j for j, spec in enumerate(specs)}

    @staticmethod
    def _differing(old: list[StreamSpec], new: list[StreamSpec]) -> set[int] | None:
        """Positions whose spec changed (a PATCH), or None when the names differ."""
        if len(old) != len(new) or not new:
            return None
        if old == new:  # compares identity first, in C: the common case costs nothing
            return set()
        differing = set()
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a is not b:
                if a.name != b.name:
                    return None
                differing.add(i)
        return differing
