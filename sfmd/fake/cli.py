"""`sfmd fakeapi`: the simulated APIs as a command, for demos, tests and dry runs.

`sfmd.cli` hands `sfmd fakeapi ...` here without importing this package otherwise, so
`sfmd run` and `sfmd stream` never load the fakes. The command serves until SIGTERM or SIGINT
and prints its base URL first, so a script that started it can find it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sfmd.credentials import CredentialsError, load_credentials
from sfmd.daemon.heap import Heap
from sfmd.fake.server import FakeAPI
from sfmd.fake.settings import FakeAPIError, Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfmd fakeapi",
        description="the bundled simulated streaming API, on loopback",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--port", type=int, default=0, help="port to bind; 0 picks a free one (printed)"
    )
    parser.add_argument(
        "--credentials",
        metavar="FILE",
        help="credentials TOML to check signatures and bearer tokens against; unset: accept any",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,  # like a real stream; a dry run flat out fills a disk in hours
        help="messages per second per connection; 0: as fast as possible (for benchmarks)",
    )
    parser.add_argument(
        "--total",
        type=int,
        default=None,
        help="messages per connection, then only keep-alives; unset: endless",
    )
    parser.add_argument("--message-size", type=int, default=4800, help="tweet size in bytes")
    parser.add_argument(
        "--keepalive", type=float, default=30.0, help="seconds of silence before a keep-alive line"
    )
    parser.add_argument(
        "--delete-every", type=int, default=0, help="make every Nth message a delete notice"
    )
    parser.add_argument(
        "--limit-every", type=int, default=0, help="make every Nth message a limit notice"
    )
    parser.add_argument(
        "--script",
        metavar="FILE.json",
        help="JSON list of faults, one per connection attempt, in order",
    )
    jetstream = parser.add_argument_group("the Jetstream instance (ws://HOST:PORT/subscribe)")
    jetstream.add_argument(
        "--jetstream-rate",
        type=float,
        default=20.0,
        help="events the instance produces per second, subscribed or not; 0: none",
    )
    jetstream.add_argument(
        "--jetstream-burst",
        type=int,
        default=None,
        help="produce in bursts of this many events (same mean rate); unset: steady",
    )
    jetstream.add_argument(
        "--jetstream-window",
        type=float,
        default=86400.0,
        help="seconds of events kept for cursor replay",
    )
    jetstream.add_argument(
        "--jetstream-ping-interval",
        type=float,
        default=30.0,
        help="seconds between WebSocket pings on each connection",
    )
    jetstream.add_argument(
        "--jetstream-seed", type=int, default=0, help="what the produced events hold follows it"
    )
    jetstream.add_argument(
        "--jetstream-outbox",
        type=int,
        default=10_000,
        help="drop a live subscriber this many events behind (no close frame); 0: never",
    )
    mastodon = parser.add_argument_group(
        "the Mastodon instance (REST on --port, streaming on --mastodon-streaming-port)"
    )
    mastodon.add_argument(
        "--mastodon-streaming-port",
        type=int,
        default=0,
        help="port of the streaming server; 0 picks a free one (printed)",
    )
    mastodon.add_argument(
        "--mastodon-rate",
        type=float,
        default=5.0,
        help="statuses the instance posts per second in total, watched or not; 0: none",
    )
    mastodon.add_argument(
        "--mastodon-seed", type=int, default=0, help="what the posted statuses hold follows it"
    )
    mastodon.add_argument(
        "--mastodon-ping-interval",
        type=float,
        default=30.0,
        help="seconds between the streaming server's pings; no pong by the next one: dropped",
    )
    mastodon.add_argument(
        "--mastodon-rate-limit",
        type=int,
        default=300,
        help="REST requests per token per rate-limit window",
    )
    mastodon.add_argument(
        "--mastodon-rate-window",
        type=float,
        default=300.0,
        help="seconds of the rate-limit window (aligned to the epoch)",
    )
    mastodon.add_argument(
        "--mastodon-tags",
        type=_names,
        default=",".join(Settings.mastodon_tags),
        metavar="TAG,TAG",
        help="the hashtags posted statuses draw from",
    )
    mastodon.add_argument(
        "--mastodon-lists",
        type=_names,
        default=",".join(Settings.mastodon_lists),
        metavar="ID,ID",
        help="the ids of the lists every token owns",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="keep every sent message for GET /_fake/sent/CONN (memory grows)",
    )


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, for --mastodon-tags and --mastodon-lists."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; print the base URL first so scripts can find it."""
    try:
        credentials = load_credentials(args.credentials) if args.credentials else None
        faults = json.loads(Path(args.script).read_text()) if args.script else []
        if not isinstance(faults, list):
            raise FakeAPIError("the script file must hold a JSON list of faults")
        api = FakeAPI(
            credentials,
            host=args.host,
            port=args.port,
            message_size=args.message_size,
            rate=args.rate,
            total=args.total,
            keepalive_interval=args.keepalive,
            delete_every=args.delete_every,
            limit_every=args.limit_every,
            record_bytes=args.record,
            jetstream_rate=args.jetstream_rate,
            jetstream_burst=args.jetstream_burst,
            jetstream_window=args.jetstream_window,
            jetstream_ping_interval=args.jetstream_ping_interval,
            jetstream_seed=args.jetstream_seed,
            jetstream_outbox=args.jetstream_outbox,
            mastodon_streaming_port=args.mastodon_streaming_port,
            mastodon_rate=args.mastodon_rate,
            mastodon_seed=args.mastodon_seed,
            mastodon_ping_interval=args.mastodon_ping_interval,
            mastodon_rate_limit=args.mastodon_rate_limit,
            mastodon_rate_window=args.mastodon_rate_window,
            mastodon_tags=args.mastodon_tags,
            mastodon_lists=args.mastodon_lists,
        )
        api.script(*faults)
    except (OSError, ValueError, CredentialsError) as e:
        print(f"sfmd fakeapi: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_serve_forever(api, checked=credentials is not None))


async def _serve_forever(api: FakeAPI, checked: bool = True) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await api.start()
    except OSError as e:
        print(f"sfmd fakeapi: cannot listen: {e}", file=sys.stderr)
        return 1
    print(api.url, flush=True)
    collector = asyncio.create_task(_keep_collections_short())
    # What to put in sfmd.toml and the credentials file, key by key.
    for key, value in (
        ("[twitter] stream_url", api.stream_url),
        ("[twitter] rest_url", api.stream_url),
        ("[twitter] api_url", api.api_url),
        ("[bluesky] jetstream_url", api.jetstream_url),
        ("[CREDENTIAL] mastodon_instance", api.mastodon_url),
        ("mastodon streaming server", api.mastodon_streaming_url),
    ):
        print(f"sfmd fakeapi: {key} = {value}", file=sys.stderr, flush=True)
    if not checked:
        print(
            "sfmd fakeapi: no --credentials: every OAuth signature and bearer token is "
            "accepted; give sfmd's credentials file to check them as Twitter would",
            file=sys.stderr, flush=True,
        )
    await stopping.wait()
    collector.cancel()
    await api.stop()
    return 0


#: How often the command freezes what lives (`_keep_collections_short`), and how often it
#: collects over everything, frozen objects included.
FREEZE_INTERVAL = 10.0
FULL_INTERVAL = 600.0


async def _keep_collections_short() -> None:
    """Serving 5,000 connections, the command's full collections walked every object it held
    (0.4-0.8 s each, every few seconds in the fan-out benchmark), and each connection's pacer
    then sent the pause's messages in one burst: the client measured the fake's collector.
    Frozen every few seconds (the daemon's `Heap`), a collection walks only what is newer."""
    heap = Heap(FULL_INTERVAL)
    heap.settle()
    while True:
        await asyncio.sleep(FREEZE_INTERVAL)
        if heap.tick() is None:
            heap.settle()
