"""A client for the daemon's control socket: real HTTP over the real Unix socket."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp


class Api:
    """A client for the control socket: real HTTP over the real Unix socket."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket_path))
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> tuple[int, Any]:
        assert self._session is not None
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": content_type} if content_type and data is not None else {}
        async with self._session.request(
            method, f"http://sfmd{path}", data=data, headers=headers
        ) as resp:
            text = await resp.read()
            if resp.content_type == "application/json" and text:
                return resp.status, json.loads(text)
            return resp.status, text.decode()

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer = await self.call(method, path, body)
        assert got == status, (method, path, got, answer)
        return answer


async def wait_for_health(sock: Path, timeout: float = 15.0) -> None:
    """Poll /health until it answers 200; a missing or stale socket (a killed daemon's) is
    retried, not an error, until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with Api(sock) as api:
                status, _ = await api.call("GET", "/health")
            if status == 200:
                return
        except (aiohttp.ClientError, OSError):
            pass  # not listening yet, or the stale socket of the killed daemon
        assert time.monotonic() < deadline, f"no /health on {sock} within {timeout} s"
        await asyncio.sleep(0.05)
