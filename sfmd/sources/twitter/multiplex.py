"""Many v2 filter streams over one connection: a FilterGroup per credential.

v2 allows one filtered-stream connection per app, and the rules belong to the app. So each
credential with active v2 filters gets one FilterGroup: one v2 Stream whose sink is a Router,
an Archive per member stream, and the rules at the API kept equal to what the members want.
Each message is stored, byte for byte, in the archive of every stream its `matching_rules`
name (found by rule id; by tag for a rule whose id is not known yet, as when a message beats
the answer to the add that created its rule). Members come and go without reconnecting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sfmd.archive import Archive, ArchiveError
from sfmd.config import Config
from sfmd.credentials import Credential
from sfmd.locks import CredentialLock
from sfmd.logs import get_logger
from sfmd.registry import StreamSpec, slot_of
from sfmd.sources.twitter.rules import Plan, Rule, RulesApi, RulesRejected, RulesUnavailable, plan
from sfmd.sources.twitter.stream import Stream, StreamTarget, StreamTiming
from sfmd.sources.twitter.v2 import V2, stream_params
from sfmd.status import ConnectionStatus, StreamStatus


def connection_name(credential: str) -> str:
    """The shared connection's name in logs and locks (not a stream name: those have no @)."""
    return f"v2-filter@{credential}"


@dataclass
class Member:
    """One v2 filter stream inside a group: its archive and what was routed to it."""

    spec: StreamSpec
    archive: Archive
    messages: int = 0
    bytes: int = 0
    refused: int = 0  # messages its archive could not take (a full disk), lost
    error: str | None = None  # the archive's refusal, until it takes messages again


def count_routed(messages: list[bytes]) -> int:
    """Every message routed to a member counts as a tweet (routing follows the message's
    `matching_rules`): how `Router` counts a member's messages live, and how the member's
    archive recounts the lines of a file it recovers."""
    return len(messages)


class Router:
    """The shared connection's sink: each message to the archives its rules name."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.routes: dict[str, tuple[str, ...]] = {}  # rule id → member names
        self.unrouted = 0  # messages no member wanted (an old rule, an errors object)
        self.ids: dict[str, str] = {}  # rule value → its id at the API, once known
        self.live = False  # the connection streams now
        self.asked: dict[str, Any] = {}  # what the connection asks for, members' rules aside

    @property
    def current_file(self) -> None:
        return None  # the connection has no file; each member's archive has its own

    @property
    def error(self) -> None:
        return None  # one member's full disk must not stop the others' connection

    @property
    def fenced(self) -> bool:
        """Cluster mode: the credential's lease is gone (every member's archive is fenced
        by it), so the connection must not connect again."""
        return any(member.archive.fenced for member in self.members.values())

    def mark(self, point: str) -> None:
        """Twitter has no resume point."""

    # -- coverage: the connection's is every member's ----------------------------------------

    def streaming(self) -> None:
        self.live = True
        for member in self.members.values():
            member.archive.streaming()

    def not_streaming(self, reason: str, error: str | None = None) -> None:
        self.live = False
        for member in self.members.values():
            member.archive.not_streaming(reason, error)

    def asking(self, what: dict[str, Any]) -> None:
        self.asked = what
        for name in self.members:
            self.ask_for(name)

    def ask_for(self, name: str) -> None:
        """Tell a member's archive what is asked on its behalf: the connection's request and
        the member's rules, with their ids at the API once known."""
        member = self.members[name]
        rules = [{"value": v, "id": self.ids.get(v)} for v in member.spec.rules]
        member.archive.asking({**self.asked, "rules": rules})

    def joined(self, name: str) -> None:
        """A member joins the open connection: collecting from now if it streams."""
        if self.live:
            self.members[name].archive.streaming()
        self.ask_for(name)

    def names_for(self, message: bytes) -> set[str]:
        try:
            rules = json.loads(message).get("matching_rules")
        except (ValueError, AttributeError):
            return set()
        names: set[str] = set()
        for rule in rules if isinstance(rules, list) else ():
            if not isinstance(rule, dict):
                continue
            routed = self.routes.get(str(rule.get("id")))
            if routed is None and isinstance(rule.get("tag"), str):
                routed = tuple(rule["tag"].split(","))
            names.update(routed or ())
        return names

    async def write(self, messages: list[bytes], tweets: int) -> None:
        batches: dict[str, list[bytes]] = {}
        for message in messages:
            wanted = [n for n in self.names_for(message) if n in self.members]
            if not wanted:
                self.unrouted += 1
            for name in wanted:
                batches.setdefault(name, []).append(message)
        for name, batch in batches.items():
            member = self.members.get(name)
            if member is None:
                continue  # left the group while an earlier archive was writing
            try:
                await member.archive.write(batch, count_routed(batch))
            except ArchiveError as e:
                # The archive keeps what it already took and retries by itself; these
                # messages it refused. The member's status says why (`last_error`).
                if member.error is None:
                    get_logger(stream=name).error("archive_refused", error=str(e))
                member.refused += len(batch)
                member.error = str(e)
                continue
            if member.error is not None:
                get_logger(stream=name).info("archive_takes_messages_again")
            member.error = None
            member.messages += len(batch)
            member.bytes += sum(map(len, batch)) + len(batch)


