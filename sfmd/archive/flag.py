"""`Flag`: what an archive's writer task sleeps on, for a tenth of an `asyncio.Event`'s memory.

Every archive keeps one for its writer task for as long as the stream runs. An
`asyncio.Event` holds a deque for its waiters from the start: 860 bytes an Event, 1.7 KB an
archive with the two it had, 8.6 MB at 5,000 streams. A `Flag` has two slots and makes its
list of waiters only while someone waits.
"""

from __future__ import annotations

import asyncio


class Flag:
    """`set`, `clear`, `is_set` and `wait` as `asyncio.Event` has them; for one event loop."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set the flag and wake everyone waiting (they return even if it is cleared before
        they run, as with `asyncio.Event`)."""
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        """Return once the flag is set (at once if it is)."""
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
