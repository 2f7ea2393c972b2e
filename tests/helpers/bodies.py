"""Reading a streaming HTTP body from the fake API in steps, whatever its framing."""

from __future__ import annotations

import asyncio

import aiohttp

READ_LIMIT = 5.0  # seconds: a read that should finish but never does fails instead of hanging


class BodyReader:
    """Reads a streaming body, keeping what was parsed, so a test can read in steps.

    A subclass says how its API frames the body, in `split`.
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.buffer = b""
        self.messages: list[bytes] = []
        self.keepalives = 0

    def split(self, buffer: bytes) -> tuple[list[bytes], int, bytes]:
        """(messages, keep-alives, the unfinished rest) found at the start of `buffer`."""
        raise NotImplementedError

    async def until(self, messages: int = 0, keepalives: int = 0) -> None:
        async with asyncio.timeout(READ_LIMIT):
            while len(self.messages) < messages or self.keepalives < keepalives:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError(f"body ended after {len(self.messages)} messages")
                self._feed(chunk)

    async def to_end(self) -> None:
        async with asyncio.timeout(READ_LIMIT):
            while chunk := await self.response.content.readany():
                self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        found, keepalives, self.buffer = self.split(self.buffer + chunk)
        self.messages += found
        self.keepalives += keepalives
