"""Metrics are read from the streams' counters at scrape time, and rendered at most once per
max_age so a busy scraper cannot eat the event loop."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfmd import turns
from sfmd.control.metrics import (
    Columns,
    ConnectionSample,
    Metrics,
    StreamSample,
    page_parts,
)


def sample(messages: int) -> StreamSample:
    return StreamSample("s1", "streaming", messages, messages, 10 * messages, 0, 7, 2)


def given(samples: Callable[[], list[StreamSample]]) -> Callable[[], Awaitable[list[StreamSample]]]:
    """`samples` as the streams' side hands them to a page: when awaited."""

    async def made() -> list[StreamSample]:
        return samples()

    return made


def render(samples: list[StreamSample], connections: list[ConnectionSample] = []) -> bytes:  # noqa: B006
    """The page in one go, every stream's lines written at once: what `Metrics.page` writes
    with turns between them."""
    columns = Columns()
    for _ in columns.update(samples):
        pass
    return "\n".join([*page_parts(columns, connections, time.monotonic()), ""]).encode()


UPTIME = re.compile(r"sfmd_uptime_seconds [0-9.e+-]+")


def page_of(columns: Columns) -> str:
    """The page `columns` give, without the uptime (it moves between two pages)."""
    return UPTIME.sub("", "\n".join([*page_parts(columns, [], time.monotonic()), ""]))


def whole(samples: list[StreamSample]) -> str:
    """The page of `samples` written in one go, without the uptime."""
    return UPTIME.sub("", render(samples).decode())


def counted(monkeypatch: pytest.MonkeyPatch, streams: list[StreamSample]
            ) -> tuple[Columns, list[str]]:
    """Columns written for `streams`, and from then on the names of the streams whose lines
    are written whole again (a page written in one go counts too)."""
    from sfmd.control import metrics as module

    columns = Columns()
    for _ in columns.update(streams):
        pass
    written: list[str] = []
    stream_lines = module.stream_lines
    monkeypatch.setattr(module, "stream_lines",
                        lambda s: written.append(s.name) or stream_lines(s))
    return columns, written


def test_counters_render_as_prometheus_text() -> None:
    text = render([sample(5)]).decode()
    assert 'sfmd_stream_messages_total{stream="s1"} 5' in text
    assert 'sfmd_stream_state{state="streaming",stream="s1"} 1' in text
    assert 'sfmd_stream_state{state="backoff",stream="s1"} 0' in text
    assert 'sfmd_stream_limit_undelivered{stream="s1"} 7' in text
    assert 'sfmd_stream_files_published_total{stream="s1"} 2' in text


async def test_a_page_is_reused_within_max_age_and_fresh_after() -> None:
    counter = {"n": 1}
    cached = Metrics(given(lambda: [sample(counter["n"])]), time.monotonic(), max_age=3600)
    first = await cached.page()
    counter["n"] = 2
    assert await cached.page() == first
    fresh = Metrics(given(lambda: [sample(counter["n"])]), time.monotonic(), max_age=0)
    assert b'messages_total{stream="s1"} 2' in await fresh.page()
    counter["n"] = 3
    assert b'messages_total{stream="s1"} 3' in await fresh.page()


def test_the_page_parses_as_prometheus_text_with_every_sample() -> None:
    streams = [sample(i) for i in range(3)]
    odd = ConnectionSample('v2-filter@a "quoted" \\ name', 1, 0, 0, 0, 1)
    page = render(streams, [odd])
    families = {f.name: f for f in text_string_to_metric_families(page.decode())}
    assert families["sfmd_stream_messages"].type == "counter"
    assert [s.value for s in families["sfmd_stream_messages"].samples] == [0, 1, 2]
    assert len(families["sfmd_stream_state"].samples) == 3 * 5
    assert families["sfmd_v2_connection_rules"].samples[0].labels == {"connection": odd.name}
    assert families["sfmd_build_info"].samples[0].labels["version"]


def test_shared_v2_connections_have_metrics_of_their_own() -> None:
    conn = ConnectionSample("v2-filter@alpha", messages=9, unrouted=2, errors=1, reconnects=0,
                            rules=3)
    page = render([sample(5)], [conn]).decode()
    assert 'sfmd_v2_connection_messages_total{connection="v2-filter@alpha"} 9' in page
    assert 'sfmd_v2_connection_unrouted_total{connection="v2-filter@alpha"} 2' in page
    assert 'sfmd_v2_connection_rules{connection="v2-filter@alpha"} 3' in page


