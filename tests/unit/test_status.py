"""The one status vocabulary: the STATUS object's shape and its round trip through a file."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime

import pytest

from sfmd.status import (
    SAMPLE_MOVING,
    STATUS_KEYS,
    ConnectionStatus,
    State,
    StreamSample,
    StreamStatus,
    describe_states,
    epoch_iso,
)

SINCE = datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC)


def test_the_status_object_has_its_keys_in_order_and_nothing_else() -> None:
    shown = StreamStatus(State.BACKOFF, SINCE, 5, 4, 300, 2, "HTTP 503").to_dict()
    assert tuple(shown) == STATUS_KEYS
    assert shown["state"] == "backoff" and shown["since"] == "2026-12-04T21:00:00.123456Z"


def test_a_shared_connection_and_a_process_show_only_when_present() -> None:
    connection = ConnectionStatus("v2-filter@a", State.STREAMING, 9, 1, 0, 0, 2, [], None)
    shown = StreamStatus(connection=connection, process={"program": "p"}).to_dict()
    assert list(shown)[len(STATUS_KEYS):] == ["connection", "process"]
    assert shown["connection"]["state"] == "streaming" and shown["connection"]["rules"] == 2


def test_a_status_survives_the_status_file_and_junk_counts_as_nothing() -> None:
    status = StreamStatus(State.STREAMING, SINCE, 5, 4, 300, 2, None, "data/x.part")
    assert StreamStatus.from_dict(status.to_dict()) == status
    junk = StreamStatus.from_dict({"state": "dancing", "messages": "5", "since": 3})
    assert (junk.state, junk.messages, junk.last_error) == (State.STOPPED, 0, None)


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


def test_replaced_is_dataclasses_replace_without_init() -> None:
    status = StreamStatus(state=State.STREAMING, messages=3, gap_seconds={"stopped": 1.0})
    copy = status.replaced(current_file="a/b.part", messages=4)
    assert copy == dataclasses.replace(status, current_file="a/b.part", messages=4)
    assert (status.messages, status.current_file) == (3, None)  # the original is untouched
    with pytest.raises(TypeError, match="no field 'mesages'"):
        status.replaced(mesages=1)


def test_covered_takes_the_archives_coverage_and_changes_in_one_copy() -> None:
    status = StreamStatus(state=State.STREAMING, messages=3)
    shown = {"connected_since": 1796457600.5, "last_gap": None, "gap_seconds": {"stopped": 2.0},
             "last_message_at": 1796457660.25, "last_publish_at": None,
             "current_file": "s1/2026/12/05/s1-20261205T080000Z.jsonl.gz.part"}
    copy = status.covered(shown, messages=7)
    assert copy.to_dict() | {"since": None} == status.to_dict() | {
        "since": None, "messages": 7, "current_file": shown["current_file"],
        "connected_since": "2026-12-05T08:00:00.500000Z",
        "last_message_at": "2026-12-05T08:01:00.250Z",
    }
    assert copy.gap_seconds == {"stopped": 2.0} and status.messages == 3


@pytest.mark.parametrize("earlier", [None, StreamStatus(messages=10, tweets=9, reconnects=2)])
@pytest.mark.parametrize("coverage", [
    {"connected_since": 1796457600.5, "last_gap": None, "gap_seconds": {},
     "last_message_at": 1796457660.25, "last_publish_at": 1796457630.0,
     "current_file": "s1/2026/12/05/s1-20261205T080000Z.jsonl.gz.part"},
    {"connected_since": None, "last_gap": {"from": "2026-12-05T08:00:00.000Z", "to": None,
     "reason": "backoff", "error": "HTTP 503", "refilled": None},
     "gap_seconds": {"backoff": 3.5}, "last_message_at": None, "last_publish_at": None,
     "current_file": None},
    {"connected_since": 0.0, "last_gap": None, "gap_seconds": {}},  # no file keys at all
])
def test_to_dict_with_coverage_shows_what_the_covered_copy_shows(
    coverage: dict[str, object], earlier: StreamStatus | None
) -> None:
    status = StreamStatus(State.STREAMING, SINCE, 5, 4, 300, 2, "HTTP 420", "old.part",
                          connected_since=SINCE, last_message_at=1.0, last_publish_at=2.0)
    live = status.plus(earlier)
    assert live.to_dict(coverage) == status.covered(coverage).plus(earlier).to_dict()


def _by_datetime(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@pytest.mark.parametrize("moment", [
    0.0, 1.5, 1764921600.0, 1764921600.9995, 1764921600.9999995, 1764921600.0000005,
    1764921600.123, 1764921599.999999, 2**31 + 0.25, -1.5, -0.0000004,
])
def test_epoch_iso_writes_an_edge_as_datetime_does(moment: float) -> None:
    assert epoch_iso(moment) == _by_datetime(moment)


def test_epoch_iso_writes_many_moments_as_datetime_does() -> None:
    rng = random.Random(17)
    moments = [rng.uniform(0, 4e9) for _ in range(20_000)]
    moments += [rng.randrange(2**31) + rng.randrange(10**6) / 1e6 for _ in range(20_000)]
    assert [m for m in moments if epoch_iso(m) != _by_datetime(m)] == []


def test_a_watched_status_tells_of_every_change_and_its_copies_do_not() -> None:
    status = StreamStatus(State.STREAMING, SINCE)
    told: list[int] = []
    status.watch(lambda: told.append(1))
    for n, f in enumerate(dataclasses.fields(StreamStatus), start=1):
        setattr(status, f.name, getattr(status, f.name))  # even the same value is a change
        assert len(told) == n, f.name
    status.messages += 1
    assert len(told) == len(dataclasses.fields(StreamStatus)) + 1
    told.clear()
    copies = [
        status.replaced(messages=2), status.plus(StreamStatus(messages=1)),
        status.covered({"connected_since": None, "last_gap": None, "gap_seconds": {}}),
        dataclasses.replace(status, reconnects=4),
    ]
    for copy in copies:
        copy.messages += 1
    assert told == []
    assert copies[0] == dataclasses.replace(status, messages=3)  # the notice is no field


def test_a_message_s_counters_are_told_apart_from_other_changes() -> None:
    status = StreamStatus(State.STREAMING, SINCE)
    told: list[str] = []
    status.watch(lambda: told.append("changed"), lambda: told.append("moved"))
    status.messages += 1
    status.tweets += 1
    status.bytes += 100
    status.reconnects += 1
    status.state = State.BACKOFF
    assert told == ["moved", "moved", "moved", "changed", "changed"]


def test_a_sample_moved_on_is_the_sample_with_what_a_message_or_rotation_moves_replaced(
) -> None:
    sample = StreamSample("s", "streaming", 1, 2, 3, 4, 5, 6, {"backoff": 1.5}, 7, 8.5, 9.5)
    moved = sample.moved_on(11, 12, 13, 14, None, 19.5)
    assert moved == sample._replace(messages=11, tweets=12, bytes=13, files_published=14,
                                    last_message_at=None, last_publish_at=19.5)
    assert moved._replace(**{f: getattr(sample, f) for f in SAMPLE_MOVING}) == sample
    assert type(moved) is StreamSample and moved.gap_seconds is sample.gap_seconds
