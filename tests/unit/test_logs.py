"""The log file's handler looks for a rename at most once per interval, and finds it then;
and a line costs no look-up of where it was logged from."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sfmd.logs import _WatchedFile, get_logger, setup_logging


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


def test_a_line_is_logged_without_looking_up_its_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing shows where a line was logged from, so the stdlib must not walk the stack
    for it: that was 40 % of a line's cost."""
    monkeypatch.setattr(logging, "_srcfile", logging._srcfile)  # put back afterwards
    setup_logging(tmp_path / "sfmd.log", stderr=False)
    looked: list[str] = []
    logger_class = type(logging.getLogger("sfmd"))  # structlog's, which finds callers its way
    found = logger_class.findCaller

    def counted(self: logging.Logger, *args: Any, **kwargs: Any) -> Any:
        looked.append(self.name)
        return found(self, *args, **kwargs)

    monkeypatch.setattr(logger_class, "findCaller", counted)
    try:
        get_logger(stream="s1").info("published", file="s1/x.jsonl.gz")
    finally:
        setup_logging(None, stderr=False)
    line = json.loads((tmp_path / "sfmd.log").read_text())
    assert (line["event"], line["stream"], line["file"]) == ("published", "s1", "s1/x.jsonl.gz")
    assert looked == []