def test_gap_seconds_are_a_counter_by_reason() -> None:
    gappy = sample(5)._replace(gap_seconds={"backoff": 12.5, "daemon_down": 3.0})
    page = render([gappy, sample(1)]).decode()
    families = {f.name: f for f in text_string_to_metric_families(page)}
    gaps = families["sfmd_stream_gap_seconds"]
    assert gaps.type == "counter"
    assert {(s.labels["reason"], s.value) for s in gaps.samples} == {
        ("backoff", 12.5), ("daemon_down", 3.0)}


def test_reconnects_are_split_by_cause_and_stalls_show_in_timestamps() -> None:
    busy = sample(5)._replace(reconnects=7, reconnects_planned=3,
                              last_message_at=1_765_000_000.25, last_publish_at=None)
    page = render([busy]).decode()
    families = {f.name: f for f in text_string_to_metric_families(page)}
    reconnects = {s.labels["cause"]: s.value for s in families["sfmd_stream_reconnects"].samples}
    assert reconnects == {"failure": 4, "planned": 3}
    (last,) = families["sfmd_stream_last_message_timestamp_seconds"].samples
    assert last.labels == {"stream": "s1"} and last.value == 1_765_000_000.25
    # Nothing published yet: no sample, rather than a 1970 that would look like a stall.
    assert not families["sfmd_stream_last_publish_timestamp_seconds"].samples
    assert families["sfmd_stream_last_publish_timestamp_seconds"].type == "gauge"


async def test_the_served_page_is_the_rendered_page_built_in_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`page` (what the API serves) gives the loop turns while it builds, and writes exactly
    what `render` writes: every family whole, whatever the number of streams."""
    # A turn after every item: the page is built in as many pieces as it can be.
    monkeypatch.setattr(turns, "TURN", 0.0)
    started = time.monotonic()
    streams = [
        StreamSample(f"s{i}", "streaming", i, i, 10 * i, 1, 0, 2, {"stopped": 1.5}, 1,
                     1_764_900_000.0 + i, None)
        for i in range(507)
    ]
    page = await Metrics(given(lambda: streams), started, max_age=3600).page()
    rendered = render(streams)
    uptime = re.compile(rb"sfmd_uptime_seconds [0-9.e+-]+")
    assert uptime.sub(b"", page) == uptime.sub(b"", rendered)
    families = {f.name: f for f in text_string_to_metric_families(page.decode())}
    assert len(families["sfmd_stream_messages"].samples) == len(streams)


async def test_scrapes_that_come_while_a_page_is_built_share_it() -> None:
    calls = {"n": 0}

    def samples() -> list[StreamSample]:
        calls["n"] += 1
        return [sample(i) for i in range(750)]

    metrics = Metrics(given(samples), time.monotonic(), max_age=3600)
    pages = await asyncio.gather(metrics.page(), metrics.page(), metrics.page())
    assert calls["n"] == 1
    assert pages[0] == pages[1] == pages[2]


async def test_a_stream_whose_sample_was_kept_is_not_written_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The streams' side keeps a sample (the same object) until its stream changes: its
    lines are kept with it, and the page stays what `render` writes."""
    from sfmd.control import metrics as module

    written: list[str] = []
    stream_lines = module.stream_lines

    def counted(s: StreamSample) -> tuple[str, ...]:
        written.append(s.name)
        return stream_lines(s)

    monkeypatch.setattr(module, "stream_lines", counted)
    streams = [StreamSample(f"s{i}", "streaming", i, i, 10 * i, 0, 0, 1) for i in range(4)]
    metrics = Metrics(given(lambda: list(streams)), time.monotonic(), max_age=0)
    await metrics.page()
    assert written == ["s0", "s1", "s2", "s3"]
    written.clear()
    streams[2] = StreamSample("s2", "backoff", 9, 9, 90, 1, 0, 1, {"backoff": 2.5})
    page = await metrics.page()
    assert written == ["s2"]
    uptime = re.compile(rb"sfmd_uptime_seconds [0-9.e+-]+")
    fresh = render(list(streams))
    assert uptime.sub(b"", page) == uptime.sub(b"", fresh)
    assert b'sfmd_stream_state{state="backoff",stream="s2"} 1' in page


