"""A real nats-server with JetStream per test, and sfmd's client for each simulated host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from sfmd.cluster.connection import connect
from sfmd.fake import FakeAPI
from tests.helpers.cluster import Host, cluster_of, make_host
from tests.helpers.nats import NatsServer, running_nats
from tests.helpers.waits import wait_until_async

Connect = Callable[[str], Awaitable[Client]]
StartHosts = Callable[..., Awaitable[list[Host]]]


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with running_nats(tmp_path) as server:
        yield server


@pytest.fixture
async def host_client(nats_server: NatsServer) -> AsyncIterator[Connect]:
    """`await host_client("host-a")`: that host's NATS client as sfmd opens it (reconnecting
    quickly, so a restarted server is found again at once); all closed at the end."""
    async with AsyncExitStack() as stack:

        async def open_client(host_id: str) -> Client:
            client = await connect(nats_server.url, host_id, reconnect_wait=0.1)
            stack.push_async_callback(client.close)
            return client

        yield open_client


@pytest.fixture
async def start_hosts(
    tmp_path: Path, fake_api: FakeAPI, nats_server: NatsServer
) -> AsyncIterator[StartHosts]:
    """`await start_hosts("host-a", "host-b", settings=..., **cluster)`: `sfmd run` hosts on
    the test's nats-server, started together and answering; every one killed at the end
    (stopped ones too), whatever the test did to them."""
    made: list[Host] = []

    async def start(*host_ids: str, settings: dict[str, Any] | None = None,
                    **cluster: Any) -> list[Host]:
        hosts = [make_host(tmp_path, fake_api, nats_server.url, h, settings=settings,
                           **cluster) for h in host_ids]
        made.extend(hosts)
        await asyncio.gather(*(host.start() for host in hosts))
        # Placement is settled before the test goes on: every running host lists them all.
        running = [host for host in made if host.running]
        ids = {host.host_id for host in running}

        async def everyone_listed() -> bool:
            for host in running:
                if {h["host"] for h in (await cluster_of(host))["hosts"]} != ids:
                    return False
            return True

        await wait_until_async(everyone_listed, 15, f"{sorted(ids)} listed by each")
        return hosts

    try:
        yield start
    finally:
        for host in made:
            host.kill()
