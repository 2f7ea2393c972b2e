"""How fast a fake stream sends: block sizes, the per-connection rate, and keep-alives.

Every simulated stream runs the same loop: ask `next_batch` how many messages may go now,
write them as one block, repeat. Keeping that arithmetic here lets each fake's pump deal only
with its own message shapes and faults.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from sfmd.fake.mount import StreamHandle
from sfmd.fake.settings import Settings

#: Bytes per body write when streaming flat out: big writes keep the server off the profile.
BLOCK_BYTES = 256 * 1024


def block_count(message_size: int) -> int:
    """How many messages of `message_size` bytes make one block of about BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // max(1, message_size + 8))


class Pacer:
    """Holds a connection to `rate` messages a second, counted from when the rate was set."""

    def __init__(self) -> None:
        self._rate = -1.0
        self._start = 0.0
        self._base = 0

    def allow(self, count: int, sent: int, rate: float, now: float) -> tuple[int, float | None]:
        """How many of `count` messages may go now, and when to wake if none may."""
        if rate <= 0:
            self._rate = -1.0  # pacing restarts from now if a rate is set again
            return count, None
        if count <= 0:
            return count, None
        if rate != self._rate:
            self._rate, self._start, self._base = rate, now, sent
        due = int((now - self._start) * rate) - (sent - self._base)
        wake_at = self._start + (sent - self._base + 1) / rate if due <= 0 else None
        return min(count, due), wake_at


async def next_batch(
    stream: StreamHandle,
    response: web.StreamResponse,
    pacer: Pacer,
    settings: Settings,
    *,
    want: int,
    sent: int,
    trigger_at: int | None,
    last_write: float,
) -> tuple[int, float]:
    """How many of `want` messages may go now: up to a scripted trigger, the total and the
    rate. When none may, wait for the rate or a change, sending a keep-alive when one is due
    (the caller loops). Returns the count and when the connection was last written to."""
    loop = asyncio.get_running_loop()
    count = want
    if trigger_at is not None:
        count = min(count, trigger_at - sent)
    if settings.total is not None:
        count = min(count, settings.total - sent)
    count, wake_at = pacer.allow(count, sent, settings.rate, loop.time())
    if count <= 0:
        keepalive_at = last_write + settings.keepalive_interval
        await stream.sleep_until(keepalive_at if wake_at is None else min(wake_at, keepalive_at))
        if not stream.stop_reason and loop.time() >= keepalive_at:
            await response.write(b"\r\n")
            last_write = loop.time()
    return count, last_write
