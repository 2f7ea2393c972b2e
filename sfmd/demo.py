"""`sfmd demo`: the whole byte path in a few seconds, on loopback, in a temp dir.

It starts the bundled fake API, registers a filter and a sample stream, runs them with a
2-second rotation, prints their status as files appear and rotate, stops cleanly and says
where everything is. Nothing outside the temp dir is touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from sfmd.config import Config, default_config
from sfmd.credentials import load_credentials
from sfmd.fakeapi import FakeAPI
from sfmd.logs import setup_logging
from sfmd.registry import Registry, validate_stream
from sfmd.runner import StreamRunner, new_session

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


def demo_config(base: Path, stream_url: str) -> Config:
    config = default_config(base)
    return dataclasses.replace(
        config,
        daemon=dataclasses.replace(config.daemon, save_interval=2),
        twitter=dataclasses.replace(
            config.twitter, stream_url=stream_url, credentials_file=base / "credentials.toml"
        ),
    )


async def run_demo(seconds: float = 8.0, base: Path | None = None) -> int:
    base = base or Path(tempfile.mkdtemp(prefix="sfmd-demo-"))
    cred_file = base / "credentials.toml"
    cred_file.write_text(DEMO_CREDENTIALS)
    os.chmod(cred_file, 0o600)
    credentials = load_credentials(cred_file)

    fake = FakeAPI(credentials, rate=40, message_size=1200, delete_every=25, limit_every=60)
    await fake.start()
    config = demo_config(base, fake.url + "/1.1")
    setup_logging(config.daemon.log_dir / "sfmd.log", stderr=False)
    registry = Registry.load(config.daemon.state_dir, credentials=credentials.keys())
    for body in (
        {
            "name": "demo-filter",
            "kind": "filter",
            "track": ["archive", "library"],
            "credential": "demo-filter",
        },
        {"name": "demo-sample", "kind": "sample", "credential": "demo-sample"},
    ):
        spec = validate_stream(body, credentials=credentials.keys())
        if spec.name not in {s.name for s in registry.list()}:
            registry.add(spec)

    print(f"sfmd demo in {base}")
    print(f"  fake streaming API at {fake.url}, files rotate every 2 s (UTC boundaries)\n")
    async with new_session() as session:
        runners = [
            StreamRunner(spec, credentials[spec.credential], config, session)
            for spec in registry.list()
        ]
        for runner in runners:
            await runner.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            print_status(runners)
        for runner in runners:
            await runner.stop()
    await fake.stop()

    print("\nstopped cleanly; published files:")
    for runner in runners:
        manifest = config.daemon.data_dir / runner.spec.name / "manifest.jsonl"
        for line in manifest.read_text().splitlines():
            entry = json.loads(line)
            print(
                f"  {entry['file']}  {entry['messages']:>4} messages  "
                f"sha256 {entry['sha256'][:12]}…"
            )
    leftovers = list(config.daemon.data_dir.rglob("*.part"))
    print(f"\n.part files left: {len(leftovers)}")
    print(f"data: {config.daemon.data_dir}\nlogs: {config.daemon.log_dir / 'sfmd.log'}")
    return 0 if not leftovers else 1


def print_status(runners: list[StreamRunner]) -> None:
    print(f"{'NAME':<12} {'STATE':<10} {'MESSAGES':>8} {'TWEETS':>7} {'FILES':>5}  CURRENT FILE")
    for runner in runners:
        s = runner.status_dict()
        current = Path(s["current_file"]).name if s["current_file"] else "-"
        print(
            f"{runner.spec.name:<12} {s['state']:<10} {s['messages']:>8} {s['tweets']:>7} "
            f"{runner.archive.published:>5}  {current}"
        )
    print()
