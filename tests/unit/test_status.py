"""The one-line summary of stream states that systemd's STATUS= shows (sfmd.status)."""

from __future__ import annotations

import pytest

from sfmd.status import describe_states


@pytest.mark.parametrize(
    ("states", "line"),
    [
        ([], "0 streams"),
        (["streaming"], "1 stream: 1 streaming"),
        (["backoff", "streaming"] + ["streaming"] * 10, "12 streams: 11 streaming, 1 backoff"),
        (
            ["stopped", "failed", "connecting", "weird"],
            "4 streams: 1 connecting, 1 failed, 1 stopped, 1 weird",
        ),
    ],
)
def test_describe_states(states: list[str], line: str) -> None:
    assert describe_states(states) == line
