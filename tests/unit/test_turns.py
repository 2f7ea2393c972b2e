"""`in_turns` gives the event loop a turn once its time is up, and not before."""

from __future__ import annotations

import asyncio

import pytest

from sfmd.turns import in_turns


async def _interleaving(turn: float) -> list[str]:
    """What a second task managed to do while `in_turns` went through five items."""
    seen: list[str] = []

    async def other() -> None:
        while True:
            seen.append("other")
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    try:
        await in_turns(range(5), lambda item: seen.append(f"item {item}"), turn=turn)
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


async def test_work_that_gives_way_takes_its_own_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    from sfmd import turns

    monkeypatch.setattr(turns, "GIVE_WAY_TURN", 0.0)
    seen: list[str] = []

    async def other() -> None:
        while True:
            seen.append("other")
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    try:
        await in_turns(range(3), lambda item: seen.append(f"item {item}"), turn=3600,
                       giving_way=True)
    finally:
        task.cancel()
    assert seen.count("other") >= 2
    assert [s for s in seen if s != "other"] == [f"item {i}" for i in range(3)]
