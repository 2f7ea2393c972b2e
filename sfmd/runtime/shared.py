"""Streams that share one connection (`Mode.SHARED`): Twitter v2 filters (one filtered-stream
connection per credential) and Mastodon streams (one streaming socket per account).

One shared connection (the source's `SharedConnection`) per slot with active members;
adding, changing or removing a member happens on the open connection, never reconnecting it.
This back end only decides which connections exist and who belongs to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import aiohttp

from sfmd.config import Config
from sfmd.credentials import Credential
from sfmd.locks import CredentialBusy
from sfmd.logs import get_logger
from sfmd.registry import Mode, StreamSpec
from sfmd.runtime.backend import Desired, Ledger
from sfmd.runtime.tasks import ClusterHooks, source_context
from sfmd.sources import SharedConnection, source_of
from sfmd.status import StreamStatus

log = get_logger()


class SharedBackend:
    def __init__(
        self,
        config: Config,
        session: Callable[[], aiohttp.ClientSession],
        credentials: Callable[[], Mapping[str, Credential]],
        ledger: Ledger,
        hooks: ClusterHooks | None = None,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self.session = session
        self.credentials = credentials
        self.ledger = ledger
        self.groups: dict[str, SharedConnection] = {}  # by slot (`StreamSpec.slot`)
        self.keys: dict[str, Credential] = {}  # by slot: the keys each group connected with
        self.forgotten: set[str] = set()  # members deleted while running: their tags stay ours
        self.check_rules = False  # set for the periodic pass: ask the rules API about drift

    @staticmethod
    def wanted(specs: Iterable[StreamSpec]) -> dict[str, list[StreamSpec]]:
        """The active members, by slot: one credential may hold a v2 filter connection and
        a Mastodon one, which share nothing."""
        wanted: dict[str, list[StreamSpec]] = {}
        for spec in specs:
            if spec.active and spec.mode is Mode.SHARED:
                wanted.setdefault(spec.slot, []).append(spec)
        return wanted

    async def stop_unwanted(self, desired: Desired) -> None:
        """Members come and go in `start_wanted`, on the open connection; shared slots are
        their own, so nothing here has to make way for another back end."""

    async def start_wanted(self, desired: Desired, *, jitter: float = 0.0) -> None:
        wanted = self.wanted(desired.active(Mode.SHARED).values())
        if not wanted and not self.groups:
            return  # no shared connection, none to make
        known = desired.names | self.forgotten
        keys = self.credentials()
        for slot, group in list(self.groups.items()):
            held = self.keys[slot]
            if slot in wanted and keys.get(held.name) not in (None, held):
                # New keys in the credentials file: a new connection with them, the members
                # rejoin it below. What they asked for stays at the network.
                for name in group.members():
                    self.ledger.stopped(name, group.member_status(name),
                                        published=group.published(name))
                await group.stop()
                del self.groups[slot]
                log.info("shared_connection_stopped", connection=group.name,
                         reason="its credential's keys changed in the credentials file")
                continue
            staying = {s.name for s in wanted.get(slot, [])}
            for name in group.members():
                if name not in staying:
                    self.ledger.stopped(name, group.member_status(name),
                                        published=group.published(name))
            if slot not in wanted:
                await group.update([], known)  # let go of what the stopped members asked for
                await group.stop()
                del self.groups[slot]
                self.keys.pop(slot, None)
                log.info("shared_connection_stopped", connection=group.name)
        for slot, members in wanted.items():
            group = self.groups.get(slot)
            if group is None:
                context = source_context(self.config, self.session(), self.hooks)
                credential = keys[members[0].credential]
                group = source_of(members[0]).shared(credential, context)
                try:
                    await group.start()
                except CredentialBusy as e:
                    for spec in members:
                        self.ledger.fail(spec.name, str(e))
                    continue
                self.groups[slot] = group
                self.keys[slot] = credential
            failed = await group.update(members, known, check_rules=self.check_rules)
            for spec in members:
                if spec.name in failed:
                    self.ledger.fail(spec.name, str(failed[spec.name]))
                else:
                    self.ledger.clear(spec.name)

    def group_of(self, spec: StreamSpec) -> SharedConnection | None:
        group = self.groups.get(spec.slot)
        return group if group is not None and spec.name in group else None

    def status(self, spec: StreamSpec) -> StreamStatus | None:
        group = self.group_of(spec)
        if group is None or spec.name in self.ledger.failed:
            return None
        return group.member_status(spec.name)

    def rules_in_use(self, slot: str, specs: Sequence[StreamSpec]) -> set[str]:
        """What needs no new check at the network: what the registry's active members on the
        credential ask for (checked when it was stored), and what its connection asks for or
        holds now. Either side alone can lag the other while a change is being applied: a
        value a stopped stream let go of may still be at the API for a moment."""
        wanted = {v for s in self.wanted(specs).get(slot, []) for v in s.rules}
        group = self.groups.get(slot)
        return wanted | group.rules_in_use() if group is not None else wanted

    def published(self, spec: StreamSpec) -> int:
        group = self.group_of(spec)
        return group.published(spec.name) if group is not None else 0

    async def close(self) -> None:
        """Close every connection; what they asked for stays at the API for the next start."""
        groups, self.groups = list(self.groups.values()), {}
        for group in groups:
            await group.stop()
