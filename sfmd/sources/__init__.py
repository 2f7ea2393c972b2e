"""Where messages come from: one subpackage per network behind one interface (`base.Source`).

`source_of(spec)` is how everything outside `sources/` finds the network a stream belongs to;
adding a network is adding its subpackage and a line to `SOURCES`.
"""

from __future__ import annotations

from sfmd.registry import StreamSpec
from sfmd.sources.base import Connection, Context, SharedConnection, Sink, Source
from sfmd.sources.bluesky.source import BlueskySource
from sfmd.sources.mastodon.source import MastodonSource
from sfmd.sources.twitter.source import TwitterSource

SOURCES: dict[str, Source] = {
    "twitter": TwitterSource(),
    "bluesky": BlueskySource(),
    "mastodon": MastodonSource(),
}


def source_of(spec: StreamSpec) -> Source:
    return SOURCES[spec.source]


__all__ = [
    "SOURCES",
    "Connection",
    "Context",
    "SharedConnection",
    "Sink",
    "Source",
    "source_of",
]
