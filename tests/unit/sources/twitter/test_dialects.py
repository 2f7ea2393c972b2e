"""Twitter's two dialects, in process: the request each sends, and what a batch means."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sfmd.credentials import Credential
from sfmd.logs import get_logger
from sfmd.sources.backoff import Failure
from sfmd.sources.twitter.framing import LengthFramer, LineFramer
from sfmd.sources.twitter.stream import StreamTarget
from sfmd.sources.twitter.v1 import V1
from sfmd.sources.twitter.v2 import V2
from sfmd.status import StreamStatus

KEYS = Credential(
    "alpha", consumer_key="ck", consumer_secret="cs", access_token="at",
    access_token_secret="ats", bearer_token="bt",
)
LOG = get_logger(stream="t")


def target(endpoint: str, **params: str) -> StreamTarget:
    return StreamTarget("t", endpoint, params, KEYS)


def test_v1_filter_is_a_signed_post_with_a_form_body() -> None:
    method, url, headers, body = V1("http://h/1.1/").request(target("filter", track="a b"))
    assert (method, url) == ("POST", "http://h/1.1/statuses/filter.json")
    assert headers["Authorization"].startswith("OAuth ")
    assert 'oauth_consumer_key="ck"' in headers["Authorization"]
    assert parse_qs(body or "") == {"track": ["a b"], "stall_warnings": ["true"]}


def test_v1_sample_is_a_signed_get_and_delimited_asks_for_lengths() -> None:
    dialect = V1("http://h/1.1", delimited=True)
    method, url, headers, body = dialect.request(target("sample"))
    assert method == "GET" and body is None and "oauth_signature" in headers["Authorization"]
    assert urlsplit(url).path == "/1.1/statuses/sample.json"
    assert parse_qs(urlsplit(url).query) == {"stall_warnings": ["true"], "delimited": ["length"]}
    assert isinstance(dialect.framer(), LengthFramer)
    assert isinstance(V1("http://h/1.1").framer(), LineFramer)


def v1_batch() -> list[bytes]:
    return [
        b'{"created_at":"x","id":1,"text":"a"}',
        b'{"delete":{"status":{"id":1}}}',
        b'{"limit":{"track":42,"timestamp_ms":"1"}}',
        b'{"created_at":"x","id":2,"text":"b"}',
    ]


def test_v1_counts_tweets_and_keeps_the_largest_undelivered_count() -> None:
    status = StreamStatus()
    tweets, ending = V1("http://h").examine(v1_batch(), LOG, status)
    assert (tweets, ending, status.limit_undelivered) == (2, None, 42)
    assert V1.count(v1_batch()) == tweets  # recovery counts as the live path does


@pytest.mark.parametrize(
    ("code", "failure", "reset_ok"),
    [(4, Failure.NETWORK, True), (7, Failure.HTTP, False), (6, Failure.HTTP, False)],
)
def test_a_v1_disconnect_message_ends_the_connection(
    code: int, failure: Failure, reset_ok: bool
) -> None:
    message = json.dumps({"disconnect": {"code": code, "reason": "r"}}).encode()
    _, ending = V1("http://h").examine([message], LOG, StreamStatus())
    assert ending is not None
    assert (ending.kind, ending.reset_ok) == (failure, reset_ok)
    assert f"code {code}" in ending.reason


def test_v2_is_a_get_with_the_bearer_token_and_the_field_lists() -> None:
    method, url, headers, body = V2("http://h/").request(
        target("filter", **{"tweet.fields": "id,text"})
    )
    assert (method, body) == ("GET", None)
    assert headers == {"Authorization": "Bearer bt"}
    assert urlsplit(url).path == "/2/tweets/search/stream"
    assert parse_qs(urlsplit(url).query) == {"tweet.fields": ["id,text"]}
    assert urlsplit(V2("http://h").request(target("sample"))[1]).path == "/2/tweets/sample/stream"


def v2_message(**body: Any) -> bytes:
    return json.dumps(body).encode()


def test_v2_counts_tweets_and_api_errors_apart() -> None:
    dialect = V2("http://h")
    batch = [
        v2_message(data={"id": "1"}),
        v2_message(includes={}, data={"id": "2"}),  # "data" not first: still a tweet
        v2_message(data={"id": "3"}, errors=[{"title": "partial"}]),
        v2_message(errors=[{"title": "Not Found"}, {"title": "Gone"}]),
        b"not json",
    ]
    tweets, ending = dialect.examine(batch, LOG, StreamStatus())
    assert (tweets, ending, dialect.errors) == (3, None, 2)
    assert V2.count(batch) == tweets


@pytest.mark.parametrize(
    "error",
    [{"title": "operational-disconnect"}, {"disconnect_type": "OperationalDisconnect"}],
)
def test_a_v2_operational_disconnect_ends_the_connection_as_a_network_error(
    error: dict[str, str],
) -> None:
    _, ending = V2("http://h").examine([v2_message(errors=[error])], LOG, StreamStatus())
    assert ending is not None and ending.kind is Failure.NETWORK
