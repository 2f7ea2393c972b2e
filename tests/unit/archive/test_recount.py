"""A recovered file's "tweets" are what the live path counted for the same messages.

The archive does not know what its lines hold: each caller gives it the function its stream
counts tweets with, and recovery recounts a leftover `.part` with it. Here messages are
published live by a v2 stream (or routed to a v2 filter member), and the same lines, left
as a `.part` in another folder, are recovered; both files must carry the same count.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from sfmd.archive import Archive, CountItems, FileName, PublishedFile, interval_start
from sfmd.logs import get_logger
from sfmd.registry import validate_stream
from sfmd.sources.twitter.framing import count_tweets as count_v1_tweets
from sfmd.sources.twitter.multiplex import Member, Router, count_routed
from sfmd.sources.twitter.v2 import V2
from sfmd.sources.twitter.v2 import count_tweets as count_v2_tweets
from sfmd.status import StreamStatus

F1 = {"name": "f1", "kind": "filter", "api": "v2", "rules": [{"value": "cats"}]}

# What a v2 stream may send: tweets with "data" first or not, a tweet with partial errors,
# `errors` objects (an operational disconnect among them), and what is not a JSON object.
V2_MESSAGES = [
    b'{"data": {"id": "1", "text": "a"}, "matching_rules": [{"id": "7", "tag": "f1"}]}',
    b'{"matching_rules": [{"id": "7", "tag": "f1"}], "data": {"id": "2", "text": "b"}}',
    b'{"errors": [{"title": "Not Found Error", "detail": "quoted tweet gone"}],'
    b' "data": {"id": "3"}, "matching_rules": [{"id": "7", "tag": "f1"}]}',
    b'{"errors": [{"title": "operational-disconnect", "detail": "restart"}]}',
    b'{"errors": [{"title": "ConnectionException", "detail": "too many"}]}',
    b'{"unexpected": true}',
    b"[1, 2]",
    b"not json",
]


def leftover(data_dir: Path, stream: str, lines: list[bytes]) -> Path:
    """A gzip `.part` as a SIGKILL leaves it: sync-flushed lines, a torn one, no trailer."""
    start = interval_start(time.time(), 3600) - 3600
    name = FileName(stream, start, 0, True)
    directory = name.directory(data_dir / stream)
    directory.mkdir(parents=True)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    data = compressor.compress(b"".join(line + b"\n" for line in lines))
    data += compressor.flush(zlib.Z_SYNC_FLUSH)
    data += compressor.compress(b'{"data": {"id": "torn') + compressor.flush(zlib.Z_SYNC_FLUSH)
    path = directory / (name.filename + ".part")
    path.write_bytes(data)
    return path


async def live_and_recovered(
    tmp_path: Path,
    stream: str,
    count: CountItems,
    feed: Callable[[Archive], Awaitable[None]],
) -> tuple[PublishedFile, PublishedFile]:
    """The file an archive publishes after the live path `feed` wrote to it, and the file
    recovered from a leftover `.part` holding the same lines."""
    archive = Archive(tmp_path / "live", stream, save_interval=3600, compress=True, count=count)
    await archive.open()
    await feed(archive)
    live = await archive.close()
    assert live is not None
    lines = gzip.decompress(live.path.read_bytes()).split(b"\n")
    assert lines.pop() == b""

    leftover(tmp_path / "crashed", stream, lines)
    archive = Archive(tmp_path / "crashed", stream, save_interval=3600, compress=True, count=count)
    [recovered] = await archive.open()
    await archive.close()
    assert (recovered.messages, recovered.bytes) == (live.messages, live.bytes)
    return live, recovered


async def test_a_recovered_v2_file_counts_the_tweets_the_stream_counted(tmp_path: Path) -> None:

    async def feed(archive: Archive) -> None:  # what a v2 Stream's read loop does with a batch
        tweets, _ending = V2("http://127.0.0.1:9").examine(
            V2_MESSAGES, get_logger(stream="v2s"), StreamStatus()
        )
        await archive.write(V2_MESSAGES, tweets)

    live, recovered = await live_and_recovered(tmp_path, "v2s", count_v2_tweets, feed)
    assert (live.messages, live.tweets) == (len(V2_MESSAGES), 3)
    assert recovered.tweets == live.tweets
    assert count_v1_tweets(V2_MESSAGES) != live.tweets  # what recovery counted before


async def test_a_recovered_v2_filter_file_counts_what_the_router_counted(tmp_path: Path) -> None:
    async def feed(archive: Archive) -> None:  # what the shared connection's sink does
        router = Router()
        spec = validate_stream(F1, default_credential="c")
        router.members["f1"] = Member(spec, archive)
        await router.write(V2_MESSAGES, 0)

    live, recovered = await live_and_recovered(tmp_path, "f1", count_routed, feed)
    assert (live.messages, live.tweets) == (3, 3)  # the messages whose rules name f1
    assert recovered.tweets == live.tweets
