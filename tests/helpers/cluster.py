"""Several `sfmd run` hosts on one real nats-server, for the cluster system tests.

Each host has a home of its own (config, credentials, data, state, log, socket), as separate
machines would; they share the NATS server and the fake APIs.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmd.fake import FakeAPI
from sfmd.fake.mount import ConnectionRecord
from tests.helpers.api import Api
from tests.helpers.config import write_credentials_file, write_daemon_config
from tests.helpers.daemon import SfmdProcess, start_daemon, stop
from tests.helpers.files import manifest

#: Cluster timings for tests: a takeover within seconds, not the production 15 s.
FAST_CLUSTER = {"lease_ttl": 3, "poll_interval": 0.2, "checkpoint_interval": 0.2}
#: Seconds each host has to stop cleanly when several stop at once on a loaded machine.
STOP_TIMEOUT = 20.0


@dataclass
class Host:
    host_id: str
    home: Path
    config: Path
    proc: SfmdProcess | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.home / "sfmd.sock"

    @property
    def data(self) -> Path:
        return self.home / "data"

    def api(self) -> Api:
        return Api(self.socket)

    async def start(self) -> None:
        self.proc = await start_daemon(self.home, self.config)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (a stopped process too: SIGKILL needs no SIGCONT)."""
        if self.proc is not None:
            self.proc.kill()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGCONT)


def make_host(
    root: Path,
    fake_api: FakeAPI,
    nats_url: str,
    host_id: str,
    *,
    settings: dict[str, Any] | None = None,
    **cluster: Any,
) -> Host:
    """A host's home under `root`, its config pointing at `nats_url` (not started);
    `settings` are more of `write_daemon_config`'s keywords (`daemon={...}`, ...)."""
    home = root / host_id
    home.mkdir(parents=True, exist_ok=True)
    write_credentials_file(home)
    config = write_daemon_config(
        home, fake_api,
        cluster={"nats_url": nats_url, "host_id": host_id, **FAST_CLUSTER, **cluster},
        **(settings or {}),
    )
    return Host(host_id, home, config)


async def stop_all(hosts: Sequence[Host]) -> None:
    """SIGTERM to every host at once; each must exit 0 (its files published)."""
    procs = [host.proc for host in hosts]
    assert all(proc is not None for proc in procs)
    await asyncio.gather(*(stop(proc, STOP_TIMEOUT) for proc in procs if proc is not None))


# -- reading the cluster through a host's API -------------------------------------------------


async def cluster_of(host: Host) -> dict[str, Any]:
    """GET /cluster from `host`."""
    async with host.api() as api:
        report: dict[str, Any] = await api.ok("GET", "/cluster")
        return report


async def streams_of(host: Host) -> dict[str, dict[str, Any]]:
    """GET /streams from `host`, by name."""
    async with host.api() as api:
        answer = await api.ok("GET", "/streams")
    return {s["name"]: s for s in answer["streams"]}


