"""Fixtures for the fake APIs' own tests: a client session that gives up on a silent socket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """No total deadline (a stream never ends), but connecting and each read fail after 5 s."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=5)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        yield s