async def test_warm_writes_the_lines_ahead_and_the_page_then_writes_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`warm` brings the lines to the samples `ahead` gives; the next page, given the same
    samples, writes no stream again and is what `render` writes of them."""
    from sfmd.control import metrics as module

    written: list[str] = []
    stream_lines = module.stream_lines
    monkeypatch.setattr(module, "stream_lines",
                        lambda s: written.append(s.name) or stream_lines(s))
    streams = [StreamSample(f"s{i}", "streaming", i, i, 10 * i, 0, 0, 1) for i in range(4)]
    metrics = Metrics(given(lambda: list(streams)), time.monotonic(), max_age=0,
                      ahead=given(lambda: list(streams)))
    await metrics.page()
    streams[1] = StreamSample("s1", "backoff", 9, 9, 90, 1, 0, 1, {"backoff": 2.5})
    written.clear()
    await metrics.warm()
    assert written == ["s1"]
    written.clear()
    page = await metrics.page()
    assert written == []
    uptime = re.compile(rb"sfmd_uptime_seconds [0-9.e+-]+")
    assert uptime.sub(b"", page) == uptime.sub(b"", render(list(streams)))


async def test_warm_leaves_the_lines_alone_while_a_page_is_built_or_without_ahead() -> None:
    asked = {"ahead": 0}
    gate = asyncio.Event()

    async def slow() -> list[StreamSample]:
        await gate.wait()
        return [sample(1)]

    async def ahead() -> list[StreamSample]:
        asked["ahead"] += 1
        return [sample(2)]

    metrics = Metrics(slow, time.monotonic(), max_age=0, ahead=ahead)
    building = asyncio.create_task(metrics.page())
    await asyncio.sleep(0)  # the page's first step: it waits for its samples
    await metrics.warm()
    gate.set()
    assert b'messages_total{stream="s1"} 1' in await building
    assert asked["ahead"] == 0
    await metrics.warm()
    assert asked["ahead"] == 1  # no page built: warmed

    def samples() -> list[StreamSample]:
        asked["samples"] = asked.get("samples", 0) + 1
        return [sample(1)]

    await Metrics(given(samples), time.monotonic()).warm()  # nothing to warm with
    assert "samples" not in asked


def test_columns_left_halfway_are_brought_up_to_date_next_time() -> None:
    streams = [StreamSample(f"s{i}", "streaming", i, i, 10 * i, 0, 0, 1) for i in range(6)]
    columns = Columns()
    for _ in columns.update(streams):
        pass
    changed = [*streams[:2], *(s._replace(messages=s.messages + 100) for s in streams[2:])]
    walk = columns.update(changed)
    next(walk)  # one stream written, then left
    for _ in columns.update(changed):
        pass
    page = page_of(columns)
    assert page == whole(changed)
    assert 'sfmd_stream_messages_total{stream="s5"} 105' in page


def test_a_stream_a_message_or_a_rotation_only_moved_on_has_six_lines_written_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = [StreamSample(f"s{i}", "streaming", i, i, 10 * i, 1, 0, 2, {"backoff": 1.5}, 1,
                            1_764_900_000.0 + i, 1_764_900_001.0) for i in range(6)]
    columns, written = counted(monkeypatch, streams)
    moved = list(streams)
    moved[1] = moved[1]._replace(messages=50, tweets=40, bytes=5000, last_message_at=None)
    moved[3] = moved[3]._replace(messages=70, last_message_at=1_764_900_099.5)
    moved[5] = moved[5]._replace(files_published=3, last_publish_at=1_764_900_060.25)
    moved[4] = moved[4]._replace(state="backoff")  # neither: the whole row
    for _ in columns.update(moved):
        pass
    assert written == ["s4"]
    page = page_of(columns)
    assert page == whole(moved)
    assert 'sfmd_stream_last_message_timestamp_seconds{stream="s3"} 1764900099.500' in page
    assert 'last_message_timestamp_seconds{stream="s1"}' not in page
    assert 'sfmd_stream_last_publish_timestamp_seconds{stream="s5"} 1764900060.250' in page
    assert 'sfmd_stream_files_published_total{stream="s5"} 3' in page


def test_streams_added_or_removed_leave_the_others_lines_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = [StreamSample(f"s{i}", "streaming", i, i, 10 * i, 1, 0, 2, {"backoff": 1.5}, 1,
                            1_764_900_000.0 + i, None) for i in range(0, 10, 2)]
    columns, written = counted(monkeypatch, streams)
    added = StreamSample("s3", "backoff", 3, 3, 30, 0, 0, 0)
    removed_and_moved = [streams[0], streams[1], added, streams[3]._replace(messages=99)]
    rewritten = []
    for samples in ([*streams[:2], added, *streams[2:]], removed_and_moved, []):
        walk = columns.update(samples)
        next(walk, None)  # left halfway once: nothing changes
        for _ in columns.update(samples):
            pass
        rewritten.append(list(written))
        assert page_of(columns) == whole(samples)
        written.clear()
    assert rewritten == [["s3"], ["s6"], []]
