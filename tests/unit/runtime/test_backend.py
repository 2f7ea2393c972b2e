"""What every back end shares. The ledger keeps a stream's counters across its stops and
starts (they start from 0 only when the daemon does) and forgets failures of streams no longer
wanted; `Desired` sorts the registry out by mode once per pass."""

from __future__ import annotations

import pytest

from sfmd.registry import Mode, StreamSpec, validate_stream
from sfmd.runtime.backend import Desired, Ledger
from sfmd.status import COUNTERS, State, StreamStatus


def run(messages: int, reconnects: int = 0) -> StreamStatus:
    """A back end's status of one run: counted from that run's start."""
    return StreamStatus(state=State.STREAMING, messages=messages, tweets=messages - 1,
                        bytes=messages * 100, reconnects=reconnects, limit_undelivered=2)


def test_a_running_stream_shows_its_earlier_runs_counters_added() -> None:
    ledger = Ledger()
    first = run(5)
    assert ledger.running("s", first) is first  # a first run: as its back end counts
    ledger.stopped("s", run(10, reconnects=1))
    stopped = ledger.status("s")
    assert (stopped.state, stopped.messages, stopped.reconnects) == (State.STOPPED, 10, 1)
    shown = ledger.running("s", run(3))
    assert (shown.state, shown.messages, shown.tweets, shown.bytes) == (
        State.STREAMING, 13, 11, 1300)
    assert (shown.reconnects, shown.limit_undelivered) == (1, 4)
    ledger.stopped("s", run(3))
    assert ledger.status("s").messages == 13
    assert ledger.running("s", run(0)).messages == 13


def test_a_deleted_stream_starts_again_from_zero() -> None:
    ledger = Ledger()
    ledger.stopped("s", run(10))
    ledger.forget("s")
    assert ledger.running("s", run(1)).messages == 1


def test_a_failed_stream_keeps_its_totals_too() -> None:
    ledger = Ledger()
    ledger.stopped("s", run(10))
    ledger.fail("s", "credential 'x' is not in the credentials file")
    failed = ledger.status("s")
    assert failed.state is State.FAILED and failed.messages == 10


def test_every_counter_is_carried() -> None:
    assert set(COUNTERS) <= set(StreamStatus.__dataclass_fields__)
    earlier = StreamStatus(**{key: 1 for key in COUNTERS})
    now = StreamStatus(**{key: 2 for key in COUNTERS}).plus(earlier)
    assert all(getattr(now, key) == 3 for key in COUNTERS)


def test_files_published_add_up_across_runs_until_the_stream_is_deleted() -> None:
    ledger = Ledger()
    ledger.stopped("s", run(1), published=2)
    ledger.stopped("s", run(1), published=3)
    assert ledger.published["s"] == 5
    ledger.forget("s")
    assert "s" not in ledger.published


def spec(name: str, **settings: object) -> StreamSpec:
    body = {"name": name, "kind": "filter", "credential": "alpha", **settings}
    return validate_stream({"track": ["cats"], **body} if "rules" not in body else body)


def test_desired_sorts_the_active_streams_by_mode_and_names_every_stream() -> None:
    task, idle = spec("a"), spec("b", active=False)
    process = spec("c", isolation="process")
    shared = spec("d", api="v2", rules=[{"value": "cats"}])
    desired = Desired([task, idle, process, shared])
    assert desired.active(Mode.TASK) == {"a": task}
    assert desired.active(Mode.PROCESS) == {"c": process}
    assert desired.active(Mode.SHARED) == {"d": shared}
    assert desired.names == {"a", "b", "c", "d"}


def test_only_failures_of_streams_still_wanted_are_kept() -> None:
    ledger = Ledger()
    ledger.fail("kept", "credential 'x' is gone")
    ledger.fail("gone", "credential 'y' is gone")
    ledger.keep_failures_of(lambda name: name == "kept")
    assert set(ledger.failed) == {"kept"}
    assert ledger.status("kept").state is State.FAILED
    assert ledger.status("gone").state is State.STOPPED


def shape(desired: Desired) -> list[object]:
    """Everything a back end reads of a `Desired`, orders included."""
    return [
        [s.name for s in desired.specs], desired.specs, desired.names,
        *[list(desired.active(mode).items()) for mode in Mode],
    ]


@pytest.mark.parametrize(("name", "after"), [
    ("c", {"track": ["dogs"]}),  # a new setting, in place
    ("c", {"active": False}),  # stopped
    ("b", {"active": True}),  # started, between two running streams
    ("c", {"isolation": "process"}),  # moved to another back end
    ("a0", {}),  # a new stream first in name order
    ("c0", {}),  # ... in the middle
    ("z", {}),  # ... last
    ("c", None),  # deleted
    ("e", None),  # deleted, the last
])
def test_a_change_to_one_stream_makes_what_a_whole_pass_would_scoped_to_it(
    name: str, after: dict[str, object] | None
) -> None:
    streams = {s.name: s for s in [
        spec("a"), spec("b", active=False), spec("c"), spec("d", isolation="process"),
        spec("e", api="v2", rules=[{"value": "cats"}]),
    ]}
    before = Desired(list(streams.values()))
    kept = shape(before)
    if after is None:
        del streams[name]
        changed = before.changed(name, None)
    else:
        streams[name] = spec(name, **after)
        changed = before.changed(name, streams[name])
    assert shape(changed) == shape(Desired([streams[n] for n in sorted(streams)]))
    assert changed.scope == {name}
    assert before.scope is None
    assert shape(before) == kept  # the pass before is as it was
