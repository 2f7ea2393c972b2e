"""Several `sfmd run` hosts on one nats-server: every connection held by exactly one host,
changes through any host, takeover when a host dies."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.cluster import Host, cluster_of, make_host, streams_of
from tests.helpers.daemon import Teardown, running_daemon, stop
from tests.helpers.logs import log_events
from tests.helpers.nats import NatsServer, free_port
from tests.helpers.waits import wait_until_async

DEADLINE = 60.0


def bodies() -> list[dict[str, Any]]:
    """Streams across credentials and sources: 2 v1.1 filters, 4 Jetstream streams, 3
    Mastodon hashtags on two accounts."""
    out: list[dict[str, Any]] = [
        {"name": "tw-alpha", "kind": "filter", "track": ["cats"], "credential": "alpha"},
        {"name": "tw-beta", "kind": "filter", "track": ["dogs"], "credential": "beta"},
    ]
    out += [{"name": f"sky-{i}", "source": "bluesky", "kind": "jetstream"} for i in range(4)]
    out += [{"name": f"md-{i}", "source": "mastodon", "kind": "hashtag", "tag": f"t{i}",
             "credential": "fedi" if i < 2 else "fedi2"} for i in range(3)]
    return out


@pytest.fixture
async def hosts(
    tmp_path: Path, fake_api: FakeAPI, nats_server: NatsServer
) -> AsyncIterator[list[Host]]:
    made = [make_host(tmp_path, fake_api, nats_server.url, f"host-{c}") for c in "ab"]
    try:
        for host in made:
            await host.start()
        yield made
    finally:
        for host in made:
            if host.proc is not None:
                host.proc.kill()


async def sfmctl(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sfmd.ctl", "--socket", str(host.socket), *args]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False
    )


async def test_each_connection_is_held_by_one_host_and_streams(
    hosts: list[Host], fake_api: FakeAPI
) -> None:
    a, b = hosts
    # Posts on every tag keep the Mastodon sockets from idling out.
    fake_api.configure(mastodon_rate=5, mastodon_tags=["t0", "t1", "t2"])
    async with a.api() as api:
        for body in bodies():
            await api.ok("POST", "/streams", body, 201)
        # A supervisord program could not be fenced by its lease: refused, with the reason.
        status, answer = await api.call("POST", "/streams", {
            "name": "iso", "source": "bluesky", "kind": "jetstream", "isolation": "process"})
        assert status == 422 and "cluster mode" in answer["message"], answer

    async def all_streaming() -> bool:
        for host in hosts:
            listed = await streams_of(host)
            if len(listed) != len(bodies()):
                return False
            if any(s["status"]["state"] != "streaming" for s in listed.values()):
                return False
        return True

    await wait_until_async(all_streaming, DEADLINE, "every stream streaming, seen from both hosts")
    report = await cluster_of(b)
    assert {h["host"] for h in report["hosts"]} == {"host-a", "host-b"}
    slots = [c["slot"] for c in report["connections"]]
    assert len(slots) == len(set(slots)) == 2 + 4 + 2
    assert {c["host"] for c in report["connections"]} == {"host-a", "host-b"}
    seen_a, seen_b = await streams_of(a), await streams_of(b)
    assert {n: s["host"] for n, s in seen_a.items()} == {n: s["host"] for n, s in seen_b.items()}

    # A restart asked through host-a of a stream host-b runs is done by host-b.
    on_b = sorted(n for n, s in seen_a.items() if s["host"] == "host-b")
    async with a.api() as api:
        await api.ok("POST", f"/streams/{on_b[0]}/restart")
    restarted = [e for e in log_events(b.home)
                 if e.get("event") == "stream_restarted"]
    assert [e["stream"] for e in restarted] == [on_b[0]]

    # sfmd check reads the registry every host reads, from NATS.
    checked = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "sfmd", "check", "--config", str(b.config)],
        capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip().endswith(f"ok (4 credentials, {len(bodies())} streams)")

    # sfmctl shows the same from either host, and drains host-b for maintenance.
    shown = await sfmctl(a, "cluster")
    assert shown.returncode == 0, shown.stderr
    assert "host-a (this host)" in shown.stdout and "host-b" in shown.stdout
    status = await sfmctl(b, "status", "--once")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.splitlines()[0].split()[3] == "HOST"
    drained = await sfmctl(a, "drain", "host-b", "--wait", "60")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "holds no connection" in drained.stdout
    report = await cluster_of(b)
    assert {c["host"] for c in report["connections"]} == {"host-a"}
    assert [h["draining"] for h in report["hosts"] if h["host"] == "host-b"] == [True]
    await wait_until_async(all_streaming, DEADLINE, "every stream streaming on host-a")
    undone = await sfmctl(b, "drain", "--undo", "host-b")
    assert undone.returncode == 0, undone.stderr

    async def spread_again() -> bool:
        return {c["host"] for c in (await cluster_of(a))["connections"]} == {"host-a", "host-b"}

    await wait_until_async(spread_again, DEADLINE, "host-b holding connections again")
    for host in hosts:
        assert host.proc is not None
        await stop(host.proc)
    assert not any(r.close_reason == "replaced" for r in fake_api.log)


async def test_a_single_host_says_it_runs_alone(tmp_path: Path, fake_api: FakeAPI) -> None:
    async with running_daemon(tmp_path, fake_api, Teardown.MUST_STOP):
        async with Api(tmp_path / "sfmd.sock") as api:
            report = await api.ok("GET", "/cluster")
            assert report == {"enabled": False, "host": None, "hosts": [], "connections": []}
            status, answer = await api.call("POST", "/cluster/drain", {"host": "x"})
            assert (status, answer["error"]) == (409, "not_clustered")
            status, answer = await api.call("POST", "/cluster/drain", {"hots": "x"})
            assert (status, answer["error"]) == (400, "bad_request")


async def test_a_host_that_cannot_reach_nats_refuses_to_start_with_the_reason(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    host = make_host(tmp_path, fake_api, f"nats://127.0.0.1:{free_port()}", "host-a")
    for verb in ("check", "run"):
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "sfmd", verb, "--config", str(host.config)],
            capture_output=True, text=True, timeout=60, check=False, cwd=host.home)
        assert done.returncode != 0
        assert "cannot reach NATS at nats://127.0.0.1:" in done.stderr, done.stderr
        assert "check [cluster] nats_url" in done.stderr
