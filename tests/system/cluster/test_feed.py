"""The manifest feed against a real nats-server and a real consumer: every host's lines in
one stream, a republish after a crash stored once."""

from __future__ import annotations

import json

from nats.js.api import ConsumerConfig, DeliverPolicy

from sfmd.cluster.feed import STREAM, ManifestFeed, message_id, subject_of
from tests.system.cluster.conftest import Connect


def line(stream: str, file: str, sha: str) -> bytes:
    return json.dumps({"stream": stream, "file": file, "sha256": sha}).encode() + b"\n"


async def test_a_consumer_sees_every_hosts_lines_once_even_when_republished(
    host_client: Connect,
) -> None:
    a = await ManifestFeed.open((await host_client("host-a")).jetstream(), "host-a")
    b = await ManifestFeed.open((await host_client("host-b.lan")).jetstream(), "host-b.lan")
    sent = [
        (a, "news", "news/2026/12/05/news-20261205-0000.jsonl.gz", "aa" * 32),
        (a, "news", "news/2026/12/05/news-20261205-0015.jsonl.gz", "ab" * 32),
        (b, "feed", "feed/2026/12/05/feed-20261205-0000.jsonl.gz", "bb" * 32),
    ]
    for feed, stream, file, sha in sent:
        first = await feed.publish(line(stream, file, sha), stream=stream, file=file, sha256=sha)
        assert not first.duplicate
    # host-a crashed before it recorded the acknowledgement: it publishes the line again.
    _, stream, file, sha = sent[0]
    again = await a.publish(line(stream, file, sha), stream=stream, file=file, sha256=sha)
    assert again.duplicate

    consumer = await host_client("catalogue")
    js = consumer.jetstream()
    sub = await js.pull_subscribe(
        "sfm.manifest.>", durable="catalogue", stream=STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    got = []
    while len(got) < 4:
        try:
            msgs = await sub.fetch(10, timeout=1)
        except TimeoutError:
            break
        for msg in msgs:
            got.append((msg.subject, json.loads(msg.data), msg.headers or {}))
            await msg.ack()
    assert len(got) == 3
    assert [g[1]["file"] for g in got] == [file for _, _, file, _ in sent]
    assert got[2][0] == subject_of("host-b.lan", "feed") == "sfm.manifest.host-b=2Elan.feed"
    assert got[0][2]["Nats-Msg-Id"] == message_id("host-a", sent[0][2], sent[0][3])


async def test_opening_the_feed_again_keeps_the_stream_and_its_lines(host_client: Connect) -> None:
    client = await host_client("host-a")
    feed = await ManifestFeed.open(client.jetstream(), "host-a")
    await feed.publish(b"{}\n", stream="s", file="f", sha256="0" * 64)
    await ManifestFeed.open(client.jetstream(), "host-a")
    info = await client.jetstream().stream_info(STREAM)
    assert info.state.messages == 1
    assert info.config.duplicate_window == 24 * 3600
