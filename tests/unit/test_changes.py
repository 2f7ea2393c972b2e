"""Streams tell which of them changed, and which a message only moved on; each reader takes
the names once (sfmd.changes)."""

from __future__ import annotations

from sfmd.changes import Changes


def test_each_reader_takes_every_change_once() -> None:
    changes = Changes()
    pages, health = changes.reader(), changes.reader()
    changed, _ = changes.notices_for("a")
    changed()
    changed()
    changes.touch("b")
    assert changes.take(pages) == ({"a", "b"}, set())
    assert changes.take(pages) == (set(), set())
    changes.notices_for("c")[0]()
    assert changes.take(health) == ({"a", "b", "c"}, set())  # the other's take kept them here
    assert changes.take(pages) == ({"c"}, set())
    assert changes.take(health) == (set(), set())


def test_a_stream_only_moved_on_is_told_apart_from_one_that_changed() -> None:
    changes = Changes()
    reader = changes.reader()
    for name in ("a", "b"):
        changes.notices_for(name)[1]()
    changes.notices_for("b")[0]()  # b also changed otherwise: it counts as changed
    assert changes.take(reader) == ({"b"}, {"a"})
    assert changes.take(reader) == (set(), set())


def test_a_reader_that_comes_later_starts_from_nothing() -> None:
    changes = Changes()
    first = changes.reader()
    changes.touch("a")
    changes.take(first)
    late = changes.reader()
    assert changes.take(late) == (set(), set())


def test_a_forgotten_stream_is_nobodys_change() -> None:
    changes = Changes()
    reader = changes.reader()
    changes.touch("gone")
    changes.notices_for("gone")[1]()
    changes.touch("kept")
    changes.take(changes.reader())  # hands "gone" to every reader
    changes.touch("gone")
    changes.forget("gone")
    assert changes.take(reader) == ({"kept"}, set())
