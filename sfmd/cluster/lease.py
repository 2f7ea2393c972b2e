"""One holder per connection: a lease per slot in a KV bucket, its revision the epoch.

The bucket keeps every key for `ttl` seconds after its last write (the stream's max age, with
one revision per key), so a lease lives exactly as long as its holder keeps rewriting it:

- acquire = `create` (put-if-absent); the revision it returns is the lease's **epoch**. Every
  later acquire of any slot gets a higher one (revisions are the bucket stream's sequence), so
  an epoch orders holders and fences a stale holder's writes (`checkpoints`).
- renew = `update(key, last=revision)`, a compare-and-set every third of `ttl`: it fails if
  anyone else wrote the key, so a holder never renews a lease that was taken from it.
- release = delete with `last=revision`: another host may take the slot at once.

**Timing.** A renewal the holder sends at time `s` is stored by the server at `w >= s`, and the
server keeps it until at least `w + ttl`; nobody can `create` the key before then. The holder
counts its lease from `s` (the send time, not the answer's arrival) and treats it as lost from
`s + ttl - margin` on, whether or not it has heard anything: from that moment `valid()` is
false and `on_lost` is called. So the holder gives the connection up at least `margin` seconds
before any other host can take it, even when NATS is unreachable or the answers are slow. The
margin absorbs the time the owner needs to stop its connection and differences in clock rate;
a NATS server whose wall clock is stepped forward expires keys early by the step, so NATS hosts
keep NTP-slewed clocks. With the defaults (ttl 15 s, margin 5 s, renewal every 5 s) one lost
renewal leaves 5 s for retries before the holder gives up.

A frozen holder (SIGSTOP, a stalled loop) cannot run its timer; but `valid()` reads the
monotonic clock, which runs on while a process is stopped, so a writer that asks `valid()`
before each write writes nothing once it wakes past its deadline, whatever else the loop runs
first. Watches are not used: every decision is a read or a compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from sfmd.cluster.connection import BucketSpec, bucket_keys, open_bucket
from sfmd.cluster.keys import decode_key, encode_key
from sfmd.logs import get_logger

log = get_logger()

BUCKET = "sfm_leases"
#: Keys read at once when every holder is listed.
READ_BATCH = 64

#: A request to NATS that neither succeeds nor fails cleanly (disconnected, timed out, a
#: JetStream API error): the lease cannot be proven by it.
NATS_FAILURES = (NatsError, TimeoutError, OSError)


@dataclass(frozen=True)
class Holder:
    """Who holds a slot, as the bucket says: read by anyone (GET /cluster, placement)."""

    slot: str
    host: str
    epoch: int
    revision: int


class Lease:
    """A slot held by this host. Renew it with `keep()` (a task) until released or lost; a
    lost lease stays lost: acquire the slot again for a new epoch."""

    def __init__(
        self,
        leases: Leases,
        slot: str,
        epoch: int,
        sent: float,
        on_lost: Callable[[Lease], object] | None,
    ) -> None:
        self._leases = leases
        self.slot = slot
        self.host = leases.host_id
        self.epoch = epoch
        self.revision = epoch
        self.last_ok = sent  # monotonic send time of the last write the server accepted
        self.lost_at: float | None = None  # monotonic time it was reported lost
        self.released = False
        self.taken_back = False  # acquired by taking back our own lost lease
        self._on_lost = on_lost
        self._watchdog: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._arm()

    def __repr__(self) -> str:
        state = "lost" if self.lost_at is not None else "released" if self.released else "held"
        return f"Lease({self.slot!r}, epoch={self.epoch}, {state})"

    @property
    def deadline(self) -> float:
        """Monotonic time from which this lease counts as lost unless renewed before."""
        return self.last_ok + self._leases.ttl - self._leases.margin

    def valid(self) -> bool:
        """Whether this host may still act as the slot's holder: ask before every write."""
        return (
            self.lost_at is None
            and not self.released
            and self._leases.clock() < self.deadline
        )

    def start(self) -> None:
        """Renew in a task of its own until released or lost."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.keep(), name=f"lease {self.slot}"
            )

    async def keep(self) -> None:
        """Renew every third of the TTL; after a failed renewal, retry sooner, until the
        lease is lost (the watchdog's deadline, or someone else's write seen) or released."""
        leases = self._leases
        while self.valid():
            wait = self.last_ok + leases.renew_interval - leases.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            if not self.valid():
                break
            if not await self.renew():
                await asyncio.sleep(min(leases.retry_interval, max(0.0, self.remaining())))

    def remaining(self) -> float:
        return self.deadline - self._leases.clock()

    async def renew(self) -> bool:
        """One compare-and-set on the lease; True if it is proven this host's until a new
        deadline. A refused CAS (someone else wrote, or the key expired) loses it at once."""
        if not self.valid():
            return False
        leases = self._leases
        sent = leases.clock()
        try:
            revision = await asyncio.wait_for(
                leases.kv.update(self.key, leases.value(self.epoch), last=self.revision),
                timeout=max(0.05, self.remaining()),
            )
        except KeyWrongLastSequenceError:
            if not await self._adopt_own_write():
                self.lose("taken")
            return False
        except NATS_FAILURES as e:
            log.warning(
                "lease_renew_failed", slot=self.slot, epoch=self.epoch, error=type(e).__name__,
                left=round(self.remaining(), 3),
            )
            return False
        if self.lost_at is not None or self.released:
            return False  # lost while the answer was on its way: stays lost
        self.revision = revision
        self.last_ok = sent
        self._arm()
        return True

    async def _adopt_own_write(self) -> bool:
        """A renewal that timed out here may still have been stored: then the key holds our
        own host and epoch at a revision we never heard of. Renew on from that revision; the
        deadline stays the one last proven, so nothing is assumed about when it was stored."""
        try:
            entry = await self._leases.kv.get(self.key)
        except (KeyNotFoundError, *NATS_FAILURES):
            return False
        holder = _holder(self.slot, entry.value, entry.revision)
        if holder.host != self.host or holder.epoch != self.epoch:
            return False
        self.revision = entry.revision
        return True

    async def release(self) -> None:
        """Give the slot up (on a clean stop or a move): delete the key if it is still ours, so
        the next holder need not wait for the TTL. Stop writing before calling this."""
        if self.released:
            return
        was_valid = self.valid()
        self.released = True
        self._disarm()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not was_valid:
            return
        try:
            # Briefly: NATS away, the key expires by itself, and the caller may be holding
            # up the stop of other connections.
            await asyncio.wait_for(
                self._leases.kv.delete(self.key, last=self.revision), timeout=self._leases.margin
            )
            log.info("lease_released", slot=self.slot, epoch=self.epoch)
        except (KeyWrongLastSequenceError, *NATS_FAILURES) as e:
            # Someone else's now, or NATS away: the key expires by itself.
            log.info("lease_release_failed", slot=self.slot, error=type(e).__name__)

    def lose(self, why: str) -> None:
        """Mark the lease lost (once) and tell the owner, who must stop the connection."""
        if self.lost_at is not None or self.released:
            return
        self.lost_at = self._leases.clock()
        self._disarm()
        self._leases.remember(self)
        log.warning("lease_lost", slot=self.slot, epoch=self.epoch, why=why)
        if self._on_lost is not None:
            self._on_lost(self)

    @property
    def key(self) -> str:
        return encode_key(self.slot)

    def _arm(self) -> None:
        """(Re)schedule the watchdog at the deadline. The loop's clock is the monotonic one
        the deadline is counted on."""
        self._disarm()
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_at(
            loop.time() + self.remaining(), self._expire
        )

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _expire(self) -> None:
        self._watchdog = None
        if self._leases.clock() >= self.deadline:
            self.lose("not renewed in time")
        else:
            self._arm()  # renewed meanwhile, or the timer fired a little early


class Leases:
    """This host's view of the lease bucket: acquire slots, read holders."""

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        host_id: str,
        ttl: float,
        *,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.js = js
        self.kv = kv
        self.host_id = host_id
        self.ttl = ttl
        #: How long before the server could expire a lease its holder gives it up.
        self.margin = ttl / 3 if margin is None else margin
        if not 0 < self.margin < ttl:
            raise ValueError(f"the lease margin must lie between 0 and the TTL ({ttl:g} s)")
        self.renew_interval = ttl / 3
        self.retry_interval = max(0.05, min(1.0, ttl / 15))
        self.clock = clock
        # slot -> the epoch of a lease of ours that was lost: while the key holds our write of
        # that epoch, nobody took the slot since, and a compare-and-set may take it back.
        self._lost_epochs: dict[str, int] = {}

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        host_id: str,
        ttl: float,
        *,
        margin: float | None = None,
        replicas: int = 1,
        bucket: str = BUCKET,
    ) -> Leases:
        kv = await open_bucket(
            js,
            BucketSpec(bucket, "sfmd: one holder per connection", ttl=ttl, replicas=replicas),
        )
        return cls(js, kv, host_id, ttl, margin=margin)

    def value(self, epoch: int | None) -> bytes:
        return json.dumps({"host": self.host_id, "epoch": epoch}).encode()

    def remember(self, lease: Lease) -> None:
        self._lost_epochs[lease.slot] = lease.epoch

    async def acquire(
        self, slot: str, on_lost: Callable[[Lease], object] | None = None
    ) -> Lease | None:
        """The slot's lease if nobody holds it (None if someone does). Raises NATS's errors
        when NATS cannot be asked. Not renewed until `start()` (or `keep()`)."""
        key = encode_key(slot)
        sent = self.clock()
        try:
            # The value names no epoch yet: a key's first revision is its epoch, and readers
            # take it so until the first renewal writes it in.
            epoch = await self.kv.create(key, self.value(None))
        except KeyNotFoundError:
            # nats-py's create is an update on revision 0 and, when that is refused, a read
            # to see whether the key was deleted; a lease that expires between the two makes
            # the read find nothing. The slot is free now: the next attempt takes it.
            return None
        except KeyWrongLastSequenceError:
            epoch = await self._take_back(slot, key)
            if epoch is None:
                return None
            log.info("lease_taken_back", slot=slot, epoch=epoch)
            self._lost_epochs.pop(slot, None)
            lease = Lease(self, slot, epoch, sent, on_lost)
            lease.taken_back = True
            return lease
        log.info("lease_acquired", slot=slot, epoch=epoch)
        self._lost_epochs.pop(slot, None)
        return Lease(self, slot, epoch, sent, on_lost)

    async def _take_back(self, slot: str, key: str) -> int | None:
        """After a lease of ours was lost (NATS unreachable for a while), the key may still
        hold our own write of that lease (the last renewal, or one that reached the server
        only after the reconnect): then nobody has held the slot since, and a compare-and-set
        on that revision takes it back at once, under a new epoch, instead of waiting out the
        TTL."""
        mine = self._lost_epochs.get(slot)
        if mine is None:
            return None
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None  # expired meanwhile: the next create will do
        holder = _holder(slot, entry.value, entry.revision)
        if (holder.host, holder.epoch) != (self.host_id, mine):
            self._lost_epochs.pop(slot, None)  # someone else's now
            return None
        try:
            return await self.kv.update(key, self.value(None), last=entry.revision)
        except KeyWrongLastSequenceError:
            return None

    async def holder(self, slot: str) -> Holder | None:
        """Who holds `slot` now, or None (free, expired or released)."""
        try:
            entry = await self.kv.get(encode_key(slot))
        except KeyNotFoundError:
            return None
        return _holder(slot, entry.value, entry.revision)

    async def holders(self) -> dict[str, Holder]:
        """Every held slot, read key by key (the stream's subject list names the keys; no
        watch, whose first replay nats-py may cut short), many reads in flight at once: a
        thousand slots one after another would take the better part of a second."""
        slots = [decode_key(key) for key in await bucket_keys(self.js, self.kv)]
        found: dict[str, Holder] = {}
        for first in range(0, len(slots), READ_BATCH):
            batch = slots[first:first + READ_BATCH]
            for slot, holder in zip(batch, await asyncio.gather(*map(self.holder, batch)),
                                    strict=True):
                if holder is not None:
                    found[slot] = holder
        return found


def _holder(slot: str, value: bytes | None, revision: int) -> Holder:
    try:
        data = json.loads(value or b"{}")
        host = str(data.get("host", "?"))
        epoch = int(data.get("epoch") or revision)
    except (ValueError, TypeError, AttributeError):
        host, epoch = "?", revision
    return Holder(slot=slot, host=host, epoch=epoch, revision=revision)
