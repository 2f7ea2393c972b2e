"""The task back end's plan: a stream whose credential's keys changed since it started is
stopped and started again, and the runners are asked only when the keys may have changed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sfmd.config import load_config
from sfmd.credentials import Credential
from sfmd.registry import StreamSpec, validate_stream
from sfmd.runtime.backend import Desired, Ledger
from sfmd.runtime.reconcile import GONE, RENEWED, Plan
from sfmd.runtime.tasks import TaskBackend


class Runner:
    """What `plan` reads of a running stream: its spec and the keys it connected with,
    counting how often the keys are asked for."""

    def __init__(self, spec: StreamSpec, credential: Credential) -> None:
        self.spec = spec
        self._credential = credential
        self.asked = 0

    @property
    def credential(self) -> Credential:
        self.asked += 1
        return self._credential


def backend(tmp_path: Path, keys: dict[str, dict[str, Credential]]) -> TaskBackend:
    """A task back end reading the credentials file's contents from `keys["now"]`."""
    config_file = tmp_path / "sfmd.toml"
    config_file.write_text("")

    async def never() -> None:
        raise AssertionError("no pass runs here")

    def no_session() -> Any:
        raise AssertionError("nothing connects here")

    return TaskBackend(
        load_config(config_file), no_session, lambda: keys["now"], Ledger(),
        reconcile=never, lock=asyncio.Lock(),
    )


def test_new_keys_renew_the_stream_until_it_runs_with_them(tmp_path: Path) -> None:
    spec = validate_stream(
        {"name": "a", "kind": "filter", "track": ["cats"], "credential": "alpha"}
    )
    old, new = Credential("alpha", consumer_key="k1"), Credential("alpha", consumer_key="k2")
    keys = {"now": {"alpha": old}}
    tasks = backend(tmp_path, keys)
    runner = Runner(spec, old)
    tasks.runners["a"] = runner  # type: ignore[assignment]
    desired = Desired([spec])

    assert tasks.plan(desired) == Plan()
    asked = runner.asked
    assert tasks.plan(desired) == Plan()
    assert runner.asked == asked  # the same credentials: the runners are not asked again

    keys["now"] = {"alpha": new}  # a reload with new keys
    renewed = Plan(stop=(("a", RENEWED),), start=("a",))
    assert tasks.plan(desired) == renewed
    assert tasks.plan(desired) == renewed  # still, until it is stopped

    tasks.runners["a"] = Runner(spec, new)  # type: ignore[assignment]  # started again
    assert tasks.plan(desired) == Plan()


def test_a_pass_after_one_change_plans_for_that_stream_alone(tmp_path: Path) -> None:
    def spec(name: str, *track: str) -> StreamSpec:
        return validate_stream(
            {"name": name, "kind": "filter", "track": list(track), "credential": name}
        )

    keys = {"now": {n: Credential(n, consumer_key="k") for n in "abc"}}
    tasks = backend(tmp_path, keys)
    a, b = spec("a", "cats"), spec("b", "cats")
    for running in (a, b):
        tasks.runners[running.name] = Runner(running, keys["now"][running.name])  # type: ignore[assignment]
    # `b` runs settings the registry no longer holds: a whole pass would retarget it.
    whole = Desired([a, spec("b", "dogs")])
    assert tasks.plan(whole) == Plan(retarget=("b",))

    assert tasks.plan(whole.changed("a", spec("a", "mice"))) == Plan(retarget=("a",))
    assert tasks.plan(whole.changed("c", spec("c", "owls"))) == Plan(start=("c",))
    assert tasks.plan(whole.changed("a", None)) == Plan(stop=(("a", GONE),))
