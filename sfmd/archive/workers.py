"""The archive's I/O threads: where a stream's files are opened, written, sealed and published.

A call is handed over as one tuple on a queue, and its answer comes back through an asyncio
future that the worker settles with `call_soon_threadsafe`. A call queued through
`loop.run_in_executor` held 36 objects, this way 8 (the caller's task and coroutines
included): the executor adds a `concurrent.futures.Future` (with a Condition, an RLock and a
deque), a work item, a copy of the caller's context and the closures that chain the two
futures. At a rotation boundary of 5,000 streams 1,000-1,500 publishes wait in the queue at
once, each behind three fsyncs, and those hand-offs were about half of the young objects a
garbage collection then walked.

The calls run without the caller's context variables: nothing run here reads any (sfmd binds
none), and a copy of the context per call was one more object each.

The threads are daemon threads: the daemon's stop waits for every archive to close before the
process ends, so nothing is queued then. A process killed in the middle of a publish leaves a
`.part` file, which the next start recovers, as after any crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

#: How much lower than the daemon's the archive's worker threads run (a nice increment;
#: Linux schedules each thread by its own). In the minutes after a boundary of 5,000 streams
#: the publishes (three fsyncs each, and the kernel's work for them) kept the core busy for
#: seconds, and the event loop, which reads every connection and answers the control API,
#: got a third of it. Lower, they take what the loop leaves; when the loop waits for the GIL
#: it is not runnable, so a worker holding it is never kept from running by the loop.
WORKER_NICENESS = 10

_T = TypeVar("_T")

#: One call: the loop to answer on, the future to settle, the function and its arguments.
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _lower_priority() -> None:
    """A worker thread's start: run `WORKER_NICENESS` below the thread that made it (at most
    19, the lowest). Where the system does not allow it, the worker runs as it is."""
    with contextlib.suppress(OSError, AttributeError):
        me = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, me) + WORKER_NICENESS
        os.setpriority(os.PRIO_PROCESS, me, min(19, niceness))


class Workers:
    """`threads` threads taking calls from one queue, started at the first call."""

    def __init__(self, threads: int, name: str) -> None:
        self._count = threads
        self._name = name
        self._queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    async def run(self, func: Callable[..., _T], *args: Any) -> _T:
        """`func(*args)` on a worker thread. Cancelled while still queued, it never runs;
        cancelled once running, it runs to its end and its answer is dropped."""
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put((loop, future, func, args))
        return await future

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for i in range(self._count):
                threading.Thread(
                    target=self._work, name=f"{self._name}_{i}", daemon=True
                ).start()
            self._started = True

    def _work(self) -> None:
        _lower_priority()
        take = self._queue.get
        while True:
            _call(*take())


def _call(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    func: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    """One call, answered on its loop; nothing of it is held once this returns."""
    if future.cancelled():
        return
    try:
        result = func(*args)
    except BaseException as exc:  # handed to the caller, as run_in_executor does
        _answer(loop, future, None, exc)
    else:
        _answer(loop, future, result, None)


def _answer(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, future, result, exc)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled while the call ran
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)
