"""A Mastodon stream's channel: subscribe messages, frame routing keys and REST timelines
(sfmd.sources.mastodon.channels)."""

from __future__ import annotations

import json

import pytest

from sfmd.sources.mastodon.channels import Channel, key_of


@pytest.mark.parametrize(
    ("channel", "message", "stream", "timeline"),
    [
        (Channel("public"), {"type": "subscribe", "stream": "public"}, ["public"],
         ("/api/v1/timelines/public", {})),
        (Channel("public:local"), {"type": "subscribe", "stream": "public:local"},
         ["public:local"], ("/api/v1/timelines/public", {"local": "true"})),
        (Channel("public:remote"), {"type": "subscribe", "stream": "public:remote"},
         ["public:remote"], ("/api/v1/timelines/public", {"remote": "true"})),
        (Channel("hashtag", tag="Archives"),
         {"type": "subscribe", "stream": "hashtag", "tag": "Archives"}, ["hashtag", "Archives"],
         ("/api/v1/timelines/tag/Archives", {})),
        (Channel("hashtag:local", tag="python"),
         {"type": "subscribe", "stream": "hashtag:local", "tag": "python"},
         ["hashtag:local", "python"], ("/api/v1/timelines/tag/python", {"local": "true"})),
        (Channel("list", list="42"), {"type": "subscribe", "stream": "list", "list": "42"},
         ["list", "42"], ("/api/v1/timelines/list/42", {})),
        (Channel("user"), {"type": "subscribe", "stream": "user"}, ["user"],
         ("/api/v1/timelines/home", {})),
    ],
)
def test_each_kind_subscribes_routes_and_fills_from_its_own_timeline(
    channel: Channel, message: dict, stream: list[str], timeline: tuple
) -> None:
    assert json.loads(channel.message("subscribe")) == message
    assert json.loads(channel.message("unsubscribe"))["type"] == "unsubscribe"
    assert channel.stream_array() == stream
    assert key_of(stream) == channel.key  # the server's frames find the channel
    assert channel.timeline() == timeline


def test_a_hashtag_is_matched_as_the_instance_matches_it() -> None:
    # Mastodon folds case: #Archives and #archives are one tag, one subscription.
    assert Channel("hashtag", tag="Archives").key == Channel("hashtag", tag="archives").key
    assert key_of(["hashtag", "ARCHIVES"]) == Channel("hashtag", tag="archives").key
    assert Channel("hashtag", tag="archives").key != Channel("hashtag:local", tag="archives").key


@pytest.mark.parametrize("stream", [None, [], "public", [1], {"a": 1}])
def test_a_frame_without_a_stream_array_has_no_key(stream: object) -> None:
    assert key_of(stream) is None
