"""Cluster mode's takeover time: `kill -9` the host holding a set of connections, and time
until every one of them streams again on another host.

Run by hand: `python bench/takeover.py [--kills 20] [--hosts 3] [--lease-ttl 15]`.

What runs, all real processes on loopback: one `nats-server -js`, one `sfmd fakeapi` (Twitter
v1.1, a Jetstream instance and a Mastodon instance), and `--hosts` `sfmd run` hosts, each with
its own home and `[cluster] nats_url`, otherwise sfmd's defaults (`poll_interval` 1 s,
`start_jitter` 5 s, ...). Through one host's control API the bench creates the streams:
`--twitter` v1.1 sample streams (one credential each), `--jetstream` Jetstream streams and
`--mastodon` Mastodon hashtag streams (one account each): one connection slot each, spread
over the hosts by placement.

Each round:

1. Settled: every host answers; `GET /cluster` on each lists every host live and every slot
   held, each by the host placement gives it among them (`sfmd.cluster.placement.place`,
   computed here); every stream shows `streaming` on every host.
2. The round's chosen slot (rounds cycle through the slots, so every source is chosen) names
   the victim: the host holding it. Every slot the victim holds is measured.
3. `kill -9` the victim, at wall time K.
4. Poll every survivor's `GET /streams` (every `--poll` s) until each of the victim's streams
   is shown by a survivor as run there (`host`), `streaming`, with `connected_since` after K.
   The takeover time of the round is the latest of those `connected_since` minus K: the
   moment the last connection streamed again, as the daemon that made it stamps it (same
   machine, same clock). "Seen" is when the poll saw it (an upper bound).
5. `GET /cluster` on a survivor confirms the victim's slots are held by survivors under new
   epochs; then the victim starts again (same home) and the bench waits for step 1 (the time
   from restart to settled is shown too).

The bound to check is `lease_ttl` + 5 s: the victim's leases expire at most `lease_ttl`
after its last renewal (renewals every `lease_ttl / 3`, so 2/3 to 1 `lease_ttl` after the
kill), then a survivor's poll sees the slot free and connects. At the end, the fake API's log
shows whether any Twitter connection was ever cut by a second one on the same credential
(close reason `replaced`): a slot held twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from benchlib import dated_section, load_average, publish
from clusterlib import (
    BenchError,
    FakeAPIProcess,
    HostProcess,
    NatsProcess,
    write_host_config,
)
from fanout import Control, machine_facts

from sfmd.cluster.placement import place

REPO = Path(__file__).resolve().parent.parent
SETTLE_TIMEOUT = 120.0


def credentials_file(path: Path, twitter: int, mastodon: int, instance: str) -> list[str]:
    """Random keys (nothing here is a real secret): t00.. for Twitter, m00.. for Mastodon."""
    tables = []
    for i in range(twitter):
        keys = {
            k: secrets.token_hex(8)
            for k in ("consumer_key", "consumer_secret", "access_token", "access_token_secret")
        }
        tables.append(f"[t{i:02d}]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items()))
    for i in range(mastodon):
        tables.append(
            f'[m{i:02d}]\nmastodon_instance = "{instance}"\n'
            f'mastodon_token = "{secrets.token_hex(12)}"\n'
        )
    path.write_text("\n".join(tables))
    os.chmod(path, 0o600)
    return [f"t{i:02d}" for i in range(twitter)]


def stream_bodies(args: argparse.Namespace, tags: list[str]) -> list[dict[str, Any]]:
    """One connection slot per stream."""
    out: list[dict[str, Any]] = [
        {"name": f"tw-{i:02d}", "kind": "sample", "credential": f"t{i:02d}"}
        for i in range(args.twitter)
    ]
    out += [
        {"name": f"sky-{i:02d}", "source": "bluesky", "kind": "jetstream"}
        for i in range(args.jetstream)
    ]
    out += [{"name": f"md-{i:02d}", "source": "mastodon", "kind": "hashtag",
             "tag": tags[i % len(tags)], "credential": f"m{i:02d}"}
            for i in range(args.mastodon)]  # fmt: skip
    return out


def when(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


@dataclass
class Round:
    victim: str
    chosen: str  # the stream whose slot chose the victim
    streams: list[str]  # the victim's streams, each its own slot
    takeover_s: float = 0.0  # kill -> the last of them connected again (daemon's stamp)
    seen_s: float = 0.0  # kill -> the poll saw all of them streaming elsewhere
    per_stream: dict[str, float] = field(default_factory=dict)
    settle_s: float = 0.0  # victim restarted -> placement settled again
    load: str = ""


class Cluster:
    def __init__(self, hosts: list[HostProcess], expected: int) -> None:
        self.hosts = hosts
        self.expected = expected
        self.controls: dict[str, Control] = {}

    def control(self, host: HostProcess) -> Control:
        if host.host_id not in self.controls:
            self.controls[host.host_id] = Control(host.socket)
        return self.controls[host.host_id]

    async def forget(self, host: HostProcess) -> None:
        control = self.controls.pop(host.host_id, None)
        if control is not None:
            await control.close()

    async def close(self) -> None:
        for control in self.controls.values():
            await control.close()

    async def get(self, host: HostProcess, path: str) -> Any:
        status, body, _ = await self.control(host).call("GET", path)
        if status != 200:
            raise BenchError(f"GET {path} on {host.host_id} answered {status}: {body}")
        return body

    async def settled(self) -> tuple[bool, str]:
        """Step 1 of a round, and what is still missing if not."""
        for host in self.hosts:
            host.check_alive()
            if not await self.control(host).answers():
                return False, f"{host.host_id} does not answer"
        for host in self.hosts:
            report = await self.get(host, "/cluster")
            live = {h["host"] for h in report["hosts"]}
            if live != {h.host_id for h in self.hosts}:
                return False, f"{host.host_id} sees hosts {sorted(live)}"
            connections = report["connections"]
            if len(connections) != self.expected:
                return False, f"{len(connections)} of {self.expected} slots held"
            # Placement is a pure function of the slots and the live hosts: computed here too,
            # since a host's own `placed` dates from its last pass, which may predate a
            # host's return.
            placed = place([c["slot"] for c in connections], live)
            astray = [c["slot"] for c in connections if c["host"] != placed[c["slot"]]]
            if astray:
                return False, f"{len(astray)} slots not yet on their placed host"
            streams = (await self.get(host, "/streams"))["streams"]
            down = [s["name"] for s in streams if s["status"]["state"] != "streaming"]
            if down or len(streams) != self.expected:
                return False, f"{host.host_id}: not streaming: {down[:5]}"
        return True, ""

    async def wait_settled(self) -> float:
        """Seconds until settled; BenchError past SETTLE_TIMEOUT."""
        began = time.monotonic()
        missing = ""
        while time.monotonic() - began < SETTLE_TIMEOUT:
            try:
                ok, missing = await self.settled()
            except (OSError, BenchError) as e:
                if isinstance(e, BenchError) and "exited" in str(e):
                    raise
                ok, missing = False, str(e)
            if ok:
                return time.monotonic() - began
            await asyncio.sleep(0.2)
        raise BenchError(f"not settled after {SETTLE_TIMEOUT:g} s: {missing}")


async def one_round(cluster: Cluster, chosen: str, args: argparse.Namespace) -> Round:
    first = next(h for h in cluster.hosts if h.running)
    streams = (await cluster.get(first, "/streams"))["streams"]
    holder = {s["name"]: s["host"] for s in streams}
    victim = next(h for h in cluster.hosts if h.host_id == holder[chosen])
    mine = sorted(name for name, host in holder.items() if host == victim.host_id)
    survivors = [h for h in cluster.hosts if h is not victim]
    report = await cluster.get(first, "/cluster")
    epochs = {c["slot"]: c["epoch"] for c in report["connections"]}
    held_before = {c["slot"] for c in report["connections"] if c["host"] == victim.host_id}
    r = Round(victim.host_id, chosen, mine, load=load_average())
    await cluster.forget(victim)
    killed_wall, killed = time.time(), time.monotonic()
    victim.kill9()
    deadline = killed + args.lease_ttl * 3 + 60
    pending = set(mine)
    while pending:
        if time.monotonic() > deadline:
            raise BenchError(f"after the kill of {victim.host_id}, still down: {sorted(pending)}")
        for host in survivors:
            for s in (await cluster.get(host, "/streams"))["streams"]:
                if s["name"] not in pending or s["host"] != host.host_id:
                    continue
                since = when(s["status"]["connected_since"])
                if s["status"]["state"] == "streaming" and since and since >= killed_wall:
                    pending.discard(s["name"])
                    r.per_stream[s["name"]] = since - killed_wall
        if pending:
            await asyncio.sleep(args.poll)
    r.seen_s = time.monotonic() - killed
    r.takeover_s = max(r.per_stream.values(), default=0.0)
    report = await cluster.get(survivors[0], "/cluster")
    for c in report["connections"]:
        if c["slot"] in held_before and (
            c["host"] == victim.host_id or c["epoch"] <= epochs[c["slot"]]
        ):
            raise BenchError(f"slot {c['slot']} not taken over under a new epoch: {c}")
    victim.start()
    r.settle_s = await cluster.wait_settled()
    return r


async def run(args: argparse.Namespace, root: Path) -> tuple[list[Round], int, int]:
    creds = root / "credentials.toml"
    fake_creds = root / "fake-credentials.toml"
    credentials_file(fake_creds, args.twitter, args.mastodon, "http://127.0.0.1")
    nats = NatsProcess(root / "nats-store")
    fake = FakeAPIProcess(
        fake_creds,
        root,
        [
            "--rate",
            str(args.rate),
            "--mastodon-rate",
            "5",
            "--jetstream-rate",
            "20",
        ],
    )
    # The fake checks tokens and keys, not the instance address: the hosts get the same
    # keys with the Mastodon instance's address, known once the fake runs.
    creds.write_text(
        fake_creds.read_text().replace(
            'http://127.0.0.1"', fake.addresses["[CREDENTIAL] mastodon_instance"] + '"'
        )
    )
    os.chmod(creds, 0o600)
    hosts: list[HostProcess] = []
    cluster = Cluster(hosts, args.twitter + args.jetstream + args.mastodon)
    try:
        for i in range(args.hosts):
            host_id = f"host-{chr(ord('a') + i)}"
            cluster_settings = {
                "nats_url": nats.url,
                "host_id": host_id,
                "lease_ttl": args.lease_ttl,
            }
            config = write_host_config(
                root / host_id, fake, creds, cluster_settings, default_credential="t00"
            )
            hosts.append(HostProcess(host_id, root / host_id, config))
        for host in hosts:
            host.start()
        began = time.monotonic()
        while not all([await cluster.control(h).answers() for h in hosts]):
            for h in hosts:
                h.check_alive()
            if time.monotonic() - began > SETTLE_TIMEOUT:
                raise BenchError("the hosts' control sockets never answered")
            await asyncio.sleep(0.1)
        bodies = stream_bodies(args, ["archives", "fediverse", "python", "mastodon", "history"])
        for body in bodies:
            status, answer, _ = await cluster.control(hosts[0]).call("POST", "/streams", body)
            if status != 201:
                raise BenchError(f"POST /streams {body['name']}: {status} {answer}")
        settle = await cluster.wait_settled()
        print(f"{len(bodies)} streams settled on {args.hosts} hosts in {settle:.1f} s", flush=True)
        rounds: list[Round] = []
        names = [b["name"] for b in bodies]
        for k in range(args.kills):
            r = await one_round(cluster, names[k % len(names)], args)
            rounds.append(r)
            worst = max(r.per_stream, key=lambda n: r.per_stream[n])
            print(
                f"kill {k + 1:2d}: {r.victim} ({len(r.streams)} streams: "
                f"{', '.join(r.streams)}): takeover {r.takeover_s:.2f} s (last: {worst}), "
                f"seen {r.seen_s:.2f} s; settled {r.settle_s:.1f} s after restart; "
                f"load {r.load}",
                flush=True,
            )
        log = fake.log()
        replaced = sum(1 for rec in log if rec.get("close_reason") == "replaced")
        return rounds, replaced, len(log)
    finally:
        await cluster.close()
        for host in hosts:
            if host.running:
                host.stop()
        fake.stop()
        nats.stop()


def body_text(
    rounds: list[Round], replaced: int, connections: int, args: argparse.Namespace
) -> str:
    times = [r.takeover_s for r in rounds]
    seen = [r.seen_s for r in rounds]
    bound = args.lease_ttl + 5
    kinds: dict[str, list[float]] = {}
    for r in rounds:
        for name, s in r.per_stream.items():
            kinds.setdefault(name.split("-")[0], []).append(s)
    out = [
        f"{len(rounds)} kills, `lease_ttl` {args.lease_ttl:g} s, {args.hosts} hosts, "
        f"{args.twitter} Twitter v1.1 sample + {args.jetstream} Jetstream + {args.mastodon} "
        "Mastodon hashtag streams (one slot each). Takeover = `kill -9` → the last of the "
        "victim's connections streaming on a survivor (its `connected_since`); seen = when "
        f"the bench's poll (every {args.poll:g} s) saw it.",
        "",
        "| kill | victim | streams moved | takeover s | seen s | restart → settled s "
        "| load average |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(rounds):
        out.append(
            f"| {i + 1} | {r.victim} | {len(r.streams)} | {r.takeover_s:.2f} "
            f"| {r.seen_s:.2f} | {r.settle_s:.1f} | {r.load} |"
        )
    verdict = "met" if max(times) <= bound else "**not met**"
    out += [
        "",
        f"- takeover: median {statistics.median(times):.2f} s, worst {max(times):.2f} s, "
        f"best {min(times):.2f} s (seen by the poll: median {statistics.median(seen):.2f} s, "
        f"worst {max(seen):.2f} s); bound `lease_ttl` + 5 s = {bound:g} s: {verdict}",
        "- per source, each moved connection (median / worst s): "
        + ", ".join(
            f"{kind} {statistics.median(v):.2f} / {max(v):.2f} ({len(v)})"
            for kind, v in sorted(kinds.items())
        ),
        f"- Twitter connections cut by a second one on the same credential (`replaced`): "
        f"{replaced} of {connections} connections in the fake API's log",
    ]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--hosts", type=int, default=3, help="sfmd run hosts (2 or more)")
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=15.0,
        help="[cluster] lease_ttl in seconds (sfmd's default: 15)",
    )
    parser.add_argument("--twitter", type=int, default=4, help="v1.1 sample streams")
    parser.add_argument("--jetstream", type=int, default=3, help="Jetstream streams")
    parser.add_argument("--mastodon", type=int, default=3, help="Mastodon hashtag streams")
    parser.add_argument(
        "--rate",
        type=float,
        default=2.0,
        help="Twitter messages/s per connection from the fake API",
    )
    parser.add_argument(
        "--poll", type=float, default=0.1, help="seconds between the bench's polls after a kill"
    )
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--title", default="", help="a few words for the docs heading")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.hosts < 2:
        parser.error("--hosts: at least 2")
    if args.twitter + args.jetstream + args.mastodon < 1 or args.kills < 1:
        parser.error("at least one stream and one kill")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="sfmd-takeover-") as tmp:
        try:
            rounds, replaced, connections = asyncio.run(run(args, Path(tmp)))
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
    facts = machine_facts()
    facts["load average (1, 5, 15 min)"] = f"{load_before} before, {load_average()} after"
    body = body_text(rounds, replaced, connections, args)
    command = (
        f"bench/takeover.py --kills {args.kills} --hosts {args.hosts} --lease-ttl "
        f"{args.lease_ttl:g} --twitter {args.twitter} --jetstream {args.jetstream} "
        f"--mastodon {args.mastodon}"
    )
    note = (
        " (one nats-server, one sfmd fakeapi, every host with sfmd's defaults but "
        "`[cluster]`; nothing pinned)"
    )
    heading = f"cluster takeover, {args.kills} kills, lease_ttl {args.lease_ttl:g} s"
    section = dated_section(heading, args.title, facts, command, body, note)
    publish(args.doc, facts, body, section, args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
