"""What one Mastodon stream asks the instance for: its channel.

A channel is a stream kind with its tag or list. It says how to subscribe and unsubscribe on
the streaming socket, which frames belong to it (a frame's `stream` array), and which REST
timeline holds the same statuses for the gap fill. Everything here is pure.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from sfmd.registry import StreamSpec

#: The REST timeline of each kind, and its fixed query parameters.
TIMELINES: dict[str, tuple[str, dict[str, str]]] = {
    "public": ("/api/v1/timelines/public", {}),
    "public:local": ("/api/v1/timelines/public", {"local": "true"}),
    "public:remote": ("/api/v1/timelines/public", {"remote": "true"}),
    "hashtag": ("/api/v1/timelines/tag/{tag}", {}),
    "hashtag:local": ("/api/v1/timelines/tag/{tag}", {"local": "true"}),
    "list": ("/api/v1/timelines/list/{list}", {}),
    "user": ("/api/v1/timelines/home", {}),
}


def normal_tag(tag: str) -> str:
    """A hashtag as the instance compares it: case and compatibility forms folded."""
    return unicodedata.normalize("NFKC", tag).casefold()


Key = tuple[str, ...]


@dataclass(frozen=True)
class Channel:
    kind: str
    tag: str = ""
    list: str = ""

    @classmethod
    def of(cls, spec: StreamSpec) -> Channel:
        return cls(spec.kind, spec.tag, spec.list)

    @property
    def key(self) -> Key:
        """How frames of this channel are recognised: their `stream` array, normalised. Two
        streams with the same key share one subscription."""
        if self.tag:
            return (self.kind, normal_tag(self.tag))
        if self.list:
            return (self.kind, self.list)
        return (self.kind,)

    def stream_array(self) -> list[str]:
        """The `stream` array the streaming server puts on this channel's frames."""
        return [self.kind, *([self.tag] if self.tag else []), *([self.list] if self.list else [])]

    def message(self, action: str) -> str:
        """The `subscribe` or `unsubscribe` message for the streaming socket."""
        body: dict[str, str] = {"type": action, "stream": self.kind}
        if self.tag:
            body["tag"] = self.tag
        if self.list:
            body["list"] = self.list
        return json.dumps(body)

    def timeline(self) -> tuple[str, dict[str, str]]:
        """The REST path and fixed parameters of the timeline that holds the same statuses."""
        path, params = TIMELINES[self.kind]
        return path.format(tag=self.tag, list=self.list), dict(params)

    def describe(self) -> dict[str, Any]:
        """For provenance: the stream as the instance's API names it."""
        what: dict[str, Any] = {"stream": self.kind}
        if self.tag:
            what["tag"] = self.tag
        if self.list:
            what["list"] = self.list
        return what


def key_of(stream: object) -> Key | None:
    """A frame's `stream` array as a channel key; None when it is not one."""
    if not isinstance(stream, list) or not stream or not all(isinstance(s, str) for s in stream):
        return None
    if stream[0].startswith("hashtag") and len(stream) > 1:
        return (stream[0], normal_tag(stream[1]), *stream[2:])
    return tuple(stream)
