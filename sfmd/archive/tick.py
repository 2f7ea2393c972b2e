"""Many archives' due batches written in one worker-thread trip, on a shared tick.

A quiet stream (one message a second) has one message to write per flush. Waking its own
writer task for it, with a timer of its own, and handing that one message to a worker thread
cost more than receiving it: at 1,000 such streams those wake-ups and thread hops were most
of the daemon's CPU. So a stream's due batch waits for the next tick of one shared clock,
and each tick hands every due batch to the worker threads together, a few dozen per trip.

Ticks fall on a grid (`flush_interval / TICKS_PER_FLUSH` apart), never later than a batch's
flush deadline: a batch is written between `flush_interval - tick` and `flush_interval` after
its first message, so what a SIGKILL can take stays within `flush_interval`. Streams whose
deadlines fall in one tick share one timer and one trip.

Trips run one at a time, in one worker thread of their own (never queued behind a
boundary's publishes, which have threads of their own): the event loop then competes for
the GIL with one thread's Python work between zlib's and the disk's calls, not with several.
With four trips of 64 batches at once, a quarter of 1,000 streams due together, the control
API's p99 doubled (70-88 ms against 28-30 ms) while the loop itself was never busy for more
than 20 ms: it waited for the GIL. Fine ticks keep each trip short.

A member (an `Archive`) decides at the tick what it hands over (`shared_take`), and gets the
outcome on the loop (`shared_done`); anything it cannot hand over (a rotation, an error, a
closing archive) it leaves to its own writer task.
"""

from __future__ import annotations

import asyncio
import functools
import math
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

#: Ticks per flush interval: a batch is written at most this fraction of it early, and
#: 1,000 quiet streams make about 1,000 / TICKS_PER_FLUSH batches a tick.
TICKS_PER_FLUSH = 20
#: Batches per worker trip: enough to make a trip cheap per batch, few enough that the
#: archive's threads share a tick's work (their writes, zlib and sha256 release the GIL).
TRIP_SIZE = 64

#: A batch's work in the worker thread; raises OSError if the disk refuses it.
Work = Callable[[], None]


class Member(Protocol):
    def shared_take(self) -> Work | None:
        """At its tick: the work to hand over, or None (nothing due, or its own writer
        takes it)."""
        ...

    def shared_done(self, error: BaseException | None) -> None:
        """On the loop, after the work ran: None, or what it raised."""
        ...


def tick_at(first: float, flush_interval: float) -> float:
    """The last tick at or before `first + flush_interval` (loop time), on the grid shared
    by every stream with this flush interval."""
    step = flush_interval / TICKS_PER_FLUSH
    return math.floor((first + flush_interval) / step) * step


class SharedTick:
    """One per event loop (`for_loop`): the members due at each tick, and one timer each."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Executor) -> None:
        self._loop = loop
        self._pool = pool
        self._due: dict[float, list[Member]] = {}
        self._trips: deque[list[tuple[Member, Work]]] = deque()  # waiting their turn
        self._running = False  # a trip is with the worker thread

    def schedule(self, member: Member, at: float) -> None:
        """Call `member.shared_take()` at loop time `at` (with the others due then)."""
        members = self._due.get(at)
        if members is None:
            self._due[at] = [member]
            self._loop.call_at(at, self._fire, at)
        else:
            members.append(member)

    def _fire(self, at: float) -> None:
        taken: list[tuple[Member, Work]] = []
        for member in self._due.pop(at, ()):
            work = member.shared_take()
            if work is not None:
                taken.append((member, work))
        for i in range(0, len(taken), TRIP_SIZE):
            self._trips.append(taken[i : i + TRIP_SIZE])
        self._next_trip()

    def _next_trip(self) -> None:
        if self._running or not self._trips:
            return
        trip = self._trips.popleft()
        self._running = True
        future = self._loop.run_in_executor(self._pool, _run, [w for _, w in trip])
        future.add_done_callback(functools.partial(self._trip_done, trip))

    def _trip_done(
        self,
        trip: list[tuple[Member, Work]],
        future: asyncio.Future[list[BaseException | None]],
    ) -> None:
        self._running = False
        try:
            _done(trip, future)
        finally:
            self._next_trip()


def _run(works: list[Work]) -> list[BaseException | None]:
    """In a worker thread: each batch's work, one after the other; one failing does not stop
    the others (their streams' disks may be fine)."""
    out: list[BaseException | None] = []
    for work in works:
        try:
            work()
        except Exception as exc:  # handed to its member, which knows what it means
            out.append(exc)
        else:
            out.append(None)
    return out


def _done(
    trip: list[tuple[Member, Work]], future: asyncio.Future[list[BaseException | None]]
) -> None:
    if future.cancelled():  # the loop is closing: members are told nothing was written
        errors: list[BaseException | None] = [asyncio.CancelledError()] * len(trip)
    elif (exc := future.exception()) is not None:
        errors = [exc] * len(trip)
    else:
        errors = future.result()
    for (member, _), error in zip(trip, errors, strict=True):
        member.shared_done(error)


_TICKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SharedTick] = (
    weakref.WeakKeyDictionary()
)


def for_loop(loop: asyncio.AbstractEventLoop, pool: Executor) -> SharedTick:
    """The shared tick of `loop` (made on first use)."""
    tick = _TICKS.get(loop)
    if tick is None:
        tick = _TICKS[loop] = SharedTick(loop, pool)
    return tick
