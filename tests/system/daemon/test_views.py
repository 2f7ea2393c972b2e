"""What the API shows of a running daemon's streams: GET /streams and /metrics read a task
stream's live status and its archive without copying it (GET /streams keeps each one's JSON
between pages), and show what the copy shows."""

from __future__ import annotations

from pathlib import Path

import orjson

from sfmd.config import load_config
from sfmd.daemon.app import Daemon
from sfmd.fake import FakeAPI
from sfmd.status import StreamSample
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


async def test_streams_and_metrics_show_what_each_streams_status_says(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(rate=50)
    config = load_config(write_daemon_config(tmp_path, fake_api))
    async with daemon_in_process(config, log_path(tmp_path)) as daemon:
        async with Api(config.daemon.control_socket) as api:
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
        shown = {s.name: s for s in views.samples()}
        assert shown == {name: sample_of(daemon, name) for name in ("off", "s1", "s2")}
        assert daemon.tasks.runners.keys() == {"s1", "s2"}  # two read without a copy
