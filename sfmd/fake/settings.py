"""The fake server's live settings: what every connection reads on each step.

They live apart from the server so that the mounted fakes, the pacing and the fault script can
read them without importing the server. `FakeAPIError` is the one error the control surface
(`/_fake/configure`, `/_fake/script`, `--script`) raises for a malformed input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class FakeAPIError(ValueError):
    """A fault script or setting is malformed; the message names the key."""


@dataclass
class Settings:
    """What every connection reads on each step, so `configure` takes effect at once."""

    message_size: int = 4800
    rate: float = 0.0
    total: int | None = None
    keepalive_interval: float = 30.0
    delete_every: int = 0
    limit_every: int = 0
    record_bytes: bool = False
    #: v2: every Nth filtered-stream message also matches the app's next rule.
    multi_match_every: int = 0
    #: v2: every Nth filtered-stream message names its rules without their tags.
    untagged_every: int = 0
    #: v2: the most rules one app may hold.
    max_rules: int = 1000
    #: v2: a refused rule answers HTTP 400 instead of a 2xx whose body holds `errors`.
    rules_errors_as_http: bool = False
    #: Jetstream: events the instance produces a second, subscribed or not (0: none).
    jetstream_rate: float = 20.0
    #: Jetstream: produce in bursts of this many events at once (same mean rate); None: steady.
    jetstream_burst: int | None = None
    #: Jetstream: seconds of events kept for cursor replay; older ones are dropped.
    jetstream_window: float = 86400.0
    #: Jetstream: seconds between the server's WebSocket pings on every connection.
    jetstream_ping_interval: float = 30.0
    #: Jetstream: what the produced events hold (DIDs, kinds, records) follows from this seed.
    jetstream_seed: int = 0
    #: Jetstream: a live subscriber this many events behind the tip is dropped, as the real
    #: server drops one whose outbox is full (no close frame); 0: never.
    jetstream_outbox: int = 10_000
    #: Mastodon: statuses the instance posts a second in total, watched or not (0: only the
    #: ones a test posts with `mastodon_post`).
    mastodon_rate: float = 5.0
    #: Mastodon: what the posted statuses hold (authors, text, tags drawn) follows this seed.
    mastodon_seed: int = 0
    #: Mastodon: seconds between the streaming server's pings; a socket that did not answer
    #: the previous ping is dropped at the next one.
    mastodon_ping_interval: float = 30.0
    #: Mastodon: REST requests a token (or, without one, an address) may make per window.
    mastodon_rate_limit: int = 300
    #: Mastodon: the rate-limit window in seconds (windows are aligned to the epoch).
    mastodon_rate_window: float = 300.0
    #: Mastodon: the hashtags posted statuses draw from.
    mastodon_tags: tuple[str, ...] = ("archives", "fediverse", "python", "mastodon", "history")
    #: Mastodon: the ids of the lists every token owns.
    mastodon_lists: tuple[str, ...] = ("1", "2")

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A checked copy with `changes` applied; a bad key or value raises FakeAPIError."""
        new = dataclasses.replace(self)
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise FakeAPIError(f"unknown setting {key!r}; known: {', '.join(sorted(names))}")
            setattr(new, key, _check_setting(key, value))
        return new


_BOOL_SETTINGS = frozenset({"record_bytes", "rules_errors_as_http"})
_COUNT_SETTINGS = frozenset(
    {
        "message_size",
        "total",
        "delete_every",
        "limit_every",
        "multi_match_every",
        "untagged_every",
        "max_rules",
        "jetstream_burst",
        "jetstream_seed",
        "jetstream_outbox",
        "mastodon_seed",
        "mastodon_rate_limit",
    }
)
_OPTIONAL_SETTINGS = frozenset({"total", "jetstream_burst"})
_POSITIVE_SETTINGS = frozenset(
    {
        "keepalive_interval",
        "jetstream_window",
        "jetstream_ping_interval",
        "mastodon_ping_interval",
        "mastodon_rate_window",
    }
)
_NAME_LIST_SETTINGS = frozenset({"mastodon_tags", "mastodon_lists"})


def _check_setting(key: str, value: Any) -> Any:
    if key in _NAME_LIST_SETTINGS:
        return _check_names(key, value)
    if key in _BOOL_SETTINGS:
        if not isinstance(value, bool):
            raise FakeAPIError(f"{key} must be true or false")
        return value
    if key in _OPTIONAL_SETTINGS and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FakeAPIError(f"{key} must be a number")
    if key in _COUNT_SETTINGS:
        if value != int(value) or value < 0:
            raise FakeAPIError(f"{key} must be a whole number >= 0")
        return int(value)
    if key in _POSITIVE_SETTINGS and value <= 0:
        raise FakeAPIError(f"{key} must be > 0")
    if value < 0:
        raise FakeAPIError(f"{key} must be >= 0")
    return float(value)


def _check_names(key: str, value: Any) -> tuple[str, ...]:
    """A list of names (hashtags without '#', list ids): non-empty, no spaces, no repeats."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise FakeAPIError(f"{key} must be a list of names")
    names: list[str] = []
    for name in value:
        if not isinstance(name, str) or not name or name.startswith("#") or any(
            c.isspace() for c in name
        ):
            raise FakeAPIError(f"{key}: {name!r} is not a name (no '#', no spaces, not empty)")
        if name.lower() in (n.lower() for n in names):
            raise FakeAPIError(f"{key}: {name!r} is given twice")
        names.append(name)
    if key == "mastodon_tags" and not names:
        raise FakeAPIError("mastodon_tags must name at least one hashtag")
    return tuple(names)
