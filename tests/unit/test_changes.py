"""Streams tell which of them changed; each reader takes the names once (sfmd.changes)."""

from __future__ import annotations

from sfmd.changes import Changes


def test_each_reader_takes_every_change_once() -> None:
    changes = Changes()
    pages, health = changes.reader(), changes.reader()
    notice = changes.notice_for("a")
    notice()
    notice()
    changes.touch("b")
    assert changes.take(pages) == {"a", "b"}
    assert changes.take(pages) == set()
    changes.notice_for("c")()
    assert changes.take(health) == {"a", "b", "c"}  # what the other reader took stays here
    assert changes.take(pages) == {"c"}
    assert changes.take(health) == set()


def test_a_reader_that_comes_later_starts_from_nothing() -> None:
    changes = Changes()
    first = changes.reader()
    changes.touch("a")
    changes.take(first)
    late = changes.reader()
    assert changes.take(late) == set()


def test_a_forgotten_stream_is_nobodys_change() -> None:
    changes = Changes()
    reader = changes.reader()
    changes.touch("gone")
    changes.touch("kept")
    changes.take(changes.reader())  # hands "gone" to every reader's own set
    changes.touch("gone")
    changes.forget("gone")
    assert changes.take(reader) == {"kept"}
