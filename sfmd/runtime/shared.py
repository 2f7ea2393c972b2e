"""Streams that share one connection per credential (`Mode.SHARED`): today Twitter v2 filters.

One `FilterGroup` per credential with active members; adding, changing or removing a member
changes the API's rules on the open connection, never reconnecting it. The group lives in the
Twitter source (`sources.twitter.multiplex`); this back end only decides which groups exist
and who belongs to them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from sfmd.archive import Archive
from sfmd.config import Config
from sfmd.credentials import Credential
from sfmd.locks import CredentialBusy
from sfmd.logs import get_logger
from sfmd.registry import Mode, StreamSpec
from sfmd.runtime.backend import Ledger
from sfmd.runtime.tasks import lock_dir, stream_timing
from sfmd.sources.twitter.multiplex import FilterGroup

log = get_logger()


class SharedBackend:
    def __init__(
        self,
        config: Config,
        session: Callable[[], aiohttp.ClientSession],
        credentials: Callable[[], Mapping[str, Credential]],
        ledger: Ledger,
        archive_factory: Callable[[StreamSpec], Archive],
    ) -> None:
        self.config = config
        self.session = session
        self.credentials = credentials
        self.ledger = ledger
        self.archive_factory = archive_factory
        self.groups: dict[str, FilterGroup] = {}  # by credential name
        self.forgotten: set[str] = set()  # members deleted while running: their tags stay ours
        self.check_rules = False  # set for the periodic pass: ask the rules API about drift

    @staticmethod
    def wanted(specs: Sequence[StreamSpec]) -> dict[str, list[StreamSpec]]:
        """The active members, by credential."""
        wanted: dict[str, list[StreamSpec]] = {}
        for spec in specs:
            if spec.active and spec.mode is Mode.SHARED:
                wanted.setdefault(spec.credential, []).append(spec)
        return wanted

    async def stop_unwanted(self, specs: Sequence[StreamSpec]) -> None:
        """Members come and go in `start_wanted`, on the open connection; shared slots are
        their own, so nothing here has to make way for another back end."""

    async def start_wanted(self, specs: Sequence[StreamSpec], *, jitter: float = 0.0) -> None:
        wanted = self.wanted(specs)
        known = {s.name for s in specs} | self.forgotten
        for credential, group in list(self.groups.items()):
            staying = {s.name for s in wanted.get(credential, [])}
            for name in list(group.router.members):
                if name not in staying:
                    self.ledger.stopped(name, group.member_status(name))
            if credential not in wanted:
                await group.update([], known)  # delete the stopped streams' rules
                await group.stop()
                del self.groups[credential]
                log.info("v2_connection_stopped", connection=group.name)
        for credential, members in wanted.items():
            group = self.groups.get(credential)
            if group is None:
                group = FilterGroup(
                    self.credentials()[credential], self.config, self.session(),
                    lock_dir(self.config),
                    archive_factory=self.archive_factory,
                    stream_timing=stream_timing(self.config.timing),
                )
                try:
                    await group.start()
                except CredentialBusy as e:
                    for spec in members:
                        self.ledger.fail(spec.name, str(e))
                    continue
                self.groups[credential] = group
            failed = await group.update(members, known, check_rules=self.check_rules)
            for spec in members:
                if spec.name in failed:
                    self.ledger.fail(spec.name, str(failed[spec.name]))
                else:
                    self.ledger.clear(spec.name)

    def group_of(self, spec: StreamSpec) -> FilterGroup | None:
        group = self.groups.get(spec.credential)
        return group if group is not None and spec.name in group else None

    def status(self, spec: StreamSpec) -> dict[str, Any] | None:
        group = self.group_of(spec)
        if group is None or spec.name in self.ledger.failed:
            return None
        return group.member_status(spec.name)

    def rules_in_use(self, credential: str, specs: Sequence[StreamSpec]) -> set[str]:
        """Rule values that need no dry run: those the registry's active members want (their
        values passed one when they were stored), and those the connection holds or wants
        now. Either side alone can lag the other while a change is being applied: a value
        a stopped stream let go of may still be at the API for a moment."""
        wanted = {v for s in self.wanted(specs).get(credential, []) for v in s.rules}
        group = self.groups.get(credential)
        if group is not None:
            wanted |= set(group.wanted_rules()) | {rule.value for rule in group.held}
        return wanted

    def published(self, spec: StreamSpec) -> int:
        group = self.group_of(spec)
        member = group.router.members.get(spec.name) if group is not None else None
        return member.archive.published if member is not None else 0

    async def close(self) -> None:
        """Close every connection; the rules stay at the API for the next start."""
        groups, self.groups = list(self.groups.values()), {}
        for group in groups:
            await group.stop()
