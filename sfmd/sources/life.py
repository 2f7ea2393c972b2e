"""What every connection of every network shares: its task, its state, a graceful stop, and
how its life is told in the log and the status.

A source's connection class (Twitter's `Stream`, Bluesky's `JetstreamStream`, Mastodon's
`Socket`) inherits this and writes its life from connect to stop: either `run()` whole (as
Twitter's does) or, for the loop the WebSocket sources share, `_connect_and_read()` and
`_wait_after()` (and `_prepare()` if it reads a resume point first); and `_interrupt()`,
which makes a read in progress end by itself (closing the response or socket), so that what
was read is handed over before the task ends. Nothing else is meant to be overridden.

`run()` reports each step through the same few methods, so every network's log reads alike:
one line per change of state, carrying its reason: `_attempting` (a `connecting` line),
`_streaming` (`connected`), `_failed` (`disconnected`, with the failure's kind and the wait
before the next attempt) and `_stopped` (no line: the back end says why it stops). The same
failure again within `BackoffPolicy.log_fold_interval` is not logged again: one line later
sums up the repeats ("... 12 more in 60 s"), so an outage of hours is a few lines a stream,
not thousands. `_set_state` stays for a source that logs its own way: it moves the state
and logs a `stream_state` line.

The status these keep: `down_since` (when the current outage began, kept across retries),
`next_attempt` (in backoff, when the next try is due, from the wait `self.backoff` last
gave), and the reconnect counters split into planned (`restart`: new settings) and the rest,
which followed a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sfmd.logs import get_logger
from sfmd.sources.backoff import Backoff, BackoffPolicy, Failure
from sfmd.sources.base import Sink
from sfmd.status import State, StreamStatus


def let_go(error: BaseException) -> None:
    """Drop the tracebacks of an exception that ended a connection, and of those it came
    from, once it has been judged. A traceback holds the frames of the read that raised it;
    they hold the response, its reader and its parser, and the reader holds the exception.
    That cycle outlives the connection until a collection finds it: minutes later, or at the
    hourly full one if it was frozen or had reached the middle generation first. Left to the
    hourly one, it was 48 objects a reconnect, and RSS up 12 % in a ten-minute soak at 1,000
    streams. Without its tracebacks, reference counting frees it all at once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


@dataclasses.dataclass
class _Fold:
    """Failures being summed up: the reason they share, since when, how many went unlogged."""

    reason: str
    began: float  # monotonic: when the line that opened the fold was logged
    repeated: int = 0  # identical failures not logged since
    attempts: int = 0  # connection attempts not logged since


