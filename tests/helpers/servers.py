"""A small aiohttp app on a real local socket, for tests that need a server of their own
(the fake APIs are for whole networks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serving(app: web.Application, shutdown_timeout: float = 0.1) -> AsyncIterator[str]:
    """`app` on a free port of 127.0.0.1 until the block ends; yields its base URL
    (`http://127.0.0.1:PORT`, no slash). Handlers still running at the end are cancelled
    after `shutdown_timeout` seconds."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
