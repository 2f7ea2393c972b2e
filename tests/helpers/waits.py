"""Polling against a deadline: no test sleeps to synchronise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
    *,
    interval: float = 0.02,
) -> None:
    """Poll `predicate` every `interval` s until it holds; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 10.0,
    what: str = "condition",
    *,
    interval: float = 0.1,
) -> None:
    """`wait_until` for a condition that must ask something (an API) to be checked."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """`wait_until` for code that runs where no event loop is (threads, plain functions)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
