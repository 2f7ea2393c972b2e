"""`sliced` gives the event loop a turn once its time is up, and not before."""

from __future__ import annotations

import asyncio

from sfmd.turns import sliced


async def _interleaving(turn: float) -> list[str]:
    """What a second task managed to do while `sliced` went through five items."""
    seen: list[str] = []

    async def other() -> None:
        while True:
            seen.append("other")
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    try:
        async for item in sliced(range(5), turn=turn):
            seen.append(f"item {item}")
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
