"""The reconcile pass as data: `diff` decides, without a socket, what stops, reconnects and
starts."""

from __future__ import annotations

from typing import Any

from sfmd.registry import StreamSpec, validate_stream, with_people_ids
from sfmd.runtime.reconcile import GONE, MOVED, RENEWED, Plan, diff


def spec(name: str, **settings: Any) -> StreamSpec:
    body = {"name": name, "kind": "filter", "track": ["cats"], "credential": "alpha", **settings}
    return validate_stream(body)


def test_nothing_to_do_when_running_equals_desired() -> None:
    a = spec("a")
    assert diff({"a": a}, {"a": a}) == Plan()
    assert diff({"a": a}, {"a": a}).empty


def test_new_streams_start_and_removed_ones_stop_in_name_order() -> None:
    plan = diff({"b": spec("b"), "a": spec("a")}, {"c": spec("c"), "d": spec("d")})
    assert plan.stop == (("c", GONE), ("d", GONE))
    assert plan.start == ("a", "b")
    assert not plan.retarget and not plan.refresh


def test_a_new_filter_on_the_same_credential_reconnects_without_a_stop() -> None:
    plan = diff({"a": spec("a", track=["dogs"])}, {"a": spec("a")})
    assert plan == Plan(retarget=("a",))


def test_a_new_credential_is_a_stop_then_a_start() -> None:
    plan = diff({"a": spec("a", credential="beta")}, {"a": spec("a")})
    assert plan == Plan(stop=(("a", MOVED),), start=("a",))


def test_a_change_the_connection_never_sees_is_a_refresh() -> None:
    running = spec("a", follow=["12"], people=["alice"])
    # users/lookup found alice's id, which follow already holds: the wire stays the same.
    wanted = with_people_ids(running, {"alice": "12"})
    assert wanted != running and wanted.wire_params() == running.wire_params()
    assert diff({"a": wanted}, {"a": running}) == Plan(refresh=("a",))


def test_held_back_streams_do_not_start() -> None:
    plan = diff({"a": spec("a"), "b": spec("b")}, {}, held_back={"a"})
    assert plan.start == ("b",)


def test_new_keys_for_its_credential_are_a_stop_then_a_start() -> None:
    """A reload changed the credential's keys: same settings, a new connection."""
    a, b = spec("a"), spec("b", credential="beta")
    plan = diff({"a": a, "b": b}, {"a": a, "b": b}, renewed={"a"})
    assert plan == Plan(stop=(("a", RENEWED),), start=("a",))


def test_renewed_keys_of_a_stream_that_is_to_stop_just_stop_it() -> None:
    plan = diff({}, {"a": spec("a")}, renewed={"a"})
    assert plan == Plan(stop=(("a", GONE),))


def test_only_changed_streams_are_planned_in_name_order_whatever_order_they_run_in() -> None:
    same = spec("m")
    running = {"z": spec("z"), "m": same, "b": spec("b"), "a": spec("a")}
    plan = diff({"m": same, "b": spec("b", track=["dogs"]), "c": spec("c")}, running)
    assert plan.stop == (("a", GONE), ("z", GONE))
    assert plan.retarget == ("b",)
    assert plan.start == ("c",)
