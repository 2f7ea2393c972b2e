"""The seam between the fake server and the simulated APIs mounted on it.

The server owns what every fake shares: the settings, the fault script, the server-wide
sequence numbers, the connection log and the wake-up of `wait_for`. A fake reaches them only
through `Host`. For each request the server opens a `ConnectionRecord` and a `StreamHandle`
and hands both to the fake, which fills in the record as it answers; the server closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import web

from sfmd.fake.settings import Settings


class Host(Protocol):
    """What a mounted fake needs from the server it is mounted on."""

    settings: Settings

    def take_fault(self, endpoint: str) -> dict[str, Any] | None: ...

    def allocate(self, count: int) -> int: ...

    def notify(self) -> None: ...


@dataclass
class ConnectionRecord:
    """One connection attempt (or rules API call), as a test wants to see it afterwards."""

    conn: int
    method: str
    path: str
    endpoint: str
    params: dict[str, str] = field(default_factory=dict)
    credential: str | None = None
    auth_ok: bool = False
    signed_host: str | None = None
    status: int | None = None
    fault: dict[str, Any] | None = None
    opened: float = 0.0
    closed: float | None = None
    first_byte: float | None = None
    sent_count: int = 0
    sent_seqs: list[list[int]] = field(default_factory=list)
    partial_seq: int | None = None
    close_reason: str | None = None
    #: A v2 rules API call: dry_run, how many rules it added or deleted, and the answer's
    #: summary counts, so a test can show what was validated before it was applied.
    summary: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def add_seqs(self, first: int, last: int) -> None:
        """Merge consecutive runs so a flat-out stream stays a handful of ranges."""
        if self.sent_seqs and self.sent_seqs[-1][1] + 1 == first:
            self.sent_seqs[-1][1] = last
        else:
            self.sent_seqs.append([first, last])


class StreamHandle:
    """One open request: the handle that `stop`, `reset`, rivals and rule changes use."""

    def __init__(self, record: ConnectionRecord) -> None:
        self.record = record
        self.task = asyncio.current_task()
        self.wake = asyncio.Event()
        self.stop_reason: str | None = None
        self.done = asyncio.Event()

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.wake.set()

    async def sleep_until(self, deadline: float | None) -> None:
        """Sleep to `deadline` (loop time; None = forever) unless woken first."""
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():
            await asyncio.sleep(0)  # still yield: a caller's loop must never starve the others
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.wake.wait()
        self.wake.clear()


async def abort_when_flushed(request: web.Request, stream: StreamHandle) -> None:
    """Drop the connection once what was written has left, so a cut loses nothing sent."""
    transport = request.transport
    if transport is None:
        return
    # asyncio has no "buffer flushed" callback: poll.
    while not transport.is_closing() and not stream.stop_reason:
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.002)
    transport.abort()


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as Twitter sends it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
