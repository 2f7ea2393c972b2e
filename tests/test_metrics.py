"""Metrics are read from the streams' counters at scrape time, and rendered at most once per
max_age so a busy scraper cannot eat the event loop."""

from __future__ import annotations

import asyncio
import time

from sfmd.metrics import ConnectionSample, Metrics, StreamSample


def sample(messages: int) -> StreamSample:
    return StreamSample("s1", "streaming", messages, messages, 10 * messages, 0, 7, 2)


def test_counters_render_as_prometheus_text() -> None:
    text = Metrics(lambda: [sample(5)], time.monotonic()).render().decode()
    assert 'sfmd_stream_messages_total{stream="s1"} 5.0' in text
    assert 'sfmd_stream_state{state="streaming",stream="s1"} 1.0' in text
    assert 'sfmd_stream_state{state="backoff",stream="s1"} 0.0' in text
    assert 'sfmd_stream_limit_undelivered{stream="s1"} 7.0' in text
    assert 'sfmd_stream_files_published_total{stream="s1"} 2.0' in text


def test_a_page_is_reused_within_max_age_and_fresh_after() -> None:
    counter = {"n": 1}
    cached = Metrics(lambda: [sample(counter["n"])], time.monotonic(), max_age=3600)
    first = cached.render()
    counter["n"] = 2
    assert cached.render() == first
    fresh = Metrics(lambda: [sample(counter["n"])], time.monotonic(), max_age=0)
    assert b'messages_total{stream="s1"} 2.0' in fresh.render()
    counter["n"] = 3
    assert b'messages_total{stream="s1"} 3.0' in fresh.render()


async def test_page_renders_off_the_loop_and_is_shared() -> None:
    calls = {"n": 0}

    def samples() -> list[StreamSample]:
        calls["n"] += 1
        return [sample(calls["n"])]

    metrics = Metrics(samples, time.monotonic(), max_age=3600)
    pages = await asyncio.gather(*(metrics.page() for _ in range(5)))
    assert calls["n"] == 1
    assert all(page == pages[0] for page in pages)
    assert b'messages_total{stream="s1"} 1.0' in pages[0]


def test_shared_v2_connections_have_metrics_of_their_own() -> None:
    conn = ConnectionSample("v2-filter@alpha", messages=9, unrouted=2, errors=1, reconnects=0,
                            rules=3)
    text = Metrics(lambda: [sample(5)], time.monotonic(), connections=lambda: [conn])
    page = text.render().decode()
    assert 'sfmd_v2_connection_messages_total{connection="v2-filter@alpha"} 9.0' in page
    assert 'sfmd_v2_connection_unrouted_total{connection="v2-filter@alpha"} 2.0' in page
    assert 'sfmd_v2_connection_rules{connection="v2-filter@alpha"} 3.0' in page
