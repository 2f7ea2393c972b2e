"""`in_turns` gives the event loop a turn once its time is up, and not before."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from sfmd import turns
from sfmd.turns import in_turns


async def _interleaving(turn: float, giving_way: bool = False) -> list[str]:
    """What a second task managed to do while `in_turns` went through five items."""
    seen: list[str] = []

    async def other() -> None:
        while True:
            seen.append("other")
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    try:
        await in_turns(range(5), lambda item: seen.append(f"item {item}"), turn=turn,
                       giving_way=giving_way)
    finally:
        task.cancel()
    return seen


async def test_no_turn_is_given_before_the_time_is_up() -> None:
    seen = await _interleaving(turn=3600)
    assert seen == [f"item {i}" for i in range(5)]


async def test_a_turn_is_given_whenever_the_time_is_up() -> None:
    seen = await _interleaving(turn=0)
    assert seen.count("other") >= 4
    assert [s for s in seen if s != "other"] == [f"item {i}" for i in range(5)]


async def test_work_that_gives_way_takes_turns_of_its_own_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(turns, "GIVE_WAY_TURN", 0.0)
    monkeypatch.setattr(turns, "GIVE_WAY_PAUSE", 0.0)
    seen = await _interleaving(turn=3600, giving_way=True)  # `turn` is not what counts
    assert seen.count("other") >= 4
    assert [s for s in seen if s != "other"] == [f"item {i}" for i in range(5)]


async def test_work_that_gives_way_pauses_again_while_the_loop_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    sleep = asyncio.sleep

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        await sleep(seconds)

    monkeypatch.setattr(turns, "asyncio", SimpleNamespace(sleep=pause))
    monkeypatch.setattr(turns, "GIVE_WAY_PAUSE", 0.001)
    monkeypatch.setattr(turns, "GIVE_WAY_BUSY", 0.005)
    asyncio.get_running_loop().call_soon(time.sleep, 0.05)  # others' work: 50 ms of it
    await turns._give_way()
    assert len(pauses) >= 2
