"""This host as a member of the cluster: what the daemon asks of cluster mode.

The daemon keeps its one reconcile; cluster mode adds a step to each pass (`claim`: which of
the registry's connection slots this host may run now) and one after it (`release_moved`),
and runs its own background work here:

- heartbeats (`hosts`), with a summary of the streams this host runs, so every host can show
  every stream;
- a poll every `poll_interval`: the live hosts, the drained ones and the registry are read
  again, and the daemon reconciles when this host should hold other slots than it does, when
  another host changed the registry, or at once when a lease was lost;
- resume points: every `checkpoint_interval`, each stream whose archive has flushed a newer
  mark (`Archive.durable_mark`) saves it under its slot's lease (`checkpoints`);
- the manifest feed: every manifest line this host appends is published (`feed`), in order,
  retried while NATS is away.

Placement is `placement.owner` over the live hosts that are not drained; a slot placed here is
run only once its lease is acquired, and a slot placed elsewhere is stopped first, the resume
points its streams reached saved, and its lease released after, so its new owner need not
wait out the TTL and resumes where they stopped. A lost lease takes the
slot's streams down at the next pass (started at once); the archive's fence has already
stopped their writes. Watches are not used: every decision is a read or a compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from sfmd.cluster.checkpoints import Checkpoints
from sfmd.cluster.connection import connect
from sfmd.cluster.errors import ClusterError, StaleEpoch, Unavailable
from sfmd.cluster.feed import ManifestFeed
from sfmd.cluster.hosts import HostInfo, Hosts
from sfmd.cluster.keys import encode_key
from sfmd.cluster.kvregistry import KVRegistry
from sfmd.cluster.lease import NATS_FAILURES, Lease, Leases
from sfmd.cluster.placement import place
from sfmd.config import Config
from sfmd.errors import Refused
from sfmd.logs import get_logger
from sfmd.registry import RegistryError, StreamSpec

log = get_logger()

#: The registry bucket's key that lists drained hosts (JSON list of host ids).
DRAINED_KEY = "drained"
#: Resume points saved concurrently: enough to keep NATS busy, few enough not to flood it.
CHECKPOINT_BATCH = 32
#: Manifest lines waiting for the feed at most; past it the oldest are dropped (and logged):
#: the manifests on disk stay the record.
FEED_BACKLOG = 100_000
#: Seconds between cancels of a background task that has not ended (see `stop_background`).
CANCEL_AGAIN = 0.1


def _restart_subject(host: str) -> str:
    return f"sfm.restart.{encode_key(host)}"


class Marked(Protocol):
    """A stream's archive as resume points need it (`archive.Archive` is one)."""

    @property
    def durable_mark(self) -> str | None: ...

    @property
    def fence(self) -> Lease | Any: ...


class UnknownHost(Refused):
    """A drain of a host that is not live (the API's 404)."""

    status = 404
    code = "not_found"


