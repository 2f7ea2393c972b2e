"""The log file's handler looks for a rename at most once per interval, and finds it then."""

from __future__ import annotations

import logging
from pathlib import Path

from sfmd.logs import _WatchedFile


def _line(handler: logging.Handler, text: str) -> None:
    handler.emit(logging.LogRecord("sfmd", logging.INFO, __file__, 1, text, None, None))


def test_a_rename_is_found_at_the_next_look_and_no_line_is_lost(tmp_path: Path) -> None:
    log, rotated = tmp_path / "sfmd.log", tmp_path / "sfmd.log.1"
    slow = _WatchedFile(log, encoding="utf-8", interval=3600)
    _line(slow, "one")
    log.rename(rotated)
    _line(slow, "two")  # within the interval: still the file it has open
    slow.close()
    assert rotated.read_text().splitlines() == ["one", "two"]
    assert not log.exists()

    rotated.unlink()
    eager = _WatchedFile(log, encoding="utf-8", interval=0)
    _line(eager, "three")
    log.rename(rotated)
    _line(eager, "four")  # looked: the rename is found and a new file begun
    eager.close()
    assert rotated.read_text().splitlines() == ["three"]
    assert log.read_text().splitlines() == ["four"]
