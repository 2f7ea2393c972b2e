"""A watched archive tells of every change to what a stream's status shows of it: its
coverage, its open file, its last message and last publish (`Archive.watch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sfmd.archive import Archive
from tests.helpers.archive import Clock, batch, make_archive, wait_for


class Watcher:
    """What the archive showed at its last notice; `check` says nothing changed since."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.notices = 0
        self.moves = 0
        self.seen = self.shown()
        archive.watch(self, self.moved)

    def shown(self) -> Any:
        coverage = self.archive.coverage_shown()
        coverage.pop("gap_seconds")  # moves with the clock: no notice can follow it
        return coverage, self.archive.shown_key(), self.archive.last_written

    def __call__(self) -> None:
        self.notices += 1
        self.seen = self.shown()

    def moved(self) -> None:
        """A message taken or a rotation: only the last message's moment, the open file and
        the last publish may have moved on."""
        self.moves += 1
        before, self.seen = self.seen, self.shown()
        assert _without_moving(before) == _without_moving(self.seen)

    def check(self) -> int:
        """The notices so far, once the archive is shown as it was at the last one."""
        assert self.shown() == self.seen
        return self.notices


def _without_moving(shown: Any) -> Any:
    coverage, key, _ = shown
    moving = ("last_message_at", "current_file", "last_publish_at")
    return {k: v for k, v in coverage.items() if k not in moving}, key


async def test_every_change_a_status_shows_is_told(tmp_path: Path) -> None:
    clock = Clock()
    clock.align(1, into=0.5)
    archive = make_archive(tmp_path, save_interval=1, clock=clock, publish_spread=0)
    watcher = Watcher(archive)
    await archive.open()
    told = watcher.check()
    steps = [
        lambda: archive.streaming(),  # no gap to end: only when it streams since changes
        lambda: archive.not_streaming("backoff", "HTTP 503"),
        lambda: archive.streaming(),
        lambda: archive.refilled("some", ("deletes",)),
        lambda: archive.refused("too large"),
        lambda: archive.asking({"track": ["x"]}),
        lambda: archive.not_streaming("reconnect"),
        lambda: archive.streaming(),
    ]
    for step in steps:
        step()
        assert watcher.check() > told
        told = watcher.notices
    await archive.write(batch("a", 3), 3)
    assert watcher.check() == told and watcher.moves == 1  # a message moves, changes nothing
    await wait_for(lambda: archive.current_file is not None)
    told, moves = watcher.check(), watcher.moves
    assert moves == 2  # the file opened
    await wait_for(lambda: archive.last_published is not None, timeout=4)  # the boundary
    await wait_for(lambda: archive.current_file is None)
    # A publish and its file closed move on; what the manifest took changes nothing shown.
    assert watcher.check() == told and watcher.moves >= moves + 2
    await archive.write(batch("b", 2), 2)
    await wait_for(lambda: archive.current_file is not None)
    told, moves = watcher.check(), watcher.moves
    await archive.close()
    assert watcher.check() >= told and watcher.moves > moves