def holders(report: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """slot → (host, epoch), as a GET /cluster answer lists the leases."""
    out: dict[str, tuple[str, int]] = {}
    for c in report["connections"]:
        assert c["slot"] not in out, f"slot {c['slot']} listed twice: {report['connections']}"
        out[c["slot"]] = (c["host"], c["epoch"])
    return out


async def all_streaming(hosts: Sequence[Host], names: Iterable[str]) -> bool:
    """Every stream in `names` is listed by every host in `hosts`, and streaming, run by one
    of `hosts` that all of them name alike (a dead host's streams show the state its last
    heartbeat said until it expires)."""
    wanted = set(names)
    ids = {host.host_id for host in hosts}
    seen: list[dict[str, str | None]] = []
    for host in hosts:
        listed = await streams_of(host)
        if not wanted <= set(listed):
            return False
        if any(listed[n]["status"]["state"] != "streaming" or listed[n]["host"] not in ids
               for n in wanted):
            return False
        seen.append({n: listed[n]["host"] for n in wanted})
    return all(s == seen[0] for s in seen)


async def agreed_holders(hosts: Sequence[Host]) -> dict[str, tuple[str, int]] | None:
    """slot → (host, epoch) if GET /cluster from every host in `hosts` says the same, and
    lists exactly `hosts` as the live ones; else None."""
    answers = [await cluster_of(host) for host in hosts]
    ids = {h.host_id for h in hosts}
    if any({h["host"] for h in a["hosts"]} != ids for a in answers):
        return None
    first = holders(answers[0])
    return first if all(holders(a) == first for a in answers[1:]) else None


# -- streams across sources and credentials ---------------------------------------------------


def mixed_bodies(
    *, v1: int = 2, v2: int = 8, jetstream: int = 10, mastodon: int = 10
) -> list[dict[str, Any]]:
    """Streams across credentials and sources: v1.1 filters on alpha and beta (one each, the
    slot is exclusive), v2 filters shared on the two apps, Jetstream streams (one socket
    each) and Mastodon hashtags on the accounts fedi and fedi2. The defaults make 30
    streams on 16 connections."""
    creds = ["alpha", "beta"]
    out: list[dict[str, Any]] = [
        {"name": f"tw-{creds[i]}", "kind": "filter", "track": [f"word{i}"],
         "credential": creds[i]} for i in range(v1)
    ]
    out += [{"name": f"v2-{i}", "kind": "filter", "api": "v2", "credential": creds[i % 2],
             "rules": [{"value": f"rule{i}"}]} for i in range(v2)]
    out += [{"name": f"sky-{i}", "source": "bluesky", "kind": "jetstream"}
            for i in range(jetstream)]
    out += [{"name": f"md-{i}", "source": "mastodon", "kind": "hashtag", "tag": mastodon_tag(i),
             "credential": "fedi" if i % 2 == 0 else "fedi2"} for i in range(mastodon)]
    return out


def mastodon_tag(i: int) -> str:
    return f"tag{i}"


# -- what the fake API saw ---------------------------------------------------------------------

#: The fake's streaming endpoints, by the connection rule they fall under: Twitter allows one
#: v1.1 connection per user token, one v2 filtered and one v2 sample per app.
ONE_PER_CREDENTIAL = {"filter": "v1.1", "sample": "v1.1", "v2/filter": "v2/filter",
                      "v2/sample": "v2/sample", "mastodon/streaming": "mastodon"}


def connected(api: FakeAPI, endpoint: str) -> list[ConnectionRecord]:
    """The streaming connections on `endpoint` that were answered (200 or upgraded)."""
    return [r for r in api.log if r.endpoint == endpoint and r.status in (200, 101)]


def overlapping(records: Sequence[ConnectionRecord]) -> list[tuple[int, int]]:
    """Pairs of connections (by conn) whose [opened, closed] intervals overlap; an open
    connection's interval has no end."""
    ordered = sorted(records, key=lambda r: r.opened)
    pairs = []
    for i, first in enumerate(ordered):
        for later in ordered[i + 1:]:
            if first.closed is None or later.opened < first.closed:
                pairs.append((first.conn, later.conn))
    return pairs


def twice_held(api: FakeAPI, *, allowed: Iterable[int] = ()) -> list[str]:
    """What shows a Twitter credential's (or Mastodon account's) connection held twice:
    a connection the fake cut as replaced, a second v2 connection refused, overlapping
    intervals on one credential. Connections in `allowed` (a frozen host's socket, which
    the server sees open while the new owner connects) are left out."""
    skip = set(allowed)
    problems = [f"conn {r.conn} ({r.endpoint}, {r.credential}) replaced" for r in api.log
                if r.close_reason == "replaced" and r.conn not in skip]
    problems += [f"conn {r.conn} ({r.endpoint}, {r.credential}) refused 429" for r in api.log
                 if r.endpoint in ("v2/filter", "v2/sample") and r.status == 429]
    groups: dict[tuple[str, str | None], list[ConnectionRecord]] = {}
    for endpoint, family in ONE_PER_CREDENTIAL.items():
        for r in connected(api, endpoint):
            if r.conn not in skip:
                groups.setdefault((family, r.credential), []).append(r)
    for (family, credential), records in sorted(groups.items(), key=str):
        problems += [f"{family} on {credential}: conn {a} and {b} overlap"
                     for a, b in overlapping(records)]
    return problems


# -- what the hosts stored ---------------------------------------------------------------------


def files_by_epoch(host: Host, name: str) -> dict[int, list[dict[str, Any]]]:
    """The published files of stream `name` in `host`'s data dir, by the epoch their
    manifest line names; each line's provenance must name `host`."""
    out: dict[int, list[dict[str, Any]]] = {}
    for entry in manifest(host.data, name):
        provenance = entry["provenance"]
        assert provenance["host"] == host.host_id, entry
        out.setdefault(int(provenance["epoch"]), []).append(entry)
    return out
