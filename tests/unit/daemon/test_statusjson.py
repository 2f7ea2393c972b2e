"""A task stream's kept STATUS JSON is always what encoding it whole gives, whatever changed
since the last page (sfmd.daemon.statusjson)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from sfmd.archive import Archive
from sfmd.daemon.statusjson import MOVING, StatusJson
from sfmd.status import State, StreamStatus
from tests.helpers.archive import make_archive

T0 = 1_800_000_000.25


def whole(status: StreamStatus, earlier: StreamStatus | None, archive: Archive) -> bytes:
    """The STATUS encoded from scratch, as a stream's that is not kept is."""
    return orjson.dumps(status.plus(earlier).to_dict(archive.coverage_shown()))


class Stream:
    """One running task stream's parts, as `Views.view_json` hands them over."""

    def __init__(self, tmp_path: Path) -> None:
        self.status = StreamStatus(state=State.CONNECTING, since=datetime.fromtimestamp(T0, UTC))
        self.earlier: StreamStatus | None = None
        self.archive = make_archive(tmp_path, clock=lambda: T0 + 100)
        self.kept = StatusJson()

    def check(self) -> dict[str, Any]:
        """The kept JSON against the whole one, twice (a second page with nothing changed)."""
        expected = whole(self.status, self.earlier, self.archive)
        for _ in range(2):
            got = self.kept.of("s", self.status, self.earlier, self.archive)
            assert got == expected
        shown: dict[str, Any] = orjson.loads(expected)
        return shown