class FilterGroup:
    """One credential's v2 filtered-stream connection, its member streams and their rules."""

    def __init__(
        self,
        credential: Credential,
        config: Config,
        session: aiohttp.ClientSession,
        lock_dir: Path,
        *,
        archive_factory: Callable[[StreamSpec], Archive],
        stream_timing: StreamTiming,
    ) -> None:
        self.credential = credential
        self.config = config
        self.name = connection_name(credential.name)
        # Under `connection`, not `stream`: its lines are no stream's (`sfmctl tail` and log
        # readers filtering by stream must not take it for one).
        self.log = get_logger(connection=self.name)
        self.lock = CredentialLock(lock_dir, slot_of("v2", "filter", credential.name))
        self.router = Router()
        self.rules = RulesApi(
            session, config.twitter.api_url, credential, timeout=config.timing.connect_timeout
        )
        self.dialect = V2(config.twitter.api_url)
        self.stream = Stream(
            StreamTarget(self.name, "filter", stream_params(config.twitter), credential),
            self.dialect,
            session=session,
            sink=self.router,
            timing=stream_timing,
            log_key="connection",
        )
        self.held: list[Rule] = []
        self.foreign: list[Rule] = []
        self.problem: str | None = None  # the last rules sync's failure, until one succeeds
        self.known_names: set[str] = set()  # every name sfmd has tagged rules with
        self._synced: dict[str, list[str]] | None = None  # the wanted rules last applied
        self._archive_factory = archive_factory
        self._started = False

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the credential's v2 filter connection (CredentialBusy if another process has
        it) and connect."""
        self.lock.acquire(self.name)
        self.stream.start()
        self._started = True
        self.log.info("v2_connection_started", credential=self.credential.name)

    async def stop(self) -> None:
        """Close the connection and every member's archive; the rules stay at the API."""
        try:
            await self.stream.stop(grace=self.config.timing.shutdown_timeout / 2)
            for name in list(self.router.members):
                await self._drop(name)
        finally:
            if self._started:
                self.lock.release()
                self._started = False

    # -- members and rules -----------------------------------------------------------------

    async def update(
        self, specs: Iterable[StreamSpec], known: Iterable[str], *, check_rules: bool = False
    ) -> dict[str, ArchiveError]:
        """Members and API rules made to match `specs` (the active v2 filters on this
        credential); `known` names every stream whose tag is sfmd's (the registry's).
        The rules API is asked when the wanted rules changed, after a failed sync, or with
        `check_rules` (the periodic check for drift): a change to some other stream never
        waits on it. Returns the members whose archive would not open: they stay out, their
        rules too."""
        wanted = {spec.name: spec for spec in specs}
        self.known_names |= set(known) | set(wanted)
        for name in list(self.router.members):
            if name not in wanted:
                await self._drop(name)
        failed: dict[str, ArchiveError] = {}
        for name, spec in wanted.items():
            member = self.router.members.get(name)
            if member is not None:
                member.spec = spec
                continue
            archive = self._archive_factory(spec)
            try:
                await archive.open()
            except ArchiveError as e:
                failed[name] = e
                continue
            self.router.members[name] = Member(spec, archive)
            self.router.joined(name)
        if check_rules or self.problem is not None or self.wanted_rules() != self._synced:
            await self.sync_rules()
        return failed

    async def sync_rules(self) -> None:
        """Bring the API's rules to the members' (dry run first); never raises, sets
        `problem` instead, so a rules API outage is retried by the next reconcile."""
        wanted = self.wanted_rules()
        try:
            steps = plan(
                wanted,
                await self.rules.get(),
                known_names=self.known_names,
                prune_foreign=self.config.twitter.v2_prune_foreign_rules,
            )
            await self._apply(steps)
            now = await self.rules.get() if not steps.empty else [*steps.keep, *steps.foreign]
        except (RulesUnavailable, RulesRejected) as e:
            if str(e) != self.problem:
                self.log.error("rules_sync_failed", error=str(e))
            self.problem = f"rules not in sync: {e}"
            return
        self.held = [rule for rule in now if rule.value in wanted]
        self.foreign = [rule for rule in now if rule.value not in wanted]
        self.router.routes = {
            rule.id: tuple(wanted[rule.value]) for rule in self.held if rule.value in wanted
        }
        ids = {rule.value: rule.id for rule in self.held}
        if ids != self.router.ids:  # the members' provenance names their rules' ids
            self.router.ids = ids
            for name in self.router.members:
                self.router.ask_for(name)
        if self.problem is not None:
            self.log.info("rules_in_sync")
        self.problem = None
        self._synced = wanted

    def wanted_rules(self) -> dict[str, list[str]]:
        wanted: dict[str, list[str]] = {}
        for name, member in sorted(self.router.members.items()):
            for value in member.spec.rules:
                wanted.setdefault(value, []).append(name)
        return wanted

    async def _apply(self, steps: Plan) -> None:
        if steps.validate:
            await self.rules.check(steps.validate)
        if steps.delete:
            await self.rules.delete([rule.id for rule in steps.delete])
        if steps.add:
            created = await self.rules.add(steps.add)
            # Routes for the new ids at once: messages matching them may already be flowing.
            wanted = self.wanted_rules()
            for rule in created:
                if rule.value in wanted:
                    self.router.routes[rule.id] = tuple(wanted[rule.value])
        if not steps.empty:
            self.log.info(
                "rules_changed",
                added=[value for value, _ in steps.add],
                deleted=[rule.value for rule in steps.delete],
            )

    async def _drop(self, name: str) -> None:
        member = self.router.members.pop(name)
        await member.archive.close()

    # -- status ----------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self.router.members

    @property
    def empty(self) -> bool:
        return not self.router.members

    def members(self) -> list[str]:
        return list(self.router.members)

    def published(self, name: str) -> int:
        member = self.router.members.get(name)
        return member.archive.published if member is not None else 0

    def rules_in_use(self) -> set[str]:
        """Rule values the connection wants or holds now (a value being deleted included)."""
        return set(self.wanted_rules()) | {rule.value for rule in self.held}

    def member_status(self, name: str) -> StreamStatus:
        """A member's status: the connection's state, the member's own counts."""
        member = self.router.members[name]
        conn = self.stream.status
        return conn.covered(
            member.archive.coverage_shown(),
            messages=member.messages,
            tweets=member.messages,  # only tweets match rules
            bytes=member.bytes,
            last_error=member.error or self.problem or conn.last_error,
            connection=self.connection_status(),
        )

    def connection_status(self) -> ConnectionStatus:
        conn = self.stream.status
        return ConnectionStatus(
            name=self.name,
            state=conn.state,
            messages=conn.messages,
            unrouted=self.router.unrouted,
            errors=self.dialect.errors,
            reconnects=conn.reconnects,
            reconnects_planned=conn.reconnects_planned,
            rules=len(self.held),
            foreign_rules=[{"id": r.id, "value": r.value, "tag": r.tag} for r in self.foreign],
            rules_problem=self.problem,
        )
