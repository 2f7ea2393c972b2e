"""Config, credentials and registry files as the daemon expects them, with short timings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sfmd.credentials import Credential, load_credentials
from sfmd.fake import FakeAPI
from sfmd.registry import Registry, validate_stream

CREDENTIALS_TOML = """
[alpha]
consumer_key = "ck-alpha-SECRET"
consumer_secret = "cs-alpha-SECRET"
access_token = "at-alpha-SECRET"
access_token_secret = "ats-alpha-SECRET"
bearer_token = "bt-alpha-SECRET"

[beta]
consumer_key = "ck-beta-SECRET"
consumer_secret = "cs-beta-SECRET"
access_token = "at-beta-SECRET"
access_token_secret = "ats-beta-SECRET"
bearer_token = "bt-beta-SECRET"

[fedi]
mastodon_instance = "http://fake-mastodon.invalid"
mastodon_token = "mt-fedi-SECRET"

[fedi2]
mastodon_instance = "http://fake-mastodon.invalid"
mastodon_token = "mt-fedi2-SECRET"
"""
#: What the credentials' Mastodon tables name until `write_daemon_config` points them at the
#: fake API's instance (whose port is known only once it runs).
MASTODON_PLACEHOLDER = "http://fake-mastodon.invalid"

# Short versions of Twitter's timings, so fault tests run in seconds.
FAST_TIMING = {
    "stall_timeout": 1.0,
    "tcp_backoff_step": 0.2,
    "tcp_backoff_max": 1.0,
    "http_backoff_start": 0.4,
    "http_backoff_max": 1.6,
    "ratelimit_backoff_start": 0.8,
    "ratelimit_backoff_max": 3.2,
    "connect_timeout": 2.0,
    "flush_interval": 0.2,
}


def write_credentials_file(home: Path) -> Path:
    """The shared test credentials as `home`/credentials.toml, mode 0600 as sfmd insists."""
    path = home / "credentials.toml"
    path.write_text(CREDENTIALS_TOML)
    os.chmod(path, 0o600)
    return path


def write_credentials(home: Path) -> dict[str, Credential]:
    """`write_credentials_file`, loaded: for tests that set up a home outside tmp_path."""
    return load_credentials(write_credentials_file(home))


def write_config(
    tmp_path: Path,
    stream_url: str,
    *,
    save_interval: int = 60,
    compress: bool = True,
    timing: dict[str, float] | None = None,
    twitter: dict[str, Any] | None = None,
    bluesky: dict[str, Any] | None = None,
    mastodon: dict[str, Any] | None = None,
    daemon: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
) -> Path:
    """An sfmd.toml under tmp_path with short timings; paths relative to it, as allowed."""
    lines = [
        "[daemon]",
        'data_dir = "data"',
        'state_dir = "state"',
        'log_dir = "log"',
        'control_socket = "sfmd.sock"',
        f"save_interval = {save_interval}",
        f"compress = {'true' if compress else 'false'}",
        *(f"{key} = {json.dumps(value)}" for key, value in (daemon or {}).items()),
        "[twitter]",
        f'stream_url = "{stream_url}"',
        'credentials_file = "credentials.toml"',
        'default_credential = "alpha"',
    ]
    for key, value in (twitter or {}).items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines.append("[timing]")
    for key, value in {**FAST_TIMING, **(timing or {})}.items():
        lines.append(f"{key} = {value}")
    for section, values in (("bluesky", bluesky), ("mastodon", mastodon), ("cluster", cluster)):
        if values:
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = tmp_path / "sfmd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_daemon_config(tmp_path: Path, fake_api: FakeAPI, **kwargs: Any) -> Path:
    """A daemon config against the fake API: REST calls go to it too, no start-up jitter,
    and the credentials' Mastodon accounts live on its instance."""
    creds = tmp_path / "credentials.toml"
    if creds.exists() and MASTODON_PLACEHOLDER in (text := creds.read_text()):
        creds.write_text(text.replace(MASTODON_PLACEHOLDER, fake_api.mastodon_url))
    twitter = {
        "rest_url": fake_api.stream_url, "api_url": fake_api.api_url, **kwargs.pop("twitter", {})
    }
    timing = {"start_jitter": 0, "reconcile_interval": 1, **kwargs.pop("timing", {})}
    bluesky = {"jetstream_url": fake_api.jetstream_url, "idle_timeout": 5, "rewind": 2,
               **kwargs.pop("bluesky", {})}
    mastodon = {"idle_timeout": 5, "fill_overlap": 2, **kwargs.pop("mastodon", {})}
    return write_config(tmp_path, fake_api.stream_url, twitter=twitter, timing=timing,
                        bluesky=bluesky, mastodon=mastodon, **kwargs)


def register(tmp_path: Path, credentials: dict[str, Credential], **body: Any) -> None:
    """Add a stream to the registry file directly, as if created before the process started."""
    registry = Registry.load(tmp_path / "state", credentials=credentials.keys())
    registry.add(validate_stream(body, credentials=credentials.keys()))