class ClusterMember:
    def __init__(
        self,
        config: Config,
        client: Client,
        js: JetStreamContext,
        hosts: Hosts,
        leases: Leases,
        registry: KVRegistry,
        checkpoints: Checkpoints,
        feed: ManifestFeed,
    ) -> None:
        self.config = config
        self.host_id = config.cluster.host_id
        self.client = client
        self.js = js
        self.hosts = hosts
        self.leases = leases
        self.registry = registry
        self.checkpoints = checkpoints
        self.feed = feed
        self.held: dict[str, Lease] = {}  # slot → this host's lease on it
        self.live: dict[str, HostInfo] = {}  # as last read
        self.drained: set[str] = set()
        self.placement: dict[str, str] = {}  # slot → host, as of the last pass
        # The last `_place` and what it was computed from.
        self._placed_for: tuple[frozenset[str], frozenset[str]] | None = None
        self._placed: dict[str, str] = {}
        self._lost: set[str] = set()  # slots whose lease was lost since the last pass
        self._moving: list[str] = []  # slots to release once their streams stopped
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        # stream → its newest archive here. Held (not weakly) after the stream stops: its
        # last mark is saved before the slot's lease is released.
        self._archives: dict[str, Marked] = {}
        self._saved: dict[str, str] = {}  # stream → the point last saved by this host
        self._feed: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._sending: tuple[str, bytes] | None = None  # taken from the queue, not yet sent
        # Set when the background work must end. nats-py swallows a cancellation that lands
        # inside some of its calls (the call then completes and the task goes on), so the
        # loops also check this, and `stop_background` cancels until they have ended.
        self._stopping = False
        self._feed_dropped = 0
        self._running: Callable[[], dict[str, str]] = dict  # stream → state, for heartbeats
        self._restart: Callable[[str], Awaitable[object]] | None = None

    # -- start and stop ------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: Config) -> ClusterMember:
        """Connect and open every bucket (created if missing); ClusterError if NATS cannot
        be reached or a bucket is set up in a way cluster mode cannot work with."""
        cluster = config.cluster
        client = await connect(
            cluster.nats_url, cluster.host_id, connect_timeout=config.timing.connect_timeout
        )
        try:
            js = client.jetstream()
            ttl = cluster.lease_ttl
            hosts = await Hosts.open(js, cluster.host_id, ttl)
            leases = await Leases.open(js, cluster.host_id, ttl)
            # Not checked against the credentials, as the file registry at start-up: a stream
            # whose credential is gone fails with the reason, the others run.
            registry = await KVRegistry.open(js)
            checkpoints = await Checkpoints.open(js)
            feed = await ManifestFeed.open(js, cluster.host_id)
            member = cls(config, client, js, hosts, leases, registry, checkpoints, feed)
            await member._undrain_self()
            await hosts.beat()  # listed before the first pass, so placement counts this host
            await member.refresh()
        except (RegistryError, ClusterError):
            await client.close()
            raise
        except NATS_FAILURES as e:
            await client.close()
            raise ClusterError(
                f"NATS did not answer while cluster mode started ({type(e).__name__}); check "
                "that nats-server runs with JetStream (-js)"
            ) from None
        log.info("cluster_joined", host=cluster.host_id, hosts=sorted(member.live),
                 lease_ttl=ttl)
        return member

    def start(
        self,
        reconcile: Callable[[], Awaitable[None]],
        running: Callable[[], dict[str, str]],
        restart: Callable[[str], Awaitable[object]],
    ) -> None:
        """The background work; `reconcile` is the daemon's pass, `running` the states of
        the streams this host runs (for its heartbeat), `restart` the daemon's restart of a
        stream it runs (asked by another host, `ask_restart`)."""
        self._running = running
        self._restart = restart
        self.hosts.summary = self._summary
        for name, coro in (
            ("heartbeat", self.hosts.keep()),
            ("cluster poll", self._poll(reconcile)),
            ("checkpoints", self._checkpoint_loop()),
            ("manifest feed", self._feed_loop()),
            ("restarts", self._serve_restarts()),
        ):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def close(self) -> None:
        """After the daemon stopped every stream: let go of every lease (their new owners
        take them at once), publish what the feed still holds (briefly), leave the list of
        hosts, close the client."""
        await self.stop_background()
        await self._checkpoint_all()
        for slot in list(self.held):
            await self.held.pop(slot).release()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.timing.connect_timeout):
                await self._drain_feed()
        await self.hosts.leave()
        with contextlib.suppress(Exception):
            await self.client.drain()
        log.info("cluster_left", host=self.host_id)

    async def stop_background(self) -> None:
        """Stop the heartbeats, the poll, the checkpoints and the feed's task (the daemon
        is shutting down: no pass may start a stream again).

        Each task is cancelled again until it has ended: one cancel can be lost. nats-py
        waits for every reply with `asyncio.wait_for`, which on Python 3.11 returns the
        reply instead of raising when the reply and the cancel arrive together, and the
        task's loop then goes on (the loops also check `_stopping`)."""
        self._stopping = True
        pending, self._tasks = set(self._tasks), []
        while pending:
            for task in pending:
                task.cancel()
            done, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: the loops log their own failures

    # -- each reconcile pass -------------------------------------------------------------------

    async def claim(self, specs: Sequence[StreamSpec]) -> list[StreamSpec]:
        """The registry as this host should run it now: a stream whose slot is placed on
        another host, or whose lease this host could not acquire, is inactive for this pass.
        Slots placed here are acquired; a lease lost since the last pass is not acquired
        again before its streams have stopped (the next pass).

        The daemon holds its lock meanwhile, and a lost lease's streams stop only once this
        returns, so NATS is asked briefly or not at all: while the client is disconnected
        nothing is read or acquired (what is held and valid keeps running; what was lost
        stops)."""
        lost, self._lost = self._lost, set()
        connected = self.client.is_connected
        if connected:
            try:
                async with asyncio.timeout(self.io_timeout):
                    await self.refresh()
            except (TimeoutError, *NATS_FAILURES) as e:
                log.warning("cluster_read_failed", error=type(e).__name__)
                connected = False
        wanted = {spec.slot for spec in specs if spec.active}
        self.placement = self._place(wanted)
        mine = {slot for slot, host in self.placement.items() if host == self.host_id}
        for slot in sorted(mine - set(self.held) - lost) if connected else ():
            try:
                async with asyncio.timeout(self.io_timeout):
                    lease = await self.leases.acquire(slot, on_lost=self._on_lost)
            except (TimeoutError, *NATS_FAILURES) as e:
                log.warning("lease_acquire_failed", slot=slot, error=type(e).__name__)
                break  # NATS is away: the next poll tries again
            if lease is not None:
                lease.start()
                self.held[slot] = lease
        self._moving = [slot for slot in self.held if slot not in mine]
        runnable = {slot for slot in mine if slot in self.held and self.held[slot].valid()}
        if lost:
            self._wake.set()  # their streams stop in this pass; take them back in the next
        return [
            dataclasses.replace(spec, active=False)
            if spec.active and spec.slot not in runnable else spec
            for spec in specs
        ]

    @property
    def io_timeout(self) -> float:
        """Seconds one NATS request in a pass may take: a sixth of the lease TTL."""
        return max(0.5, self.config.cluster.lease_ttl / 6)

    async def release_moved(self) -> None:
        """After the pass stopped them: save where their streams stopped, then release the
        slots now placed elsewhere. Saved first, while the leases are still held: a stream
        that moves before its first checkpoint would otherwise start on its new host with no
        resume point, and lose what came between the two."""
        moving, self._moving = self._moving, []
        if not moving:
            return
        await self._checkpoint_all()
        released = []
        for slot in moving:
            lease = self.held.pop(slot, None)
            if lease is not None:
                await lease.release()
                released.append(lease)
        for name, archive in list(self._archives.items()):
            if any(archive.fence is lease for lease in released):
                del self._archives[name]

    def fence(self, slot: str) -> Lease | None:
        """The lease a new archive of `slot` writes under."""
        return self.held.get(slot)

    def holder(self, slot: str) -> str | None:
        """Which host runs `slot` (placed there, as of the last pass)."""
        if slot in self.held:
            return self.host_id
        return self.placement.get(slot)

    def remote_state(self, name: str, slot: str) -> tuple[str, str | None] | None:
        """A stream run by another host: (host, its state there as its last heartbeat
        said, or None if it did not say); None when the stream is this host's to run."""
        host = self.holder(slot)
        if host is None or host == self.host_id:
            return None
        info = self.live.get(host)
        return host, (info.streams.get(name) if info is not None else None)

    def _place(self, wanted: set[str]) -> dict[str, str]:
        """`placement.place` over the eligible hosts, computed again only when the slots or
        the hosts changed: the poll asks every second, and hashing every slot with every
        host each time was a visible part of a quiet host's CPU at 1,000 slots."""
        key = (frozenset(wanted), frozenset(self.eligible()))
        if key != self._placed_for:
            self._placed_for, self._placed = key, place(key[0], key[1])
        return self._placed

    def eligible(self) -> list[str]:
        """The hosts placement may give slots to: live and not drained."""
        return [host for host in self.live if host not in self.drained]

    async def refresh(self) -> None:
        self.live = await self.hosts.live()
        self.drained = await self._read_drained()
        self.hosts.draining = self.host_id in self.drained

    def _on_lost(self, lease: Lease) -> None:
        if self.held.get(lease.slot) is lease:
            del self.held[lease.slot]
        self._lost.add(lease.slot)
        self._wake.set()

    # -- the poll ------------------------------------------------------------------------------

    async def _poll(self, reconcile: Callable[[], Awaitable[None]]) -> None:
        """Reconcile when the cluster changed under this host: a lease lost, another host's
        change to the registry, a host come or gone or drained."""
        failing = False
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.cluster.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                async with asyncio.timeout(self.io_timeout * 2):
                    changed = await self.registry.refresh()
                    await self.refresh()
            except (TimeoutError, *NATS_FAILURES, RegistryError) as e:
                if not failing:
                    log.warning("cluster_poll_failed", error=f"{type(e).__name__}: {e}")
                failing = True
                changed = False
            else:
                failing = False
            if changed or self._lost or self._should_move():
                await reconcile()

    def _should_move(self) -> bool:
        """Whether the slots this host should hold differ from those it holds."""
        wanted = {spec.slot for spec in self.registry.list() if spec.active}
        placement = self._place(wanted)
        mine = {slot for slot, host in placement.items() if host == self.host_id}
        return mine != set(self.held) or placement != self.placement

    def _summary(self) -> dict[str, Any]:
        return {"streams": self._running()}

    # -- restarts asked through another host ---------------------------------------------------

    async def ask_restart(self, host: str, name: str) -> None:
        """Have `host`, which runs `name`, restart it (`sfmctl restart` through any host);
        Unavailable if it does not confirm within `connect_timeout` seconds."""
        try:
            answer = await self.client.request(
                _restart_subject(host), name.encode(),
                timeout=self.config.timing.connect_timeout,
            )
            reply = json.loads(answer.data)
        except (*NATS_FAILURES, ValueError) as e:
            raise Unavailable(
                f"host {host}, which runs stream {name!r}, did not confirm the restart "
                f"({type(e).__name__}); see GET /cluster, then try again"
            ) from None
        if reply.get("error"):
            raise Unavailable(f"host {host} could not restart stream {name!r}: {reply['error']}")
        log.info("stream_restart_asked", stream=name, host=host)

    async def _serve_restarts(self) -> None:
        """Answer `ask_restart` from other hosts for streams this host runs."""
        assert self._restart is not None, "start() sets it"
        subscription = await self.client.subscribe(_restart_subject(self.host_id))
        try:
            async for message in subscription.messages:
                name = message.data.decode(errors="replace")
                try:
                    await self._restart(name)
                    reply: dict[str, Any] = {"restarted": name}
                except Exception as e:  # answered to the asking host, which reports it
                    reply = {"error": f"{type(e).__name__}: {e}"}
                with contextlib.suppress(*NATS_FAILURES):
                    await message.respond(json.dumps(reply).encode())
        finally:
            with contextlib.suppress(*NATS_FAILURES):
                await subscription.unsubscribe()

    # -- drain ---------------------------------------------------------------------------------

    async def _read_drained(self) -> set[str]:
        return (await self._drained_entry())[0]

    async def _drained_entry(self) -> tuple[set[str], int | None]:
        """The drained hosts and the key's revision (None: no key yet); a value that does
        not parse counts as none drained."""
        try:
            entry = await self.registry.kv.get(DRAINED_KEY)
        except KeyNotFoundError:
            return set(), None
        try:
            return {str(h) for h in json.loads(entry.value or b"[]")}, entry.revision
        except (ValueError, TypeError):
            return set(), entry.revision

    async def drain(self, host: str, *, undo: bool = False) -> dict[str, Any]:
        """Mark `host` drained (placement gives it nothing; its slots move to the others,
        released one by one) or, with `undo`, eligible again. A host that starts clears its
        own mark. UnknownHost for a host that is not live."""
        await self.refresh()
        if host not in self.live and not undo:
            raise UnknownHost(f"no live host named {host!r}; live: {', '.join(sorted(self.live))}")
        for _ in range(10):
            drained, revision = await self._drained_entry()
            drained = drained - {host} if undo else drained | {host}
            value = json.dumps(sorted(drained)).encode()
            try:
                if revision is None:
                    await self.registry.kv.create(DRAINED_KEY, value)
                else:
                    await self.registry.kv.update(DRAINED_KEY, value, last=revision)
            except KeyWrongLastSequenceError:
                continue
            except NATS_FAILURES as e:
                raise Unavailable(
                    f"NATS did not confirm the change ({type(e).__name__}); read "
                    "GET /cluster before trying again"
                ) from None
            log.info("host_drain", host=host, draining=not undo)
            self.drained = drained
            self._wake.set()
            return {"host": host, "draining": not undo}
        raise Unavailable("the drained hosts kept changing; try again")

    async def _undrain_self(self) -> None:
        if self.host_id in await self._read_drained():
            await self.drain(self.host_id, undo=True)

    # -- GET /cluster --------------------------------------------------------------------------

    async def report(self) -> dict[str, Any]:
        """The hosts, their heartbeats, and who holds which connection (from the lease
        bucket, not this host's memory)."""
        try:
            await self.refresh()
            holders = await self.leases.holders()
        except NATS_FAILURES as e:
            raise Unavailable(f"NATS did not answer ({type(e).__name__})") from None
        held: dict[str, int] = {}
        for holder in holders.values():
            held[holder.host] = held.get(holder.host, 0) + 1
        return {
            "enabled": True,
            "host": self.host_id,
            "lease_ttl": self.config.cluster.lease_ttl,
            "hosts": [
                {"host": info.host, "started": info.started, "heartbeat": info.heartbeat,
                 "draining": info.host in self.drained, "connections": held.get(info.host, 0),
                 "streams": len(info.streams)}
                for info in sorted(self.live.values(), key=lambda i: i.host)
            ],
            "connections": [
                {"slot": h.slot, "host": h.host, "epoch": h.epoch,
                 "placed": self.placement.get(h.slot)}
                for h in sorted(holders.values(), key=lambda h: h.slot)
            ],
        }

    # -- resume points -------------------------------------------------------------------------

    def archive_made(self, name: str, archive: Marked) -> None:
        self._archives[name] = archive

    async def saved_point(self, name: str) -> str | None:
        """The resume point saved for `name` by whichever host held it last."""
        async with asyncio.timeout(self.config.timing.connect_timeout):
            checkpoint = await self.checkpoints.get(name)
        return checkpoint.point if checkpoint is not None else None

    async def _checkpoint_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.cluster.checkpoint_interval)
            await self._checkpoint_all()

    async def _checkpoint_all(self) -> None:
        """Save every stream's newer durable mark under its archive's lease, a batch of
        requests at a time (one compare-and-set each, see `Checkpoints.put`)."""
        due = []
        for name, archive in list(self._archives.items()):
            mark, fence = archive.durable_mark, archive.fence
            if mark is None or fence is None or self._saved.get(name) == mark:
                continue
            if fence.valid():
                due.append((name, mark, fence))
        for first in range(0, len(due), CHECKPOINT_BATCH):
            batch = due[first:first + CHECKPOINT_BATCH]
            saved = await asyncio.gather(*(self._save(*item) for item in batch))
            if not all(saved):
                return  # NATS away: the next round tries every stream again

    async def _save(self, name: str, mark: str, fence: Lease) -> bool:
        """One resume point; False when NATS did not answer."""
        try:
            await self.checkpoints.put(name, mark, fence)
        except StaleEpoch as e:
            log.warning("checkpoint_refused", stream=name, reason=str(e))
            self._saved[name] = mark  # not again until it moves on
        except NATS_FAILURES as e:
            log.warning("checkpoint_failed", stream=name, error=type(e).__name__)
            return False
        else:
            self._saved[name] = mark
        return True

    async def forget(self, name: str) -> None:
        """A deleted stream: its resume point goes too (a new stream of the name starts
        afresh)."""
        self._saved.pop(name, None)
        self._archives.pop(name, None)
        with contextlib.suppress(*NATS_FAILURES):
            await self.checkpoints.forget(name)

    # -- the manifest feed ---------------------------------------------------------------------

    def manifest_line(self, name: str, line: bytes) -> None:
        if self._feed.qsize() >= FEED_BACKLOG:
            self._feed.get_nowait()
            self._feed_dropped += 1
            if self._feed_dropped in (1, 10, 100) or self._feed_dropped % 1000 == 0:
                log.warning("manifest_feed_dropped", lines=self._feed_dropped,
                            note="NATS away too long; the manifests on disk keep them")
        self._feed.put_nowait((name, line))

    async def _feed_loop(self) -> None:
        while not self._stopping:
            self._sending = await self._feed.get()
            await self._publish(*self._sending, retry=True)
            self._sending = None

    async def _drain_feed(self) -> None:
        if self._sending is not None:  # the feed's task was stopped while sending it
            sending, self._sending = self._sending, None
            await self._publish(*sending, retry=False)
        while not self._feed.empty():
            name, line = self._feed.get_nowait()
            await self._publish(name, line, retry=False)

    async def _publish(self, name: str, line: bytes, *, retry: bool) -> None:
        wait = 0.1
        while True:
            try:
                await self.feed.publish_line(line, stream=name)
                return
            except NATS_FAILURES as e:
                if not retry or self._stopping:
                    raise
                log.debug("manifest_feed_retry", stream=name, error=type(e).__name__)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
