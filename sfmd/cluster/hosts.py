"""Which hosts are alive: each host rewrites its own key in a bucket whose keys expire.

The bucket's TTL is the lease TTL and a host beats every third of it, so a host is listed
while it has beaten within the last `ttl` seconds, and drops out by itself when it dies: no
host ever declares another one dead. The list is read from the bucket (one request for the key
names, one read per key), never from a watch. A heartbeat carries what `GET /cluster` shows:
the host's id, when it started and when it last beat (UTC), and whether it is draining (then
placement gives it nothing, but it stays listed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from sfmd.cluster.connection import BucketSpec, bucket_keys, open_bucket
from sfmd.cluster.keys import decode_key, encode_key
from sfmd.cluster.lease import NATS_FAILURES
from sfmd.logs import get_logger

log = get_logger()

BUCKET = "sfm_hosts"


@dataclass(frozen=True)
class HostInfo:
    host: str
    started: str  # UTC ISO 8601
    heartbeat: str  # UTC ISO 8601, the host's clock
    draining: bool
    revision: int
    streams: dict[str, str] = field(default_factory=dict)  # the streams it runs → state


class Hosts:
    """This host's heartbeat, and everyone's."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, host_id: str, ttl: float) -> None:
        self.js = js
        self.kv = kv
        self.host_id = host_id
        self.ttl = ttl
        self.interval = ttl / 3
        self.started = _now()
        self.draining = False
        #: What else a heartbeat carries (the daemon's stream states), read at each beat.
        self.summary: Callable[[], dict[str, Any]] = dict

    @classmethod
    async def open(
        cls, js: JetStreamContext, host_id: str, ttl: float, *, replicas: int = 1,
        bucket: str = BUCKET,
    ) -> Hosts:
        kv = await open_bucket(
            js, BucketSpec(bucket, "sfmd: live hosts", ttl=ttl, replicas=replicas)
        )
        return cls(js, kv, host_id, ttl)

    async def beat(self) -> int:
        """Write this host's heartbeat now; its revision. NATS errors propagate."""
        value = json.dumps({
            "host": self.host_id, "started": self.started, "heartbeat": _now(),
            "draining": self.draining, **self.summary(),
        }).encode()
        return await self.kv.put(encode_key(self.host_id), value)

    async def keep(self) -> None:
        """Beat every third of the TTL until cancelled; a failed beat is logged and retried at
        the next one (the leases, not the heartbeat, decide whether this host may write)."""
        while True:
            try:
                await asyncio.wait_for(self.beat(), timeout=self.interval)
            except NATS_FAILURES as e:
                log.warning("heartbeat_failed", error=type(e).__name__)
            await asyncio.sleep(self.interval)

    async def leave(self) -> None:
        """Drop out of the list at once (a clean stop), instead of after the TTL."""
        try:
            await self.kv.delete(encode_key(self.host_id))
        except NATS_FAILURES as e:
            log.info("heartbeat_leave_failed", error=type(e).__name__)

    async def live(self) -> dict[str, HostInfo]:
        """Every host with a heartbeat younger than the TTL, by id."""
        found: dict[str, HostInfo] = {}
        for key in await bucket_keys(self.js, self.kv):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue  # left, or expired between the two reads
            info = _info(decode_key(key), entry.value, entry.revision)
            found[info.host] = info
        return found


def _info(host: str, value: bytes | None, revision: int) -> HostInfo:
    try:
        data = json.loads(value or b"{}")
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    streams = data.get("streams")
    return HostInfo(
        host=host,
        started=str(data.get("started", "")),
        heartbeat=str(data.get("heartbeat", "")),
        draining=bool(data.get("draining", False)),
        revision=revision,
        streams={str(k): str(v) for k, v in streams.items()} if isinstance(streams, dict) else {},
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
