"""What a view keeps of each stream is made again exactly for the streams that changed, and
for those that cannot tell (sfmd.daemon.shown)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sfmd.changes import Changes
from sfmd.daemon.shown import Shown
from sfmd.registry import StreamSpec
from tests.helpers.specs import filt, ok


def spec(name: str, *track: str) -> StreamSpec:
    return ok(filt(name=name, track=list(track or ["x"])))


class Left(Exception):
    """A walk left halfway, as a request cancelled there leaves it."""


class View:
    """A view of each stream: its name and how many times it was made; streams named in
    `unkept` cannot tell when they change. Making `fail_on` leaves the walk there."""

    def __init__(self, changes: Changes, **kwargs: Any) -> None:
        self.made: list[str] = []
        self.count: dict[str, int] = {}
        self.unkept: set[str] = set()
        self.fail_on: str | None = None
        self.shown = Shown(changes, self.make, **kwargs)

    def make(self, spec: StreamSpec) -> tuple[str, bool]:
        if spec.name == self.fail_on:
            raise Left(spec.name)
        self.made.append(spec.name)
        self.count[spec.name] = self.count.get(spec.name, 0) + 1
        return f"{spec.name}:{self.count[spec.name]}:{spec.track[0]}", spec.name not in self.unkept

    def show(self, specs: list[StreamSpec]) -> list[str]:
        self.made.clear()
        return list(self.shown.now(specs))


def test_only_what_changed_is_made_again() -> None:
    changes = Changes()
    view = View(changes)
    specs = [spec("a"), spec("b"), spec("c")]
    assert view.show(specs) == ["a:1:x", "b:1:x", "c:1:x"]
    assert view.show(list(specs)) == ["a:1:x", "b:1:x", "c:1:x"] and view.made == []
    changes.notices_for("b")[0]()
    assert view.show(list(specs)) == ["a:1:x", "b:2:x", "c:1:x"] and view.made == ["b"]
    changes.touch("c")
    changes.touch("nobody")  # a name no spec has
    assert view.show(list(specs)) == ["a:1:x", "b:2:x", "c:2:x"] and view.made == ["c"]


def test_a_changed_spec_is_made_again_and_an_equal_one_is_not() -> None:
    view = View(Changes())
    specs = [spec("a"), spec("b")]
    view.show(specs)
    patched = [specs[0], spec("b", "y")]
    assert view.show(patched) == ["a:1:x", "b:2:y"] and view.made == ["b"]
    same = [dataclasses.replace(patched[0]), patched[1]]  # another object, the same settings
    view.show(same)
    assert view.made == []


def test_streams_added_removed_or_renamed_make_only_the_new_ones() -> None:
    changes = Changes()
    view = View(changes)
    a, b = spec("a"), spec("b")
    view.show([a, b])
    assert view.show([a, spec("aa"), b]) == ["a:1:x", "aa:1:x", "b:1:x"]
    assert view.made == ["aa"]
    assert view.show([a, b]) == ["a:1:x", "b:1:x"] and view.made == []
    assert view.show([spec("a"), spec("c")]) == ["a:1:x", "c:1:x"]  # equal settings: kept
    assert view.made == ["c"]
    assert view.show([spec("a", "y"), spec("d")]) == ["a:2:y", "d:1:x"]  # a patched too
    assert view.show([]) == []
    assert view.show([spec("a", "y")]) == ["a:3:y"]


def test_what_was_owed_moved_on_or_unkept_keeps_owing_at_its_new_place() -> None:
    changes = Changes()
    view = View(changes, move=lambda spec, value: value + "+")
    view.unkept = {"c"}
    a, b, c = spec("a"), spec("b"), spec("c")
    view.show([a, b, c])
    changes.notices_for("a")[1]()  # moved on
    changes.notices_for("b")[0]()  # changed
    view.fail_on = "b"
    with pytest.raises(Left):  # a moved on, then left there: b is still owed, c unkept
        view.show([a, b, c])
    view.fail_on = None
    assert view.show([spec("0"), a, b, c]) == ["0:1:x", "a:1:x+", "b:2:x", "c:2:x"]
    assert view.made == ["0", "b", "c"]
    assert view.show([a, b, c]) == ["a:1:x+", "b:2:x", "c:3:x"] and view.made == ["c"]


def test_a_stream_that_cannot_tell_is_made_every_time_until_it_can() -> None:
    changes = Changes()
    view = View(changes)
    view.unkept = {"b"}
    specs = [spec("a"), spec("b")]
    view.show(specs)
    view.show(specs)
    assert view.made == ["b"]
    view.unkept = set()
    view.show(specs)
    view.show(specs)
    assert view.made == []


async def test_made_with_turns_is_the_same() -> None:
    changes = Changes()
    view = View(changes)
    specs = [spec(f"s{i}") for i in range(50)]
    assert await view.shown.refreshed(specs) == [f"s{i}:1:x" for i in range(50)]
    changes.touch("s7")
    shown = await view.shown.refreshed(specs)
    assert shown[7] == "s7:2:x" and view.count["s8"] == 1


def test_two_views_each_see_every_change() -> None:
    changes = Changes()
    one, two = View(changes), View(changes)
    specs = [spec("a"), spec("b")]
    one.show(specs)
    two.show(specs)
    changes.notices_for("a")[0]()
    one.show(specs)
    two.show(specs)
    assert one.made == two.made == ["a"]


def test_a_walk_left_halfway_leaves_nothing_stale() -> None:
    changes = Changes()
    view = View(changes)
    specs = [spec("a"), spec("b"), spec("c")]
    view.fail_on = "b"  # a request cancelled there
    with pytest.raises(Left):
        view.show(specs)
    view.fail_on = None
    assert view.show(specs) == ["a:1:x", "b:1:x", "c:1:x"] and view.made == ["b", "c"]
    changes.touch("a")
    changes.touch("c")
    view.fail_on = "c"
    with pytest.raises(Left):
        view.show(specs)
    view.fail_on = None
    assert view.show(specs) == ["a:2:x", "b:1:x", "c:2:x"] and view.made == ["c"]


def test_a_stream_only_moved_on_is_moved_made_or_left_as_each_view_wants() -> None:
    changes = Changes()
    moves: list[str] = []

    def move(spec: StreamSpec, value: str) -> str:
        moves.append(spec.name)
        return value + "+"

    pages, metrics, health = View(changes, move=move), View(changes), View(changes, counts=False)
    specs = [spec("a"), spec("b")]
    for view in (pages, metrics, health):
        view.show(specs)
    changes.notices_for("a")[1]()  # a message: a moved on
    changes.notices_for("b")[1]()
    changes.notices_for("b")[0]()  # b changed otherwise too
    assert pages.show(specs) == ["a:1:x+", "b:2:x"] and pages.made == ["b"] and moves == ["a"]
    assert metrics.show(specs) == ["a:2:x", "b:2:x"]
    assert health.show(specs) == ["a:1:x", "b:2:x"] and health.made == ["b"]


def test_a_stream_that_changed_is_made_even_if_it_was_to_be_moved_on() -> None:
    changes = Changes()
    view = View(changes, move=lambda spec, value: value + "+")
    specs = [spec("0"), spec("a")]
    view.show(specs)
    changes.notices_for("a")[1]()
    changes.touch("0")
    view.fail_on = "0"
    with pytest.raises(Left):  # planned, not walked: a is still to be moved on
        view.show(specs)
    view.fail_on = None
    changes.notices_for("a")[0]()
    assert view.show(specs) == ["0:2:x", "a:2:x"]


async def test_ahead_does_what_the_streams_told_of_and_leaves_the_unkept_to_the_page() -> None:
    changes = Changes()
    moves: list[str] = []

    def move(spec: StreamSpec, value: str) -> str:
        moves.append(spec.name)
        return value + "+"

    view = View(changes, move=move)
    view.unkept = {"c"}
    specs = [spec("a"), spec("b"), spec("c"), spec("d")]
    view.show(specs)
    changes.notices_for("a")[1]()  # a message: a moved on
    changes.notices_for("b")[0]()  # b changed
    changes.notices_for("c")[1]()  # c cannot tell: the page makes it anyway
    view.made.clear()
    assert await view.shown.ahead(specs) == ["a:1:x+", "b:2:x", "c:1:x", "d:1:x"]
    assert view.made == ["b"] and moves == ["a"]
    assert view.show(specs) == ["a:1:x+", "b:2:x", "c:2:x", "d:1:x"]
    assert view.made == ["c"] and moves == ["a"]  # the page found a and b done
