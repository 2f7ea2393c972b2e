"""An account at its instance over REST: discovering the streaming server, and waiting out
the rate limit (sfmd.sources.mastodon.instance), against a real aiohttp server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sfmd.credentials import Credential
from sfmd.sources.mastodon.instance import Instance, InstanceError
from tests.helpers.servers import serving


class Server:
    """A scripted instance: `/api/v2/instance` answers `instance`, the timeline answers the
    next of `answers` (status, headers, body) and notes when each call came."""

    def __init__(self) -> None:
        self.instance: dict[str, Any] = {}
        self.answers: list[tuple[int, dict[str, str], Any]] = []
        self.calls: list[tuple[float, str]] = []

    async def handle_instance(self, request: web.Request) -> web.Response:
        return web.json_response(self.instance)

    async def handle_timeline(self, request: web.Request) -> web.Response:
        self.calls.append((time.time(), request.headers.get("Authorization", "")))
        status, headers, body = self.answers.pop(0)
        return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    state = Server()
    app = web.Application()
    app.router.add_get("/api/v2/instance", state.handle_instance)
    app.router.add_get("/api/v1/timelines/home", state.handle_timeline)
    async with serving(app) as url:
        yield state, url


def account(url: str) -> Credential:
    return Credential("fedi", mastodon_instance=url, mastodon_token="mt-SECRET")


@pytest.mark.parametrize(
    ("named", "expected"),
    [
        ({"configuration": {"urls": {"streaming": "wss://streaming.example.org"}}},
         "wss://streaming.example.org/api/v1/streaming"),
        ({"configuration": {"urls": {"streaming": "ws://127.0.0.1:9/"}}},
         "ws://127.0.0.1:9/api/v1/streaming"),
        ({}, None),  # names none: the instance's own host
        ({"configuration": {"urls": {"streaming": 42}}}, None),
    ],
)
async def test_the_streaming_server_is_the_one_the_instance_names(
    server: tuple[Server, str], named: dict[str, Any], expected: str | None
) -> None:
    state, url = server
    state.instance = named
    async with aiohttp.ClientSession() as session:
        found = await Instance(session, account(url), timeout=5).streaming_url()
    assert found == (expected or url.replace("http://", "ws://") + "/api/v1/streaming")


async def test_nothing_is_sent_before_the_reset_after_a_429(server: tuple[Server, str]) -> None:
    state, url = server
    reset = datetime.fromtimestamp(time.time() + 1.5, UTC).isoformat()
    state.answers = [
        (429, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}, {"error": "Too many"}),
        (200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}, [{"id": "1"}]),
        (200, {"X-RateLimit-Remaining": "299"}, [{"id": "2"}]),
    ]
    async with aiohttp.ClientSession() as session:
        instance = Instance(session, account(url), timeout=5, min_wait=0.2)
        first = await instance.page("/api/v1/timelines/home", {})
        second = await instance.page("/api/v1/timelines/home", {})
    assert first == [{"id": "1"}] and second == [{"id": "2"}]
    reset_at = datetime.fromisoformat(reset).timestamp()
    (_, auth), (t1, _), (t2, _) = state.calls
    assert t1 >= reset_at and t2 >= t1 + 0.2  # none before the reset; then the floor
    assert auth == "Bearer mt-SECRET"


async def test_a_refusal_is_an_error_that_says_what_the_instance_said(
    server: tuple[Server, str]
) -> None:
    state, url = server
    state.answers = [(404, {}, {"error": "Record not found"})]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(InstanceError) as e:
            await Instance(session, account(url), timeout=5).page("/api/v1/timelines/home", {})
    assert e.value.status == 404 and "Record not found" in str(e.value)
    assert "SECRET" not in str(e.value)
