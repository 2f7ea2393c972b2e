"""What a network must provide to be collected: the `Source` interface.

A source turns a stream's settings into connections and says what the rest of sfmd needs to
know about them. The back ends (`runtime`) and admission (`daemon.admission`) call only this,
so adding a network is adding a subpackage of `sources/` that implements it, registering it
in `sources/__init__.py`, its fake in `fake/` and its fields in the registry's table.

Each method gets what it needs as arguments; a source knows nothing of the control API,
supervisor or the registry's file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from sfmd.archive import Archive, ArchiveError, CountItems
from sfmd.config import Config
from sfmd.credentials import Credential
from sfmd.registry import StreamSpec
from sfmd.status import ConnectionStatus, StreamStatus


class Sink(Protocol):
    """Where a connection puts messages: the archive, in production."""

    async def write(self, messages: list[bytes], tweets: int) -> None: ...

    @property
    def current_file(self) -> Any: ...

    @property
    def error(self) -> ArchiveError | None:
        """Why the sink refuses messages now (a full disk), or None when it takes them."""
        ...

    def streaming(self) -> None:
        """The connection streams from now on."""

    def not_streaming(self, reason: str, error: str | None = None) -> None:
        """The connection stopped streaming (`archive.coverage` names the reasons)."""

    def asking(self, what: dict[str, Any]) -> None:
        """The connection asks for `what` from now on: the request's provenance."""

    def refilled(self, value: str, unrecoverable: tuple[str, ...] = ()) -> None:
        """What the source fetched again of the latest gap: "all", "some" or "none", and
        what it cannot fetch at all (Mastodon: deletes and edits)."""

    def refused(self, why: str) -> None:
        """One message could not be stored (too large, not JSON): written down, not silent."""

    @property
    def fenced(self) -> bool:
        """Cluster mode: another host holds this connection now; it must not connect again
        (always False on a single host)."""
        ...

    def mark(self, point: str) -> None:
        """The stream's resume point after the messages written so far (Jetstream's newest
        time_us, Mastodon's newest complete id): in cluster mode, saved for the host that
        takes the stream over once those messages are in the file."""


class Connection(Protocol):
    """One stream's own connection, as a back end drives it: started once, retargeted by
    the source when its settings change, stopped with a grace period."""

    status: StreamStatus

    def start(self, delay: float = 0.0) -> None: ...

    async def stop(self, grace: float = 5.0) -> None: ...

    @property
    def task(self) -> Any:
        """The asyncio task the connection runs in, while it runs."""
        ...


class SharedConnection(Protocol):
    """One connection that several streams share (one per credential and slot): members are
    added and removed on the open connection, each with its own archive."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def update(
        self, specs: Iterable[StreamSpec], known: Iterable[str], *, check_rules: bool = False
    ) -> dict[str, ArchiveError]:
        """Members made to match `specs`; returns those whose archive would not open."""
        ...

    def __contains__(self, name: object) -> bool: ...

    def members(self) -> list[str]: ...

    def member_status(self, name: str) -> StreamStatus: ...

    def connection_status(self) -> ConnectionStatus: ...

    def published(self, name: str) -> int: ...

    def rules_in_use(self) -> set[str]:
        """What the connection asks for on its members' behalf now (v2: rule values)."""
        ...


@dataclass(frozen=True)
class Context:
    """What a source may use to build connections and check changes."""

    config: Config
    session: aiohttp.ClientSession
    lock_dir: Path
    archive_factory: Callable[[StreamSpec, CountItems], Archive]
    #: Cluster mode: the resume point another host saved for a stream (by name), or None.
    #: A source that can resume asks it at start-up and resumes from the newer of it and
    #: its own files.
    saved_point: Callable[[str], Awaitable[str | None]] | None = None


async def read_saved_point(
    saved_point: Callable[[str], Awaitable[str | None]] | None, name: str, log: Any
) -> int | None:
    """The resume point another host saved for stream `name` (cluster mode; None on a single
    host or when none was saved), as the number Jetstream cursors and Mastodon ids are. One
    that cannot be read is logged and not waited for: the stream's own files say where to
    resume."""
    if saved_point is None:
        return None
    try:
        point = await saved_point(name)
        return int(point) if point is not None else None
    except Exception as e:  # NATS away, or a point that is not a number
        log.warning("resume_point_unread", error=f"{type(e).__name__}: {e}")
        return None


class Source(Protocol):
    name: str

    def credential_problem(
        self, spec: StreamSpec, credentials: Mapping[str, Credential]
    ) -> str | None:
        """Why `spec`'s credential cannot serve it, as a sentence a person can act on."""
        ...

    def counter(self, spec: StreamSpec) -> CountItems:
        """How the stream counts content items (the manifest's `tweets`), live and when its
        archive recovers a file."""
        ...

    def connection(
        self, spec: StreamSpec, credential: Credential | None, sink: Sink, context: Context
    ) -> Connection:
        """A stream's own connection (`Mode.TASK` and `Mode.PROCESS`), not started."""
        ...

    async def retarget(
        self, connection: Connection, spec: StreamSpec, context: Context, grace: float
    ) -> None:
        """Reconnect `connection` with `spec`'s settings, keeping its sink."""
        ...

    async def update(self, connection: Connection, spec: StreamSpec, context: Context) -> None:
        """Settings changed that the open connection can take as they are (its
        `connection_key` did not change): apply them, or do nothing."""
        ...

    def shared(self, credential: Credential, context: Context) -> SharedConnection:
        """The connection `Mode.SHARED` streams on `credential` share, not started."""
        ...

    async def admit(
        self,
        spec: StreamSpec,
        old: StreamSpec | None,
        credential: Credential | None,
        context: Context,
        in_use: set[str],
    ) -> StreamSpec:
        """The network checks a change needs before it is stored (they run without the
        daemon's lock); `in_use` is what the stream's shared connection already asks for.
        Returns the spec with anything looked up filled in; raises `Refused` to refuse."""
        ...
