"""What the API shows of a running daemon's streams: GET /streams and /metrics read a task
stream's live status and its archive without copying it (GET /streams keeps each one's JSON
between pages), and show what the copy shows."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sfmd.config import load_config
from sfmd.daemon.app import Daemon
from sfmd.daemon.views import Views
from sfmd.fake import FakeAPI
from sfmd.registry import StreamSpec
from sfmd.status import State, StreamSample, describe_states
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import daemon_in_process
from tests.helpers.logs import log_path
from tests.helpers.waits import wait_until


def sample_of(daemon: Daemon, name: str) -> StreamSample:
    """A stream's metrics sample read through `status_of`, the copy every back end makes."""
    spec = daemon.spec(name)
    status = daemon.views.status_of(spec)
    runner = daemon.tasks.runners.get(name)
    published = runner.archive.published if runner else daemon.shared.published(spec)
    return StreamSample(
        name=name, state=status.state.value, messages=status.messages, tweets=status.tweets,
        bytes=status.bytes, reconnects=status.reconnects,
        limit_undelivered=status.limit_undelivered,
        files_published=daemon.ledger.published.get(name, 0) + published,
        gap_seconds=status.gap_seconds, reconnects_planned=status.reconnects_planned,
        last_message_at=status.last_message_at, last_publish_at=status.last_publish_at,
    )


@contextlib.asynccontextmanager
async def streaming_daemon(
    tmp_path: Path, fake_api: FakeAPI, **settings: Any
) -> AsyncIterator[tuple[Daemon, Api]]:
    """A daemon in this process (`settings` for its config), its fake API sending 50
    messages a second, and a client."""
    fake_api.configure(rate=50)
    config = load_config(write_daemon_config(tmp_path, fake_api, **settings))
    async with daemon_in_process(config, log_path(tmp_path)) as daemon:
        async with Api(config.daemon.control_socket) as api:
            yield daemon, api


