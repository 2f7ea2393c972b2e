"""Bluesky streams in the registry: their settings, their rules, and nothing of Twitter's."""

from __future__ import annotations

from typing import Any

import pytest

from sfmd.registry import Mode, ValidationError, apply_patch, validate_stream

CREDS = ["default"]


def jetstream(**settings: Any) -> dict[str, Any]:
    return {"name": "posts", "source": "bluesky", "kind": "jetstream",
            "collections": ["app.bsky.feed.post"], **settings}


def refused(body: object, code: str = "invalid") -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate_stream(body, credentials=CREDS, default_credential="default")
    assert caught.value.code == code
    return caught.value


def test_a_jetstream_stream_has_bluesky_s_settings_only() -> None:
    spec = validate_stream(jetstream(dids=["did:plc:ewvi7nxzyoun6zhxrhs64oiz"]),
                           credentials=CREDS, default_credential="default")
    assert spec.to_dict() == {
        "name": "posts", "source": "bluesky", "kind": "jetstream",
        "collections": ["app.bsky.feed.post"], "dids": ["did:plc:ewvi7nxzyoun6zhxrhs64oiz"],
        "endpoint": "", "active": True, "isolation": "task",
    }
    assert spec.credential == "" and spec.mode is Mode.TASK and spec.exclusive
    assert spec.slot == "bluesky.posts"  # a connection of its own: never in another's way


@pytest.mark.parametrize(
    "collection", ["app.bsky.feed.post", "app.bsky.*", "com.example.some-thing.record",
                   "app.bsky.graph.follow"])
def test_nsids_and_prefixes_are_accepted(collection: str) -> None:
    validate_stream(jetstream(collections=[collection]))


@pytest.mark.parametrize(
    "collection", ["post", "app.bsky", "app.bsky.feed.*post", "app..feed", "*",
                   "app.bsky.feed.post ", "app.bsky.feed.1post"])
def test_a_bad_collection_is_refused_naming_the_field(collection: str) -> None:
    error = refused(jetstream(collections=[collection]))
    assert error.field == "collections" and "NSID" in error.message


@pytest.mark.parametrize("did", ["plc:abc", "did:PLC:abc", "did:plc:", "did:plc:abc ", "x"])
def test_a_bad_did_is_refused(did: str) -> None:
    assert refused(jetstream(dids=[did])).field == "dids"


def test_jetstream_s_limits_hold() -> None:
    assert "at most 100" in refused(jetstream(collections=[f"a.b.c{i}" for i in range(101)]))\
        .message
    dids = [f"did:plc:{i:024d}" for i in range(10_001)]
    assert "at most 10000" in refused(jetstream(dids=dids)).message
    validate_stream(jetstream(dids=dids[:10_000]))


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"track": ["x"]}, "track"), ({"credential": "default"}, "credential"),
     ({"api": "v2"}, "api"), ({"rules": []}, "rules")],
)
def test_twitter_s_settings_are_refused_on_a_bluesky_stream(
    extra: dict[str, Any], field: str
) -> None:
    error = refused(jetstream(**extra))
    assert error.field == field and "a bluesky stream has no" in error.message


def test_bluesky_s_settings_are_refused_on_a_twitter_stream() -> None:
    body = {"name": "n", "kind": "filter", "track": ["x"], "collections": ["app.bsky.feed.post"]}
    assert refused(body).field == "collections"


def test_the_kind_must_be_the_network_s() -> None:
    assert refused(jetstream(kind="filter")).field == "kind"
    assert refused({"name": "n", "kind": "jetstream", "track": ["x"]}).field == "kind"


@pytest.mark.parametrize("url", ["ws://127.0.0.1:6008/subscribe",
                                 "wss://jetstream1.us-east.bsky.network/subscribe"])
def test_another_instance_may_be_named(url: str) -> None:
    assert validate_stream(jetstream(endpoint=url)).endpoint == url


@pytest.mark.parametrize("url", ["http://x/subscribe", "wss://", "ws://a b/subscribe"])
def test_an_endpoint_that_is_not_a_websocket_url_is_refused(url: str) -> None:
    assert refused(jetstream(endpoint=url)).field == "endpoint"


def test_new_collections_keep_the_connection_and_the_source_is_fixed() -> None:
    spec = validate_stream(jetstream())
    changed = apply_patch(spec, {"collections": ["app.bsky.feed.like"], "dids": []})
    assert changed.collections == ("app.bsky.feed.like",)
    assert changed.connection_key() == spec.connection_key()  # an options_update, no reconnect
    moved = apply_patch(spec, {"endpoint": "ws://127.0.0.1:9/subscribe"})
    assert moved.connection_key() != spec.connection_key()
    with pytest.raises(ValidationError) as caught:
        apply_patch(spec, {"source": "twitter"})
    assert caught.value.field == "source"
