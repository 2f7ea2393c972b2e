"""`sfmd demo`: the whole product in a few seconds, on loopback, in a temp dir.

It starts the bundled fake API and a daemon against it, adds a filter and a sample stream
through the control socket (as `sfmctl` would), prints the status table while files appear
and rotate every 2 seconds, stops cleanly and says where everything is. Nothing outside the
temp dir is touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
import time
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
"""

STREAMS: list[dict[str, Any]] = [
    {"name": "demo-filter", "kind": "filter", "track": ["archive", "public library"],
     "people": ["librarycongress"], "credential": "demo-filter"},
    {"name": "demo-sample", "kind": "sample", "credential": "demo-sample"},
    {"name": "demo-bluesky", "source": "bluesky", "kind": "jetstream",
     "collections": ["app.bsky.feed.post"]},
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


async def run_demo(seconds: float = 8.0, base: Path | None = None) -> int:
    base = base or Path(tempfile.mkdtemp(prefix="sfmd-demo-"))
    cred_file = base / "credentials.toml"
    cred_file.write_text(DEMO_CREDENTIALS)
    os.chmod(cred_file, 0o600)

    fake = FakeAPI(load_credentials(cred_file), rate=40, message_size=1200, delete_every=25,
                   limit_every=60)
    await fake.start()
    config = demo_config(base, fake.stream_url, fake.jetstream_url)
    setup_logging(config.daemon.log_dir / "sfmd.log", stderr=False)
    daemon = Daemon(config)
    control = ControlServer(daemon, config.daemon.control_socket, config.daemon.socket_mode)
    client = Client(str(config.daemon.control_socket))
    print(f"sfmd demo in {base}")
    print(f"  fake streaming API at {fake.url} (Twitter) and {fake.jetstream_url} (Bluesky)")
    print(f"  control socket {config.daemon.control_socket}")
    print("  files rotate every 2 s, on UTC boundaries\n")

    await daemon.startup(control)
    try:
        for body in STREAMS:
            created = await asyncio.to_thread(client.call, "POST", "/streams", body)
            network = "" if created["source"] == "twitter" else f"{created['source']} "
            print(f"added {network}{created['kind']} stream {created['name']}")
        before = (await asyncio.to_thread(client.call, "GET", "/streams"))["streams"]
        sampled = time.monotonic()
        deadline = sampled + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            after = (await asyncio.to_thread(client.call, "GET", "/streams"))["streams"]
            now = time.monotonic()
            print("\n" + render_status(after, rates(before, after, now - sampled)))
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
    print(f"data: {config.daemon.data_dir}\nlogs: {config.daemon.log_dir / 'sfmd.log'}")
    return 0 if not leftovers else 1