class ConnectionLife:
    #: The source's reconnect arithmetic (set in its `__init__`): the wait it last gave is
    #: the status's `next_attempt`, its policy says how long identical failures are folded.
    backoff: Backoff | None = None

    def __init__(self, name: str, sink: Sink, *, log_key: str = "stream") -> None:
        """`log_key` names the field the log lines carry `name` in: `stream` for a stream's
        own connection, `connection` for one shared by several streams."""
        self.name = name
        self.sink = sink
        self.status = StreamStatus()
        self.log = get_logger(**{log_key: name})
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._attempts = 0  # connection attempts in this life, the first included
        self._planned = False  # the next attempt is a reconnect sfmd chose (`restart`)
        self._fold: _Fold | None = None

    async def run(self, delay: float = 0.0) -> None:
        """Connect, read and reconnect until stopped; never return on a transient error.

        The loop the WebSocket sources share: `_prepare` once, then `_connect_and_read` and
        `_wait_after` it until a stop. A source whose failures arrive another way (Twitter's
        HTTP stream raises them) writes its own."""
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            await self._prepare()
            while True:
                await self._hold_if_fenced()
                failure, reason = await self._connect_and_read()
                if self._stopping:
                    return
                await self._wait_after(failure, reason)
        finally:
            self._stopped()

    async def _hold_if_fenced(self) -> None:
        """Cluster mode: once this host has lost the connection's lease (a host that was
        frozen and woke up), never connect again: another host holds it now, and a second
        connection could cut the new holder's. Waits here until the stop that follows."""
        if not getattr(self.sink, "fenced", False):
            return
        self.log.warning("connection_fenced",
                         reason="another host holds this connection now; not reconnecting")
        await asyncio.Event().wait()  # the stop cancels it

    async def _prepare(self) -> None:
        """Before the first connection (read where to resume): nothing by default."""

    async def _connect_and_read(self) -> tuple[Failure, str]:
        """One connection, until it ends: how it failed and why."""
        raise NotImplementedError

    async def _wait_after(self, failure: Failure, reason: str) -> None:
        """Tell the failure and wait before the next attempt."""
        raise NotImplementedError

    async def _interrupt(self) -> bool:
        """End a read in progress so its loop hands over what it read; False when there is
        none (then the task is cancelled: nothing is in flight)."""
        raise NotImplementedError

    def start(self, delay: float = 0.0) -> None:
        """Run in a task; `delay` spreads many streams' first connections (start-up jitter).
        No line of its own: the back end that starts it logs that it did."""
        self._stopping = False
        self._move(State.CONNECTING)
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

    async def restart(self, grace: float = 5.0, change: Callable[[], None] | None = None) -> None:
        """Reconnect on purpose: stop (handing over what was read), apply `change` (new
        settings), start again. The reconnect counts as planned, not as a failure, and the
        caller logs why it restarts."""
        await self.stop(grace)
        if change is not None:
            change()
        self._planned = True
        self.start()

    # -- telling the connection's life --------------------------------------------------------

    def _attempting(self, **fields: Any) -> None:
        """A connection attempt begins: counted (after the first, as a reconnect), state
        `connecting`, one `connecting` line unless a failure repeats (then the attempts are
        counted in the fold's sum)."""
        planned = self._planned
        if self._attempts:
            self.status.reconnects += 1
            self.status.reconnects_planned += planned
        reason = "started" if not self._attempts else "settings changed" if planned else "retry"
        self._attempts += 1
        self._planned = False
        self._move(State.CONNECTING)
        if self._fold is not None and self._fold.repeated:
            # The same failure came twice: retries are summed up, not told one by one.
            self._fold.attempts += 1
            return
        self.log.info("connecting", state=State.CONNECTING.value, reason=reason, **fields)

    def _streaming(self, **fields: Any) -> None:
        """The connection delivers: state `streaming`, one `connected` line (after the sum
        of any failures being folded)."""
        self._unfold()
        self._move(State.STREAMING)
        self.log.info("connected", state=State.STREAMING.value, **fields)

    def _failed(
        self,
        reason: str,
        failure: str,
        wait: float,
        *,
        event: str = "disconnected",
        error: str | None = None,
        **fields: Any,
    ) -> None:
        """The connection ended or could not be made, and the next attempt is `wait` seconds
        away: state `backoff`, `last_error` = `error` (else `reason`), one warning line with
        the reason, the failure's kind, the wait and the next attempt's time. The same
        `reason` again within the fold interval is counted, not logged."""
        self._move(State.BACKOFF, error=error or reason, wait=wait)
        now = time.monotonic()
        fold = self._fold
        if fold is not None and fold.reason == reason and now - fold.began < self._fold_interval:
            fold.repeated += 1
            return
        repeats: dict[str, Any] = {}
        if fold is not None and fold.reason == reason:
            # The interval is over: this line is the next in full and sums up the last one.
            # (Nothing to sum up when it came back only after the interval.)
            repeats = self._repeats(fold, now) if fold.repeated else {}
        else:
            self._unfold()
        next_attempt = self.status.next_attempt
        self.log.warning(
            event, state=State.BACKOFF.value, reason=reason, failure=failure,
            wait=round(wait, 3), next_attempt=next_attempt.isoformat().replace("+00:00", "Z")
            if next_attempt else None, **repeats, **fields,
        )
        self._fold = _Fold(reason, now)

    def _stopped(self) -> None:
        """The connection's task ends: state `stopped`, the sum of any folded failures; no
        line of its own (the back end says why it stops)."""
        self._unfold()
        self._move(State.STOPPED)

    def _set_state(self, state: State, *, reason: str, error: str | None = None) -> None:
        """Move to `state` and log why in a `stream_state` line, for a source that tells its
        life its own way; `last_error` keeps the latest failure until replaced."""
        changed = state is not self.status.state
        wait = self.backoff.last_wait if self.backoff is not None else None
        self._move(state, error=error, wait=wait if state is State.BACKOFF else None)
        if changed:
            self.log.info("stream_state", state=state.value, reason=reason)

    def _move(self, state: State, *, error: str | None = None, wait: float | None = None) -> None:
        """The status follows a new state: `since` on a change, `down_since` from the first
        failure until streaming again, `next_attempt` while backing off."""
        status = self.status
        now = datetime.now(UTC)
        if state is not status.state:
            status.state = state
            status.since = now
        if error is not None:
            status.last_error = error
        if state is State.BACKOFF:
            if status.down_since is None:
                status.down_since = now
            status.next_attempt = now + timedelta(seconds=wait) if wait is not None else None
        else:
            status.next_attempt = None
            if state in (State.STREAMING, State.STOPPED):
                status.down_since = None

    @property
    def _fold_interval(self) -> float:
        policy = self.backoff.policy if self.backoff is not None else BackoffPolicy()
        return policy.log_fold_interval

    def _unfold(self) -> None:
        """End the fold: if failures went unlogged, one line sums them up."""
        fold, self._fold = self._fold, None
        if fold is not None and (fold.repeated or fold.attempts):
            self.log.warning("disconnected", reason=fold.reason,
                             **self._repeats(fold, time.monotonic()))

    @staticmethod
    def _repeats(fold: _Fold, now: float) -> dict[str, Any]:
        return {"repeated": fold.repeated, "attempts": fold.attempts,
                "over": round(now - fold.began, 1)}
