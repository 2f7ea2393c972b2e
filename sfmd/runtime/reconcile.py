"""One reconcile pass as data: what must stop, reconnect and start so that the streams running
as tasks match the registry.

`diff()` only compares settings; applying the plan (stops first, then reconnects, then starts)
is the task back end's job. Keeping the decision pure lets its rules be tested without a
socket, and keeps the order of the steps in one place.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sfmd.registry import StreamSpec

GONE = "stopped in the registry"
MOVED = "its credential or endpoint changed"
RENEWED = "its credential's keys changed in the credentials file"


@dataclass(frozen=True)
class Plan:
    """The steps of one pass, each a tuple of stream names in name order."""

    stop: tuple[tuple[str, str], ...] = ()  # (name, why): close the connection and its file
    retarget: tuple[str, ...] = ()  # reconnect with new wire settings; the file stays open
    refresh: tuple[str, ...] = ()  # settings the connection never sees changed: no reconnect
    start: tuple[str, ...] = ()  # take the slot, recover the archive, connect

    @property
    def empty(self) -> bool:
        return not (self.stop or self.retarget or self.start)


def can_retarget(running: StreamSpec, wanted: StreamSpec) -> bool:
    """New settings on the same credential, kind and instance need a new connection, not a
    new archive or lock."""
    return (running.credential, running.kind, running.endpoint) == (
        wanted.credential, wanted.kind, wanted.endpoint
    )


def diff(
    desired: Mapping[str, StreamSpec],
    running: Mapping[str, StreamSpec],
    *,
    held_back: Collection[str] = (),
    renewed: Collection[str] = (),
) -> Plan:
    """The plan that makes `running` (name → the spec it runs with) equal `desired`.

    A stream in `held_back` (a crashed task waiting for its restart) is not started; a
    running one in `renewed` (its credential's keys changed since it started) is stopped and
    started again, so it connects with the new keys.
    """
    stop: list[tuple[str, str]] = []
    retarget: list[str] = []
    refresh: list[str] = []
    # Most streams, most passes, run the very spec object the registry holds: nothing
    # changed. Only the others are looked at (and sorted): at 5,000 streams, sorting every
    # name twice was a good part of a pass.
    changed = sorted(
        name for name, current in running.items()
        if desired.get(name) is not current or name in renewed
    )
    for name in changed:
        wanted, current = desired.get(name), running[name]
        if wanted is None:
            stop.append((name, GONE))
        elif name in renewed:
            stop.append((name, RENEWED))
        elif wanted.connection_key() != current.connection_key():
            if can_retarget(current, wanted):
                retarget.append(name)
            else:
                stop.append((name, MOVED))
        elif wanted != current:
            refresh.append(name)
    stopped = {name for name, _ in stop}
    start = sorted(
        name for name in (desired.keys() - running.keys()) | (stopped & desired.keys())
        if name not in held_back
    )
    return Plan(tuple(stop), tuple(retarget), tuple(refresh), tuple(start))
