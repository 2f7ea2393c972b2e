"""A real nats-server with JetStream per test, and sfmd's client for each simulated host."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from nats.aio.client import Client

from sfmd.cluster.connection import connect
from tests.helpers.nats import NatsServer, running_nats

Connect = Callable[[str], Awaitable[Client]]


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
