"""The log file's handler looks for a rename at most once per interval, and finds it then;
a stream's parts log through one logger."""

from __future__ import annotations

import json
import logging
from pathlib import Path

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


def test_one_logger_for_the_same_bound_values_and_its_lines_carry_them(tmp_path: Path) -> None:
    runner, archive = get_logger(stream="s1"), get_logger(stream="s1")
    other = get_logger(stream="s2")
    assert runner is archive and other is not runner
    assert get_logger(connection="s1") is not runner  # the field's name counts too

    files = setup_logging(tmp_path / "sfmd.log", stderr=False)
    try:
        archive.info("published", file="a.jsonl.gz")
        other.info("published", file="b.jsonl.gz")
    finally:
        for handler in files.handlers:
            handler.close()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in (tmp_path / "sfmd.log").read_text().splitlines()]
    assert [(line["stream"], line["file"]) for line in lines] == [
        ("s1", "a.jsonl.gz"), ("s2", "b.jsonl.gz")]
