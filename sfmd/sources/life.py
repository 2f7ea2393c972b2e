"""What every connection of every network shares: its task, its state, a graceful stop.

A source's connection class (Twitter's `Stream`, Bluesky's `JetstreamStream`) inherits this
and writes `run()`, its life from connect to stop, and `_interrupt()`, which makes a read in
progress end by itself (closing the response or socket), so that what was read is handed
over before the task ends. Nothing else is meant to be overridden.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime

from sfmd.logs import get_logger
from sfmd.sources.base import Sink
from sfmd.status import State, StreamStatus


class ConnectionLife:
    def __init__(self, name: str, sink: Sink) -> None:
        self.name = name
        self.sink = sink
        self.status = StreamStatus()
        self.log = get_logger(stream=name)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def run(self, delay: float = 0.0) -> None:
        """Connect, read and reconnect until stopped; never return on a transient error."""
        raise NotImplementedError

    async def _interrupt(self) -> bool:
        """End a read in progress so its loop hands over what it read; False when there is
        none (then the task is cancelled: nothing is in flight)."""
        raise NotImplementedError

    def start(self, delay: float = 0.0) -> None:
        """Run in a task; `delay` spreads many streams' first connections (start-up jitter)."""
        self._stopping = False
        self._set_state(State.CONNECTING, reason="started")
        self._task = asyncio.create_task(self.run(delay), name=f"stream:{self.name}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def stop(self, grace: float = 5.0) -> None:
        """End the connection without losing what was already read; whatever happens, the
        task is gone within `grace` seconds."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if not await self._interrupt():
            task.cancel()
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(task)
        except TimeoutError:
            self.log.error("stop_timed_out", grace=grace)
            task.cancel()
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # our caller was cancelled, not the task
        except Exception:
            pass  # the task died of a bug earlier; its owner logged it from the task
        finally:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _set_state(self, state: State, *, reason: str, error: str | None = None) -> None:
        """Move to `state` and log why; `last_error` keeps the latest failure until replaced."""
        changed = state is not self.status.state
        self.status.state = state
        if error is not None:
            self.status.last_error = error
        if changed:
            self.log.info("stream_state", state=state.value, reason=reason)
            self.status.since = datetime.now(UTC)

    def status_now(self) -> StreamStatus:
        """The status with the file being written now (a copy: the counters keep moving)."""
        current = self.sink.current_file
        return dataclasses.replace(
            self.status, current_file=str(current) if current is not None else None
        )
