"""`sfmd demo`: the whole product in a few seconds, on loopback, in a temp dir.

It starts the bundled fake API and a daemon against it, adds a filter, a sample and a
Bluesky stream through the control socket, showing the `sfmctl` command that does the same
by hand, prints `sfmctl status` while files appear and rotate every 2 seconds, stops
cleanly, and shows what the files hold: the filter's tweets match its terms. Nothing outside
its folder is touched; a temp folder is removed at the end unless `--keep` is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import os
import re
import shlex
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sfmd.config import Config, default_config
from sfmd.control.server import ControlServer
from sfmd.credentials import load_credentials
from sfmd.ctl import Client, rates, render_status
from sfmd.daemon.app import Daemon
from sfmd.fake import FakeAPI
from sfmd.logs import setup_logging

DEMO_CREDENTIALS = """\
# Made-up keys for the demo: the fake API checks signatures made with them.
[demo-filter]
consumer_key = "demo-consumer-key-1"
consumer_secret = "demo-consumer-secret-1"
access_token = "demo-access-token-1"
access_token_secret = "demo-access-token-secret-1"

[demo-sample]
consumer_key = "demo-consumer-key-2"
consumer_secret = "demo-consumer-secret-2"
access_token = "demo-access-token-2"
access_token_secret = "demo-access-token-secret-2"

[demo-mastodon]
mastodon_instance = "{mastodon_instance}"
mastodon_token = "demo-mastodon-token"
"""

STREAMS: list[dict[str, Any]] = [
    {"name": "demo-filter", "kind": "filter", "track": ["archive", "public library"],
     "people": ["librarycongress"], "credential": "demo-filter"},
    {"name": "demo-sample", "kind": "sample", "credential": "demo-sample"},
    {"name": "demo-bluesky", "source": "bluesky", "kind": "jetstream",
     "collections": ["app.bsky.feed.post"]},
    {"name": "demo-mastodon", "source": "mastodon", "kind": "hashtag", "tag": "archives",
     "credential": "demo-mastodon"},
]


def demo_config(base: Path, api_url: str, jetstream_url: str) -> Config:
    config = default_config(base)
    return dataclasses.replace(
        config,
        bluesky=dataclasses.replace(config.bluesky, jetstream_url=jetstream_url),
        daemon=dataclasses.replace(config.daemon, save_interval=2),
        twitter=dataclasses.replace(
            config.twitter, stream_url=api_url, rest_url=api_url,
            credentials_file=base / "credentials.toml", default_credential="demo-sample",
        ),
        timing=dataclasses.replace(config.timing, start_jitter=0),
    )


#: sfmctl's option for each list setting of a STREAM (the others are named alike).
_OPTIONS = {"collections": "collection", "dids": "did"}


def sfmctl_command(socket: Path, body: dict[str, Any]) -> str:
    """The `sfmctl` command line that creates the stream `body` describes."""
    verb = "sample" if body["kind"] == "sample" else "add"
    argv = ["sfmctl", "--socket", str(socket), verb, body["name"]]
    if body.get("source", "twitter") != "twitter":
        argv += ["--source", body["source"]]
    if body.get("source") == "mastodon":
        argv += ["--kind", body["kind"]]
    for key, value in body.items():
        if key in ("name", "kind", "source"):
            continue
        option = "--" + _OPTIONS.get(key, key)
        for item in value if isinstance(value, list) else [value]:
            argv += [option, str(item)]
    return shlex.join(argv)


def terms(body: dict[str, Any]) -> str:
    """A filter's terms as a person reads them."""
    shown = []
    for key in ("track", "people", "follow", "collections", "dids", "tag"):
        value = body.get(key)
        if value:
            values = value if isinstance(value, list) else [value]
            shown.append(f"{key} " + ", ".join(repr(v) for v in values))
    return "; ".join(shown) or "everything (a sample)"


def stored(data_dir: Path, name: str) -> list[dict[str, Any]]:
    """Every message of a stream's published files."""
    out = []
    for line in (data_dir / name / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["file"]:
            raw = gzip.decompress((data_dir / entry["file"]).read_bytes())
            out += [json.loads(m) for m in raw.splitlines()]
    return out


def what_matched(tweets: list[dict[str, Any]], stream: dict[str, Any]) -> Counter[str]:
    """Which of a v1.1 filter's terms each tweet matches, as Twitter matches them: every word
    of a track phrase in its text, or an author it follows."""
    follow = {**{i: f"@{n}" for n, i in stream.get("people_ids", {}).items()},
              **{i: f"id {i}" for i in stream.get("follow", [])}}
    found: Counter[str] = Counter()
    for tweet in tweets:
        text = tweet["text"].lower()
        hit = next((f"'{p}'" for p in stream.get("track", []) if all(
            re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text) for w in p.lower().split())), None)
        if hit is None:
            hit = follow.get(tweet.get("user", {}).get("id_str"), "nothing")
        found[hit] += 1
    return found


