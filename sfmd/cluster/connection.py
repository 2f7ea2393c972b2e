"""The NATS client of one host, and the buckets and streams it opens.

One client per host (nats-py multiplexes everything on it). It reconnects forever: a host whose
NATS is away keeps its files, stops its connections (its leases cannot be proven) and carries
on when NATS is back. Server URLs may one day carry credentials, so they are never logged:
only the host and port are.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from sfmd.cluster.errors import ClusterError
from sfmd.logs import get_logger

log = get_logger()


@dataclass(frozen=True)
class BucketSpec:
    """How cluster mode wants a KV bucket. `ttl` None: keys live until deleted."""

    name: str
    description: str
    ttl: float | None = None
    history: int = 1
    replicas: int = 1
    max_value_size: int = -1


def servers_of(nats_url: str) -> list[str]:
    """The `[cluster] nats_url` value as nats-py's server list."""
    return [part.strip() for part in nats_url.split(",") if part.strip()]


def shown(nats_url: str) -> str:
    """The servers as a log line may show them: scheme, host and port only."""
    out = []
    for server in servers_of(nats_url):
        parts = urlsplit(server)
        port = f":{parts.port}" if parts.port else ""
        out.append(f"{parts.scheme}://{parts.hostname}{port}")
    return ",".join(out)


async def connect(
    nats_url: str,
    host_id: str,
    *,
    connect_timeout: float = 5.0,
    reconnect_wait: float = 2.0,
) -> Client:
    """A client named after the host, reconnecting forever; ClusterError if no server answers
    at all at start-up (a typo in nats_url should stop start-up, not hang it)."""
    where = shown(nats_url)
    # While NATS is away every reconnect attempt fails: log the first failure of each kind,
    # not one line per attempt.
    seen: set[str] = set()

    async def disconnected() -> None:
        log.warning("nats_disconnected", servers=where)

    async def reconnected() -> None:
        seen.clear()
        log.info("nats_reconnected", servers=where)

    async def error(e: Exception) -> None:
        if type(e).__name__ not in seen:
            seen.add(type(e).__name__)
            log.warning("nats_error", servers=where, error=type(e).__name__)

    try:
        # nats-py tries the servers again and again when it may reconnect forever, even
        # before the first connection: bound the wait so a wrong nats_url stops start-up.
        async with asyncio.timeout(connect_timeout * 2 + 1):
            return await nats.connect(
                servers=servers_of(nats_url),
                name=f"sfmd {host_id}",
                connect_timeout=max(1, round(connect_timeout)),
                reconnect_time_wait=reconnect_wait,  # type: ignore[arg-type]  # a float works
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
    except Exception as e:
        raise ClusterError(
            f"cannot reach NATS at {where} ({type(e).__name__}); check [cluster] nats_url and "
            "that nats-server runs with JetStream (-js)"
        ) from None


async def open_bucket(js: JetStreamContext, spec: BucketSpec) -> KeyValue:
    """The bucket, created as `spec` says if missing. An existing bucket is used as it is
    (an operator may have created it with more replicas), except where correctness depends on
    it: a different TTL would break the lease timing, and limit markers make nats-py read an
    expired key as a live empty one."""
    try:
        kv = await js.key_value(spec.name)
    except BucketNotFoundError:
        kv = await js.create_key_value(
            KeyValueConfig(
                bucket=spec.name,
                description=spec.description,
                ttl=spec.ttl,
                history=spec.history,
                replicas=spec.replicas,
                max_value_size=spec.max_value_size,
                storage=StorageType.FILE,
            )
        )
        log.info("nats_bucket_created", bucket=spec.name, ttl=spec.ttl, replicas=spec.replicas)
    status = await kv.status()
    ttl = status.ttl or None
    if spec.ttl is not None and (ttl is None or abs(ttl - spec.ttl) > 1e-3):
        raise ClusterError(
            f"NATS bucket {spec.name} keeps keys for {_seconds(ttl)} but this host's lease_ttl "
            f"is {spec.ttl:g} s: every host must use the same [cluster] lease_ttl; to change it, "
            f"stop every host and delete the bucket (nats kv del {spec.name})"
        )
    if status.marker_ttl:
        raise ClusterError(
            f"NATS bucket {spec.name} has limit markers on (marker TTL {status.marker_ttl:g} s); "
            f"sfmd needs them off: delete the bucket (nats kv del {spec.name}) and let sfmd "
            "create it"
        )
    return kv


async def bucket_keys(js: JetStreamContext, kv: KeyValue) -> list[str]:
    """The keys that have a message in the bucket (deleted ones included: `get` tells),
    read from the stream's subject list in one request. nats-py's `keys()` rides a watch
    whose first replay it can cut short (nats.py #842), so it is not used."""
    status = await kv.status()
    stream = status.stream_info.config.name
    assert stream is not None
    info = await js.stream_info(stream, subjects_filter=">")
    prefix = f"$KV.{status.bucket}."
    return sorted(s.removeprefix(prefix) for s in (info.state.subjects or {}))


def _seconds(ttl: float | None) -> str:
    return "ever" if not ttl else f"{ttl:g} s"