def changed(value: Any) -> Any:
    """Another value of `value`'s kind, for a field of StreamStatus."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value + 7.5
    if isinstance(value, State):
        return State.BACKOFF if value is not State.BACKOFF else State.FAILED
    if isinstance(value, datetime):
        return value + timedelta(seconds=61)
    if isinstance(value, str):
        return value + " again"
    raise AssertionError(f"no other value for {value!r}")


#: A value for each field of StreamStatus that may be None (or is a dict), to change it to.
SET_TO: dict[str, Any] = {
    "last_error": 'HTTP 420: {"messages":1} \x00',  # text that looks like JSON, a control
    "current_file": "stream/2027/01/01/x.jsonl.gz.part",
    "connection": None,  # only a shared connection's members have one: never kept
    "process": None,  # only a supervisord program has one: never kept
    "connected_since": datetime.fromtimestamp(T0 + 5, UTC),
    "last_gap": {"from": "x", "to": None, "reason": "backoff", "error": None, "refilled": "none"},
    "gap_seconds": {"backoff": 3.0},
    "down_since": datetime.fromtimestamp(T0 + 9, UTC),
    "next_attempt": datetime.fromtimestamp(T0 + 19, UTC),
    "last_message_at": T0 + 3,
    "last_publish_at": T0 + 4,
}


async def test_every_change_to_the_status_shows_as_encoding_it_whole_would(
    tmp_path: Path,
) -> None:
    stream = Stream(tmp_path)
    stream.check()
    for f in dataclasses.fields(StreamStatus):
        value = getattr(stream.status, f.name)
        new = SET_TO[f.name] if f.name in SET_TO else changed(value)
        if new is None and value is None:
            continue
        setattr(stream.status, f.name, new)
        stream.check()
    stream.status.messages += 1  # one message: only a moving field
    assert stream.check()["messages"] == stream.status.messages


async def test_every_change_to_the_archive_shows_as_encoding_it_whole_would(
    tmp_path: Path,
) -> None:
    stream = Stream(tmp_path)
    archive, coverage = stream.archive, stream.archive.coverage
    steps = [
        lambda: coverage.down(T0 + 1, "backoff", "refused"),
        lambda: coverage.up(T0 + 2),
        lambda: coverage.refill("some", ("deletes",)),
        lambda: coverage.refill("all"),
        lambda: coverage.instant(T0 + 3, "event_refused", "too large"),
        lambda: coverage.written_until(T0 + 4),
        lambda: coverage.down(T0 + 5, "reconnect"),
        lambda: setattr(archive, "current_file", tmp_path / "s" / "a.jsonl.gz.part"),
        lambda: setattr(archive, "current_file", tmp_path / "s" / "b.jsonl.gz.part"),
        lambda: setattr(archive, "last_written", T0 + 6.0004),
        lambda: setattr(archive, "last_written", T0 + 6.0016),
        lambda: setattr(archive, "last_published", T0 + 7),
        lambda: setattr(archive, "current_file", None),
    ]
    shown = [stream.check()]
    for step in steps:
        step()
        shown.append(stream.check())
    assert shown[1]["last_gap"]["error"] == "refused"
    assert shown[3]["last_gap"]["refilled"] == "some"
    assert shown[-3]["last_message_at"] == "2027-01-15T08:00:06.251Z"  # T0 + 6.0016


async def test_earlier_runs_show(tmp_path: Path) -> None:
    stream = Stream(tmp_path)
    stream.status.messages, stream.status.bytes = 5, 500
    stream.check()
    stream.earlier = StreamStatus(messages=10, tweets=4, bytes=1000, reconnects=2)
    assert stream.check()["messages"] == 15
    stream.earlier = dataclasses.replace(stream.earlier, messages=11, reconnects=3)
    assert stream.check()["reconnects"] == 3


async def test_a_new_archive_of_the_same_stream_is_not_taken_for_the_old(tmp_path: Path) -> None:
    stream = Stream(tmp_path)
    stream.archive.coverage.down(T0 + 1, "backoff", "first")
    stream.check()
    # A restart: a new archive whose coverage has had as many changes as the old one.
    stream.archive = make_archive(tmp_path, clock=lambda: T0 + 100)
    stream.archive.coverage.down(T0 + 1, "backoff", "second")
    assert stream.check()["last_gap"]["error"] == "second"


async def test_streams_that_are_gone_are_let_go(tmp_path: Path) -> None:
    kept = StatusJson()
    archive = make_archive(tmp_path)
    for name in ("a", "b", "c"):
        kept.of(name, StreamStatus(), None, archive)
    kept.keep_only(["b"])
    assert len(kept) == 1


def test_the_moving_fields_are_status_fields() -> None:
    assert set(MOVING) <= set(StreamStatus().to_dict())


def _tweets_first(shown: dict[str, Any]) -> dict[str, Any]:
    return {"tweets": shown.pop("tweets"), **shown}  # now before "messages"


def _counters_apart(shown: dict[str, Any]) -> dict[str, Any]:
    messages = shown.pop("messages")
    return {"messages": messages, "extra": 1, **shown}  # in order, but not side by side


@pytest.mark.parametrize(("reordered", "refusal"), [
    (_tweets_first, "MOVING fields in their order"),
    (_counters_apart, "MOVING counters side by side"),
])  # fmt: skip
def test_a_status_without_the_moving_fields_where_they_are_cut_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    reordered: Callable[[dict[str, Any]], dict[str, Any]],
    refusal: str,
) -> None:
    to_dict = StreamStatus.to_dict

    def changed(self: StreamStatus, coverage: dict[str, Any] | None = None) -> dict[str, Any]:
        return reordered(to_dict(self, coverage))

    monkeypatch.setattr(StreamStatus, "to_dict", changed)
    with pytest.raises(AssertionError, match=refusal):
        StatusJson().of("s", StreamStatus(), None, make_archive(tmp_path))


async def test_a_page_gets_the_status_framed_after_the_streams_settings(tmp_path: Path) -> None:
    stream = Stream(tmp_path)
    kept = StatusJson(before=b',"status":', after=b"}")
    settings = b'{"name":"s"'
    expected = whole(stream.status, stream.earlier, stream.archive)
    got = kept.pieces_of("s", stream.status, stream.earlier, stream.archive, head=settings)
    assert orjson.loads(b"".join(got)) == {"name": "s", "status": orjson.loads(expected)}
    stream.status.messages += 3
    stream.archive.last_written = T0 + 8
    moved = kept.moved("s", stream.status, stream.earlier, stream.archive, head=settings)
    assert moved is not None
    expected = whole(stream.status, stream.earlier, stream.archive)
    assert b"".join(moved) == settings + b',"status":' + expected + b"}"
