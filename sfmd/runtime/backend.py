"""What every back end shares: the `Backend` shape, and the `Ledger` of streams not running.

A back end runs the streams of one `Mode`: `tasks` (a connection of its own, in this daemon),
`shared` (members of a connection shared per credential) and `processes` (one supervisord
program each). The daemon hands every back end the whole registry in two passes, all stops
first and then all starts, so a stream moving between back ends lets go of its connection on
one side before the other side takes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sfmd.logs import get_logger
from sfmd.registry import StreamSpec
from sfmd.status import State, now_iso, stopped_status


class Backend(Protocol):
    async def stop_unwanted(self, specs: Sequence[StreamSpec]) -> None:
        """Stop what runs here and should not (or should run differently)."""

    async def start_wanted(self, specs: Sequence[StreamSpec], *, jitter: float = 0.0) -> None:
        """Start what should run here and does not."""

    def status(self, spec: StreamSpec) -> dict[str, Any] | None:
        """The STATUS of a stream running here, or None."""

    async def close(self) -> None:
        """Stop everything this back end runs in this process (daemon shutdown)."""


class Ledger:
    """What the daemon knows of streams that are not running: why those that should run cannot
    (`failed`), and the counters of those that stopped, so `show` still tells what they
    collected."""

    def __init__(self) -> None:
        self.failed: dict[str, dict[str, Any]] = {}
        self.last: dict[str, dict[str, Any]] = {}

    def fail(self, name: str, reason: str) -> None:
        """Mark `name` failed; logged once per new reason, `since` kept across repeats."""
        earlier = self.failed.get(name, {})
        if earlier.get("last_error") != reason:
            get_logger(stream=name).error("stream_failed", reason=reason)
        self.failed[name] = {"since": earlier.get("since", now_iso()), "last_error": reason}

    def clear(self, name: str) -> None:
        self.failed.pop(name, None)

    def keep_failures_of(self, names: Iterable[str]) -> None:
        """Forget the failures of streams no longer meant to run."""
        wanted = set(names)
        for name in [n for n in self.failed if n not in wanted]:
            del self.failed[name]

    def stopped(self, name: str, status: dict[str, Any]) -> None:
        """Remember a stopped stream's counters."""
        status = {key: value for key, value in status.items() if key != "connection"}
        self.last[name] = {**status, "state": State.STOPPED.value, "since": now_iso()}

    def forget(self, name: str) -> None:
        self.last.pop(name, None)
        self.failed.pop(name, None)

    def status(self, name: str) -> dict[str, Any]:
        """The STATUS of a stream that runs nowhere: failed, or stopped with its counters."""
        base = self.last.get(name) or stopped_status()
        failure = self.failed.get(name)
        if failure is not None:
            return {**base, "state": State.FAILED.value, "current_file": None, **failure}
        return base
