"""The daemon's own background work (sfmd.daemon.app)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from sfmd.daemon import allocator
from sfmd.daemon.app import Daemon
from tests.helpers.archive import wait_for


async def test_freed_memory_is_handed_back_every_trim_interval_from_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[threading.Thread] = []
    monkeypatch.setattr(allocator, "trim", lambda: threads.append(threading.current_thread()))
    trimmer = asyncio.create_task(Daemon._trim_every(0.01))
    try:
        await wait_for(lambda: len(threads) >= 3, timeout=5)
    finally:
        trimmer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trimmer
    assert threading.main_thread() not in threads  # never on the event loop's thread
