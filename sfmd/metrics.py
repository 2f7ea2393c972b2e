"""Prometheus metrics, read from the streams' own counters at scrape time.

Nothing on the byte path touches a metric object: the streams already count messages, tweets
and bytes for their status, and a collector turns those counters into metric families when
/metrics is asked. That keeps the hot path free and the numbers identical to `sfmctl status`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from sfmd import __version__

STATES = ("stopped", "connecting", "streaming", "backoff", "failed")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class StreamSample:
    """One stream's numbers at scrape time."""

    name: str
    state: str
    messages: int
    tweets: int
    bytes: int
    reconnects: int
    limit_undelivered: int
    files_published: int


@dataclass(frozen=True)
class ConnectionSample:
    """A shared v2 filter connection's numbers (its streams' are StreamSamples)."""

    name: str
    messages: int
    unrouted: int
    errors: int
    reconnects: int
    rules: int


@dataclass(frozen=True)
class Snapshot:
    streams: list[StreamSample]
    connections: list[ConnectionSample]


class SfmdCollector(Collector):
    """Metric families for one snapshot of the streams' numbers."""

    def __init__(self, snapshot: Snapshot, started: float) -> None:
        self._samples = snapshot.streams
        self._connections = snapshot.connections
        self._started = started

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily]:
        counters = {
            "messages": ("Messages received and stored, keep-alives aside", "messages"),
            "tweets": ("Tweets received and stored", "tweets"),
            "bytes": ("Bytes of messages stored, uncompressed", "bytes"),
            "reconnects": ("Connections opened after the first", "reconnects"),
            "files_published": ("Files published (renamed from .part)", "files_published"),
        }
        families = {
            key: CounterMetricFamily(f"sfmd_stream_{key}", doc, labels=["stream"])
            for key, (doc, _) in counters.items()
        }
        state = GaugeMetricFamily(
            "sfmd_stream_state", "1 for the stream's current state", labels=["stream", "state"]
        )
        limit = GaugeMetricFamily(
            "sfmd_stream_limit_undelivered",
            "Undelivered tweets Twitter reported in limit notices on the current connection",
            labels=["stream"],
        )
        for sample in self._samples:
            for key, (_, attr) in counters.items():
                families[key].add_metric([sample.name], getattr(sample, attr))
            for name in STATES:
                state.add_metric([sample.name, name], 1.0 if sample.state == name else 0.0)
            limit.add_metric([sample.name], sample.limit_undelivered)
        yield from families.values()
        yield state
        yield limit
        yield from self._connection_families()
        yield GaugeMetricFamily(
            "sfmd_uptime_seconds", "Seconds since the daemon started",
            value=time.monotonic() - self._started,
        )
        info = InfoMetricFamily("sfmd_build", "sfmd's version")
        info.add_metric([], {"version": __version__})
        yield info


    def _connection_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = {
            "messages": "Messages received on the shared v2 filter connection",
            "unrouted": "Messages no stream's rules claimed (old rules, errors objects)",
            "errors": "errors objects the v2 API sent in the stream",
            "reconnects": "Connections opened after the first",
        }
        families = {
            key: CounterMetricFamily(f"sfmd_v2_connection_{key}", doc, labels=["connection"])
            for key, doc in counters.items()
        }
        rules = GaugeMetricFamily(
            "sfmd_v2_connection_rules", "Rules sfmd holds at the API", labels=["connection"]
        )
        for conn in self._connections:
            for key in counters:
                families[key].add_metric([conn.name], getattr(conn, key))
            rules.add_metric([conn.name], conn.rules)
        yield from families.values()
        yield rules


def render_page(snapshot: Snapshot, started: float) -> bytes:
    """Prometheus text for one snapshot; pure, so it can run in a worker thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SfmdCollector(snapshot, started))
    return generate_latest(registry)


class Metrics:
    """The /metrics page, with 1,000 streams about 11,000 samples and ~75 ms of rendering.

    The counters are read on the event loop (a consistent snapshot, and cheap); the text is
    rendered in a worker thread, so API calls are not queued behind it. A page is reused for
    `max_age` seconds: scrapers poll every 15 s or more, so a second-old page is as good.
    """

    def __init__(
        self,
        samples: Callable[[], Iterable[StreamSample]],
        started: float,
        max_age: float = 1.0,
        connections: Callable[[], Iterable[ConnectionSample]] = list,
    ) -> None:
        self._samples = samples
        self._connections = connections
        self._started = started
        self.max_age = max_age
        self._page = b""
        self._rendered = -float("inf")
        self._rendering = asyncio.Lock()  # concurrent scrapes share one render

    def _snapshot(self) -> Snapshot:
        return Snapshot(list(self._samples()), list(self._connections()))

    def _fresh(self) -> bool:
        return time.monotonic() - self._rendered < self.max_age

    async def page(self) -> bytes:
        async with self._rendering:
            if not self._fresh():
                snapshot = self._snapshot()
                taken = time.monotonic()
                self._page = await asyncio.to_thread(render_page, snapshot, self._started)
                self._rendered = taken
        return self._page

    def render(self) -> bytes:
        """The same page, rendered on the caller's thread (for callers without a loop)."""
        if not self._fresh():
            self._page = render_page(self._snapshot(), self._started)
            self._rendered = time.monotonic()
        return self._page
