"""sfmctl's pure parts: the outage under a down stream's row, and reading a log's last lines
backwards (the command itself runs end to end in tests/system)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from sfmd import ctl, logline

NOW = datetime(2026, 12, 5, 1, 0, 0, tzinfo=UTC)


def stream(**status: Any) -> dict[str, Any]:
    base = {"state": "backoff", "since": "2026-12-05T00:59:58Z", "messages": 0, "tweets": 0,
            "bytes": 0, "reconnects": 9, "last_error": "HTTP 503", "current_file": None}
    return {"name": "s", "kind": "sample", "status": {**base, **status}}


def test_a_down_stream_shows_its_whole_outage_and_next_attempt() -> None:
    shown = ctl.render_status([stream(down_since="2026-12-05T00:53:20Z",
                                      next_attempt="2026-12-05T01:02:05Z")], None, NOW)
    row, error, outage = shown.splitlines()[1:]
    assert row.split()[4] == "6m40s"  # SINCE: the outage, not the latest retry (2s)
    assert error == "    last error: HTTP 503"
    assert outage == ("    down 6m40s (since 2026-12-05T00:53:20Z), next attempt in 2m05s "
                      "(at 2026-12-05T01:02:05Z)")


def test_an_older_daemon_without_the_new_keys_still_renders() -> None:
    shown = ctl.render_status([stream()], None, NOW)
    assert shown.splitlines()[1].split()[4] == "2s" and len(shown.splitlines()) == 3
    assert ctl.reconnects_text({"reconnects": 4}) == "4"
    assert ctl.reconnects_text({"reconnects": 4, "reconnects_after_failure": 1,
                                "reconnects_planned": 3}) == "4 (1 after a failure, 3 planned)"


@pytest.mark.parametrize("block", [7, 64, 1 << 16])
def test_the_last_lines_are_found_backwards_whatever_the_block(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ctl, "TAIL_BLOCK", block)
    events = [{"timestamp": f"t{i}", "level": "info", "event": "e", "stream": f"s{i % 3}",
               "n": i} for i in range(50)]
    text = "\n".join(json.dumps(e) for e in events) + "\n"
    f = io.BytesIO(text.encode())
    lines = ctl.last_lines(f, 4, lambda raw: ctl._wanted(raw, "s1"))
    assert [json.loads(line)["n"] for line in lines] == [37, 40, 43, 46, 49][-4:]
    assert f.tell() == len(text)  # following begins at the end
    everything = ctl.last_lines(io.BytesIO(text.encode()), 500, lambda raw: True)
    assert len(everything) == 50 and json.loads(everything[0])["n"] == 0


def test_console_lines_are_filtered_by_who_they_are_about() -> None:
    line = logline.render({"timestamp": "2026-12-05T01:00:00.123456Z", "level": "warning",
                           "event": "disconnected", "stream": "news", "reason": "HTTP 503",
                           "repeated": 12, "over": 60.0, "attempts": 12})
    assert line == ("2026-12-05T01:00:00.123Z WARN  news             disconnected: HTTP 503 "
                    "(... 12 more in 60 s)  attempts=12")
    assert ctl._wanted(line.encode(), "news") and not ctl._wanted(line.encode(), "new")