async def test_streams_and_metrics_show_what_each_streams_status_says(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    async with streaming_daemon(tmp_path, fake_api) as (daemon, api):
        for body in ({"name": "s1", "kind": "sample", "credential": "alpha"},
                     {"name": "s2", "kind": "sample", "credential": "beta"},
                     {"name": "off", "kind": "filter", "track": ["x"],
                      "credential": "alpha", "active": False}):
            await api.ok("POST", "/streams", body, 201)
        await wait_until(lambda: daemon.views.status_of(daemon.spec("s2")).messages > 20)
        # s2 again: its earlier run's counters are added to the new one's
        await api.ok("POST", "/streams/s2/stop")
        await api.ok("POST", "/streams/s2/start")
        await wait_until(lambda: daemon.tasks.runners["s2"].stream.status.messages > 5,
                         what="s2 streaming again")
        assert daemon.ledger.last.get("s2") is not None  # the case the sum covers
        views = daemon.views
        for page in range(3):  # kept JSON, with messages taken between two pages
            if page:
                before = daemon.tasks.runners["s1"].stream.status.messages
                await wait_until(
                    lambda n=before: daemon.tasks.runners["s1"].stream.status.messages > n,
                    what="s1 taking more messages",
                )
            for spec in daemon.specs():  # no await between the two: nothing moves meanwhile
                status = orjson.loads(views.view_json(spec))["status"]
                assert status == views.status_of(spec).to_dict(), (page, spec.name)
        assert len(views.kept) == 2  # the two task streams
        shown = {s.name: s for s in await views.samples()}
        assert shown == {name: sample_of(daemon, name) for name in ("off", "s1", "s2")}
        assert daemon.tasks.runners.keys() == {"s1", "s2"}  # two read without a copy


def whole_page(daemon: Daemon) -> list[dict[str, Any]]:
    """Every STREAM as the API shows it, each status copied from its back end: what a page
    shows when nothing is kept."""
    views = daemon.views
    return [
        {**orjson.loads(spec.view_json_open + b"}"), "status": views.status_of(spec).to_dict()}
        for spec in daemon.specs()
    ]


def whole_health(daemon: Daemon) -> tuple[dict[str, int], list[dict[str, Any]]]:
    statuses = [(spec.name, daemon.views.status_of(spec)) for spec in daemon.specs()]
    return (
        dict(Counter(status.state.value for _, status in statuses)),
        [{"name": name, "last_error": status.last_error}
         for name, status in statuses if status.state is State.FAILED],
    )


async def test_kept_pages_and_health_show_every_change_the_streams_make(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    async with streaming_daemon(tmp_path, fake_api, save_interval=1) as (daemon, api):
        views = daemon.views
        shown: list[str] = []

        async def check(what: str) -> None:
            """The kept page and health against the whole ones, with no turn between."""
            page = orjson.loads(await views.listing())["streams"]
            health = views.health()
            assert page == whole_page(daemon), what
            assert (health["states"], health["failed"]) == whole_health(daemon), what
            assert views.status_line() == describe_states(health_states(health))
            samples = {s.name: s for s in await views.samples()}
            assert samples.keys() == {spec.name for spec in daemon.specs()}, what
            for name, kept in samples.items():
                whole = sample_of(daemon, name)
                assert kept._replace(gap_seconds={}) == whole._replace(gap_seconds={}), what
                assert kept.gap_seconds.keys() == whole.gap_seconds.keys(), what
                for reason, seconds in kept.gap_seconds.items():  # an open gap grows
                    assert seconds == pytest.approx(whole.gap_seconds[reason], abs=0.5), what
            shown.append(what)

        await check("no stream")
        for body in ({"name": "s1", "kind": "sample", "credential": "alpha"},
                     {"name": "s2", "kind": "sample", "credential": "beta"},
                     {"name": "f1", "kind": "filter", "track": ["x"],
                      "credential": "alpha", "active": False}):
            await api.ok("POST", "/streams", body, 201)
            await check(f"{body['name']} added")
        await wait_until(lambda: messages(daemon, "s2") > 10, what="s2 streaming")
        await check("streaming")
        await wait_until(lambda: messages(daemon, "s1") > 20, what="s1 taking more")
        await check("messages taken since")
        await wait_until(lambda: published(daemon, "s1") > 1, what="s1 publishing files")
        await check("files turned over and published")
        await api.ok("POST", "/streams/s2/stop")
        await check("s2 stopped")
        fake_api.script({"status": 503})  # the next connection is refused: a backoff
        await api.ok("POST", "/streams/s2/start")
        await wait_until(
            lambda: daemon.tasks.runners["s2"].stream.status.state is State.BACKOFF,
            what="s2 in backoff",
        )
        await check("s2 in backoff")
        await wait_until(lambda: messages(daemon, "s2") > 5, what="s2 streaming again")
        await check("s2 streaming again")
        await api.ok("PATCH", "/streams/f1", {"track": ["y"]})
        await check("f1 changed")
        await api.ok("POST", "/streams/s1/stop")
        await api.ok("POST", "/streams/f1/start")
        await wait_until(lambda: messages(daemon, "f1") > 0, what="f1 streaming")
        await check("f1 started on s1's credential")
        await api.ok("DELETE", "/streams/s2", status=204)
        await check("s2 deleted")
    assert len(shown) == 13


def published(daemon: Daemon, name: str) -> int:
    runner = daemon.tasks.runners.get(name)
    return runner.archive.published if runner is not None else 0


def messages(daemon: Daemon, name: str) -> int:
    runner = daemon.tasks.runners.get(name)
    return runner.stream.status.messages if runner is not None else 0


def health_states(health: dict[str, Any]) -> list[str]:
    return [state for state, n in health["states"].items() for _ in range(n)]


async def test_pages_moved_on_ahead_show_what_pages_made_whole_show(
    tmp_path: Path, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While GET /streams and /metrics are asked for, the kept STREAMs and samples are moved
    on between requests (`timing.warm_interval`); a page then shows what one made whole
    shows."""
    moved: list[str] = []  # which view moved a stream on
    for method in ("_moved_view", "_moved_sample"):
        original = getattr(Views, method)

        def counted(self: Views, spec: StreamSpec, value: Any, m: str = method,
                    original: Any = original) -> Any:
            moved.append(m)
            return original(self, spec, value)

        monkeypatch.setattr(Views, method, counted)
    warm = {"warm_interval": 0.05, "warm_window": 3600}
    async with streaming_daemon(tmp_path, fake_api, timing=warm) as (daemon, api):
        for body in ({"name": "s1", "kind": "sample", "credential": "alpha"},
                     {"name": "s2", "kind": "sample", "credential": "beta"}):
            await api.ok("POST", "/streams", body, 201)
        await wait_until(lambda: messages(daemon, "s1") > 5 and messages(daemon, "s2") > 5,
                         what="both streaming")
        await api.ok("GET", "/streams")
        await api.ok("GET", "/metrics")
        asked = len(moved)
        await wait_until(
            lambda: {"_moved_view", "_moved_sample"} <= set(moved[asked:]),
            what="the kept STREAMs and samples moved on with no request",
        )
        views = daemon.views
        page = orjson.loads(await views.listing())["streams"]  # no turn before the whole one
        assert page == whole_page(daemon)
        shown = {s.name: s for s in await views.samples()}
        for name in ("s1", "s2"):
            whole = sample_of(daemon, name)
            assert shown[name]._replace(gap_seconds={}) == whole._replace(gap_seconds={})