async def run_demo(
    seconds: float = 8.0, base: Path | None = None, keep: bool = False
) -> int:
    """The demo in `base` (kept), or in a temp folder removed at the end unless `keep`."""
    temporary = base is None
    base = base or Path(tempfile.mkdtemp(prefix="sfmd-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        return await _demo(seconds, base, kept=keep or not temporary)
    finally:
        if temporary and not keep:
            shutil.rmtree(base, ignore_errors=True)


async def _demo(seconds: float, base: Path, kept: bool) -> int:
    cred_file = base / "credentials.toml"
    cred_file.write_text(DEMO_CREDENTIALS.format(mastodon_instance="http://127.0.0.1"))
    os.chmod(cred_file, 0o600)

    fake = FakeAPI(load_credentials(cred_file), rate=40, message_size=1200, delete_every=25,
                   limit_every=60)
    await fake.start()
    # The Mastodon account lives on the fake instance, whose port is known only now.
    cred_file.write_text(DEMO_CREDENTIALS.format(mastodon_instance=fake.mastodon_url))
    config = demo_config(base, fake.stream_url, fake.jetstream_url)
    setup_logging(config.daemon.log_dir / "sfmd.log", stderr=False)
    daemon = Daemon(config)
    control = ControlServer(daemon, config.daemon.control_socket, config.daemon.socket_mode)
    client = Client(str(config.daemon.control_socket))
    print(f"sfmd demo in {base}")
    print(f"  fake streaming API at {fake.url} (Twitter), {fake.jetstream_url} (Bluesky) and "
          f"{fake.mastodon_url} (Mastodon)")
    print(f"  control socket {config.daemon.control_socket}")
    print("  files rotate every 2 s, on UTC boundaries\n")

    socket = config.daemon.control_socket
    await daemon.startup(control)
    created: dict[str, dict[str, Any]] = {}
    try:
        for body in STREAMS:
            answer = await asyncio.to_thread(client.call, "POST", "/streams", body)
            created[answer["name"]] = answer
            network = "" if answer["source"] == "twitter" else f"{answer['source']} "
            print(f"added {network}{answer['kind']} stream {answer['name']}: {terms(body)}")
            print(f"  by hand: {sfmctl_command(socket, body)}")
        before = (await asyncio.to_thread(client.call, "GET", "/streams"))["streams"]
        sampled = time.monotonic()
        deadline = sampled + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            after = (await asyncio.to_thread(client.call, "GET", "/streams"))["streams"]
            now = time.monotonic()
            print(f"\n$ sfmctl --socket {shlex.quote(str(socket))} status")
            print(render_status(after, rates(before, after, now - sampled)))
            before, sampled = after, now
    finally:
        await daemon.shutdown(control)
        await fake.stop()

    print("\nstopped cleanly; published files:")
    for body in STREAMS:
        manifest = config.daemon.data_dir / body["name"] / "manifest.jsonl"
        for line in manifest.read_text().splitlines():
            entry = json.loads(line)
            gaps = f"  gaps: {len(entry['gaps'])}" if entry.get("gaps") else ""
            if entry["file"] is None:
                print(f"  (nothing stored {entry['start']} to {entry['end']}){gaps}")
                continue
            print(
                f"  {entry['file']}  {entry['messages']:>4} messages  "
                f"sha256 {entry['sha256'][:12]}…{gaps}"
            )
    leftovers = list(config.daemon.data_dir.rglob("*.part"))
    print(f"\n.part files left: {len(leftovers)}")

    print("\nwhat the files hold:")
    for body in STREAMS:
        messages = stored(config.daemon.data_dir, body["name"])
        if body.get("source") == "mastodon":
            posts = [m for m in messages if m.get("event") == "update"]
            filled = sum(bool(m.get("backfill")) for m in posts)
            print(f"  {body['name']}: {len(posts)} posts with #{body['tag']} ({filled} filled "
                  f"in from the timeline), {len(messages) - len(posts)} deletes and edits")
            continue
        if body.get("source", "twitter") != "twitter":
            print(f"  {body['name']}: {len(messages)} events ({terms(body)}, and every "
                  "account's identity and account events)")
            continue
        tweets = [m for m in messages if "text" in m]
        counted = f"{len(tweets)} tweets and {len(messages) - len(tweets)} delete or limit notices"
        if body["kind"] == "filter":
            found = what_matched(tweets, created[body["name"]])
            shown = ", ".join(f"{n} match {term}" for term, n in found.most_common())
            print(f"  {body['name']}: {counted}; {shown}")
        else:
            print(f"  {body['name']}: {counted}; a sample matches no particular term")

    if kept:
        print(f"\ndata: {config.daemon.data_dir}\nlogs: {config.daemon.log_dir / 'sfmd.log'}")
    else:
        print(f"\nremoved {base} (sfmd demo --keep keeps the files to look at)")
    print("next: run the fake API and a daemon of your own, as the README's "
          "'Running sfmd for real' says, with sfmd fakeapi --port 8089 as Twitter")
    return 0 if not leftovers else 1
