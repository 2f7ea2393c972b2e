"""The simulated API v2, seen from a raw HTTP client on a real loopback socket.

The v2 client is written against this server, so these tests pin its wire shapes: bearer
auth, the rules API's non-atomic answers, the per-app connection limit, routing by the rules
current at send time, and every scripted fault as a client experiences it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sfmd.credentials import Credential
from sfmd.fake import FIRST_SEQ, FakeAPI, seq_of
from sfmd.fake.rulebook import rule_problems
from tests.helpers.bodies import READ_LIMIT, BodyReader

ALPHA = {"Authorization": "Bearer bt-alpha-SECRET"}
BETA = {"Authorization": "Bearer bt-beta-SECRET"}
FILTER = "/2/tweets/search/stream"
SAMPLE = "/2/tweets/sample/stream"
RULES = "/2/tweets/search/stream/rules"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def fake(credentials: dict[str, Credential]) -> AsyncIterator[FakeAPI]:
    api = FakeAPI(credentials, keepalive_interval=0.05, record_bytes=True, message_size=1500)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def call(
    session: aiohttp.ClientSession,
    api: FakeAPI,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] = ALPHA,
    **params: str,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request; the answer's JSON whatever its content type (problems are problem+json)."""
    async with session.request(
        method,
        api.api_url + path,
        json=body,
        headers=headers,
        params=params or None,
        timeout=aiohttp.ClientTimeout(total=READ_LIMIT),  # a stream answering 200 never ends
    ) as response:
        return response.status, json.loads(await response.read()), response


async def add(session, api, *rules: dict[str, str], headers=ALPHA, **params) -> tuple[int, Any]:
    status, body, _ = await call(
        session, api, "POST", RULES, {"add": list(rules)}, headers, **params
    )
    return status, body


class Reader(BodyReader):
    """Splits a v2 body into lines: a blank line is a keep-alive, any other is a message."""

    def split(self, buffer: bytes) -> tuple[list[bytes], int, bytes]:
        *lines, rest = buffer.split(b"\r\n")
        for line in lines:
            assert b"\n" not in line and b"\r" not in line
        return [line for line in lines if line], sum(1 for line in lines if not line), rest


def rule_ids(message: bytes) -> list[str]:
    return [entry["id"] for entry in json.loads(message).get("matching_rules", [])]


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "bt-alpha-SECRET"}],
    ids=["missing", "unknown", "no_scheme"],
)
async def test_a_bad_bearer_token_is_refused(fake: FakeAPI, session, headers) -> None:
    for path in (FILTER, SAMPLE, RULES):
        status, body, response = await call(session, fake, "GET", path, headers=headers)
        assert status == 401 and response.content_type == "application/problem+json"
        assert body == {
            "title": "Unauthorized",
            "type": "about:blank",
            "status": 401,
            "detail": "Unauthorized",
        }
    assert [r.auth_ok for r in fake.log] == [False] * 3


async def test_without_credentials_each_token_is_its_own_app(session) -> None:
    async with FakeAPI() as api:
        assert (await add(session, api, {"value": "one"}, headers={"Authorization": "Bearer x"}))[
            0
        ] == 201
        assert (await add(session, api, {"value": "two"}, headers={"Authorization": "Bearer y"}))[
            0
        ] == 201
        assert [r["value"] for r in api.rules("app-1")] == ["one"]
        assert [r["value"] for r in api.rules("app-2")] == ["two"]
        assert [r.credential for r in api.log] == ["app-1", "app-2"]
        status, _, _ = await call(session, api, "GET", RULES, headers={})
        assert status == 401


# --------------------------------------------------------------------------- rules API


async def test_rules_start_empty_then_list_what_was_added(fake: FakeAPI, session) -> None:
    status, body, response = await call(session, fake, "GET", RULES)
    assert status == 200 and response.content_type == "application/json"
    assert set(body) == {"meta"} and body["meta"]["result_count"] == 0
    assert ISO_MS.match(body["meta"]["sent"])

    status, body = await add(
        session, fake, {"value": "cat has:images", "tag": "cats"}, {"value": "dog"}
    )
    assert status == 201
    first, second = body["data"]
    assert first == {"value": "cat has:images", "tag": "cats", "id": first["id"]}
    assert second == {"value": "dog", "id": second["id"]}
    assert int(first["id"]) > 2**53 and int(second["id"]) > int(first["id"])
    assert body["meta"]["summary"] == {"created": 2, "not_created": 0, "valid": 2, "invalid": 0}
    assert "errors" not in body

    status, listed, _ = await call(session, fake, "GET", RULES)
    assert listed["data"] == [
        {"id": first["id"], "value": "cat has:images", "tag": "cats"},
        {"id": second["id"], "value": "dog"},
    ]
    assert listed["meta"]["result_count"] == 2
    _, one, _ = await call(session, fake, "GET", RULES, ids=second["id"])
    assert one["data"] == [{"id": second["id"], "value": "dog"}]
    assert fake.rules("alpha") == listed["data"] and fake.rules("beta") == []
    _, other, _ = await call(session, fake, "GET", RULES, headers=BETA)
    assert "data" not in other  # rules belong to the app


async def test_dry_run_validates_and_stores_nothing(fake: FakeAPI, session) -> None:
    status, body = await add(
        session,
        fake,
        {"value": "a", "tag": "x"},
        {"value": "nope:1"},
        {"value": "a"},
        dry_run="true",
    )
    assert status == 200
    assert body["data"] == [{"value": "a", "tag": "x"}]  # no id: nothing was created
    assert body["meta"]["summary"] == {"valid": 1, "invalid": 2}
    assert [e["title"] for e in body["errors"]] == ["UnprocessableEntity", "DuplicateRule"]
    assert "id" not in body["errors"][1]
    assert fake.rules("alpha") == []

    status, body = await add(session, fake, {"value": "a", "tag": "x"})
    assert status == 201
    assert [r.summary for r in fake.log] == [
        {"dry_run": True, "add": 3, "delete": 0, "valid": 1, "invalid": 2},
        {
            "dry_run": False,
            "add": 1,
            "delete": 0,
            "created": 1,
            "not_created": 0,
            "valid": 1,
            "invalid": 0,
        },
    ]


async def test_a_duplicate_names_the_rule_it_duplicates(fake: FakeAPI, session) -> None:
    _, body = await add(session, fake, {"value": "dup"})
    existing = body["data"][0]["id"]
    status, body = await add(
        session, fake, {"value": "dup", "tag": "again"}, {"value": "new"}, {"value": "new"}
    )
    assert status == 201
    created = body["data"][0]["id"]
    assert body["errors"] == [
        {
            "value": "dup",
            "id": existing,
            "title": "DuplicateRule",
            "type": "https://api.twitter.com/2/problems/duplicate-rules",
        },
        {
            "value": "new",
            "id": created,
            "title": "DuplicateRule",
            "type": "https://api.twitter.com/2/problems/duplicate-rules",
        },
    ]
    assert body["meta"]["summary"] == {"created": 1, "not_created": 2, "valid": 1, "invalid": 2}


async def test_adding_is_not_atomic(fake: FakeAPI, session) -> None:
    status, body = await add(
        session, fake, {"value": "good one"}, {"value": "bad:op"}, {"value": "(fine)"}
    )
    assert status == 201
    assert [r["value"] for r in body["data"]] == ["good one", "(fine)"]
    assert body["errors"] == [
        {
            "value": "bad:op",
            "details": [
                "Reference to invalid operator 'bad'. Operator is not available in current "
                "product or product packaging. Please refer to complete available operator list "
                "at https://developer.twitter.com/en/docs/twitter-api/tweets/filtered-stream/"
                "integrate/build-a-rule."
            ],
            "title": "UnprocessableEntity",
            "type": "https://api.twitter.com/2/problems/invalid-rules",
        }
    ]
    assert body["meta"]["summary"] == {"created": 2, "not_created": 1, "valid": 2, "invalid": 1}
    assert [r["value"] for r in fake.rules("alpha")] == ["good one", "(fine)"]

    status, body = await add(session, fake, {"value": "also:bad"})
    assert status == 200 and "data" not in body  # nothing created: 200, not 201
    assert body["meta"]["summary"] == {"created": 0, "not_created": 1, "valid": 0, "invalid": 1}


async def test_refusals_as_http_errors_keep_the_same_body(fake: FakeAPI, session) -> None:
    fake.configure(rules_errors_as_http=True)
    status, body = await add(session, fake, {"value": "kept"}, {"value": "x:y"})
    assert status == 400
    assert [r["value"] for r in body["data"]] == ["kept"]  # still not atomic
    assert body["errors"][0]["title"] == "UnprocessableEntity"
    assert body["meta"]["summary"] == {"created": 1, "not_created": 1, "valid": 1, "invalid": 1}
    assert [r["value"] for r in fake.rules("alpha")] == ["kept"]
    status, body = await add(session, fake, {"value": "x:y"}, dry_run="true")
    assert status == 400 and body["meta"]["summary"] == {"valid": 0, "invalid": 1}
    assert (await add(session, fake, {"value": "fine"}))[0] == 201


async def test_the_rule_cap(fake: FakeAPI, session) -> None:
    fake.configure(max_rules=2)
    status, body = await add(session, fake, {"value": "a"}, {"value": "b"}, {"value": "c"})
    assert status == 201 and len(body["data"]) == 2
    assert body["errors"] == [
        {
            "value": "c",
            "title": "RulesCapExceeded",
            "detail": "Rule creation would exceed the rule cap of 2 for this app.",
            "type": "https://api.twitter.com/2/problems/rule-cap",
        }
    ]
    assert body["meta"]["summary"] == {"created": 2, "not_created": 1, "valid": 3, "invalid": 0}


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("cat has:images -is:retweet lang:en", True),
        ('(from:twitterdev OR to:twitterdev) url:"https://example.org/a:b"', True),
        ('"exact phrase with nope:inside"', True),
        ("bounding_box:[-105.3 39.9 -105.1 40.1] place_country:US", True),
        ("x" * 512, True),
        ("x" * 513, False),
        ("", False),
        ("(unbalanced", False),
        ("unbalanced)", False),
        ('"open quote', False),
        ("nosuch:op", False),
        ("cat -nosuch:op", False),
    ],
)
def test_rule_validation(value: str, valid: bool) -> None:
    assert (rule_problems(value) == []) is valid


async def test_deleting_by_id_and_value(fake: FakeAPI, session) -> None:
    _, body = await add(session, fake, {"value": "a"}, {"value": "b"}, {"value": "c"})
    a, b, _ = (r["id"] for r in body["data"])
    status, body, _ = await call(
        session, fake, "POST", RULES, {"delete": {"ids": [a]}}, dry_run="true"
    )
    assert status == 200 and body["meta"]["summary"] == {"deleted": 1, "not_deleted": 0}
    assert len(fake.rules("alpha")) == 3
    unknown = "1999999999999999999"
    status, body, _ = await call(session, fake, "POST", RULES, {"delete": {"ids": [a, unknown]}})
    assert status == 200
    assert body["meta"]["summary"] == {"deleted": 1, "not_deleted": 1}
    assert body["errors"] == [
        {
            "errors": [{"parameters": {"ids": [unknown]}, "message": "Rule does not exist"}],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": "https://api.twitter.com/2/problems/invalid-request",
        }
    ]
    status, body, _ = await call(session, fake, "POST", RULES, {"delete": {"values": ["c", "zz"]}})
    assert body["meta"]["summary"] == {"deleted": 1, "not_deleted": 1}
    assert fake.rules("alpha") == [{"id": b, "value": "b"}]
    assert fake.log[-1].summary == {
        "dry_run": False,
        "add": 0,
        "delete": 2,
        "deleted": 1,
        "not_deleted": 1,
    }


@pytest.mark.parametrize(
    ("body", "params", "message"),
    [
        (b"{not json", {}, "Request contains an invalid JSON body"),
        (b'{"add": []}', {}, "`add` must be a non-empty array of rules"),
        (b'{"add": [{"value": 3}]}', {}, "`add[0]` must be an object"),
        (b'{"add": [{"value": "a"}], "delete": {"ids": ["1"]}}', {}, "exactly one of"),
        (b'{"delete": {"ids": ["abc"]}}', {}, "'abc' is not a valid Long"),
        (b'{"add": [{"value": "a"}]}', {"dry_run": "yes"}, "[yes] is not one of"),
        (b'{"add": [{"value": "a"}]}', {"dryrun": "true"}, "The query parameter [dryrun]"),
    ],
)
async def test_malformed_rules_requests_are_refused_whole(
    fake: FakeAPI, session, body: bytes, params: dict[str, str], message: str
) -> None:
    headers = ALPHA | {"Content-Type": "application/json"}
    async with session.post(fake.api_url + RULES, data=body, headers=headers, params=params) as r:
        assert r.status == 400 and r.content_type == "application/problem+json"
        answer = json.loads(await r.read())
    assert answer["title"] == "Invalid Request"
    assert answer["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert message in answer["errors"][0]["message"]
    assert fake.rules("alpha") == []


# --------------------------------------------------------------------------- streams


async def test_one_connection_per_app_per_endpoint(fake: FakeAPI, session) -> None:
    await add(session, fake, {"value": "a"})
    first = await session.get(fake.api_url + FILTER, headers=ALPHA)
    assert first.status == 200
    status, body, _ = await call(session, fake, "GET", FILTER)
    assert status == 429
    assert body == {
        "title": "ConnectionException",
        "detail": "This stream is currently at the maximum allowed connection limit.",
        "connection_issue": "TooManyConnections",
        "type": "https://api.twitter.com/2/problems/streaming-connection",
    }
    others = [
        await session.get(fake.api_url + SAMPLE, headers=ALPHA),  # another endpoint
        await session.get(fake.api_url + FILTER, headers=BETA),  # another app
    ]
    assert [r.status for r in others] == [200, 200]
    await Reader(first).until(messages=1)  # the first one is untouched
    first.close()
    await fake.wait_for(lambda api: api.log[1].closed is not None, 5)
    again = await session.get(fake.api_url + FILTER, headers=ALPHA)
    assert again.status == 200
    for response in (*others, again):
        response.close()


async def test_query_is_recorded_and_checked(fake: FakeAPI, session) -> None:
    query = {
        "tweet.fields": "id,text,created_at,note_tweet",
        "expansions": "author_id,referenced_tweets.id",
        "user.fields": "username,verified_type",
        "media.fields": "url,variants",
        "place.fields": "full_name",
        "poll.fields": "options",
        "backfill_minutes": "2",
    }
    async with session.get(fake.api_url + SAMPLE, headers=ALPHA, params=query) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.headers["Transfer-Encoding"] == "chunked"
    assert fake.log[0].params == query and fake.log[0].credential == "alpha"
    for bad in ({"tweet.fields": "id,nosuch"}, {"tweet_fields": "id"}, {"backfill_minutes": "9"}):
        status, body, _ = await call(session, fake, "GET", SAMPLE, **bad)
        assert status == 400 and body["title"] == "Invalid Request", bad
        assert list(body["errors"][0]["parameters"]) == list(bad)


async def test_messages_match_the_record(fake: FakeAPI, session) -> None:
    fake.configure(total=30)
    _, body = await add(session, fake, {"value": "one", "tag": "t1"}, {"value": "two", "tag": "t2"})
    one, two = (r["id"] for r in body["data"])
    async with session.get(fake.api_url + FILTER, headers=ALPHA) as response:
        reader = Reader(response)
        await reader.until(messages=30, keepalives=2)  # after `total`, only keep-alives
    await fake.wait_for(lambda api: api.log[-1].closed is not None, 5)
    record = fake.log[-1]
    assert [m for m, _ in fake.v2_sent(record.conn)] == reader.messages
    assert fake.sent_messages(record.conn) == reader.messages
    assert [seq_of(m) for m in reader.messages] == list(range(FIRST_SEQ, FIRST_SEQ + 30))
    assert record.sent_count == 30 and record.sent_seqs == [[FIRST_SEQ, FIRST_SEQ + 29]]
    for i, raw in enumerate(reader.messages):
        assert len(raw) == 1500
        tweet = json.loads(raw)
        assert list(tweet) == ["data", "includes", "matching_rules"]
        data = tweet["data"]
        assert data["id"] == str(FIRST_SEQ + i) and data["edit_history_tweet_ids"] == [data["id"]]
        assert data["author_id"] == tweet["includes"]["users"][0]["id"]
        assert ISO_MS.match(data["created_at"])
        expected = (one, "t1") if i % 2 == 0 else (two, "t2")
        assert tweet["matching_rules"] == [{"id": expected[0], "tag": expected[1]}]
        assert fake.v2_sent(record.conn)[i][1] == [expected[0]]


async def test_multi_match_and_untagged(fake: FakeAPI, session) -> None:
    fake.configure(total=12, multi_match_every=3, untagged_every=4)
    _, body = await add(session, fake, *({"value": v, "tag": v} for v in ("a", "b", "c")))
    ids = [r["id"] for r in body["data"]]
    async with session.get(fake.api_url + FILTER, headers=ALPHA) as response:
        reader = Reader(response)
        await reader.until(messages=12)
    tag_of = {r["id"]: r["tag"] for r in body["data"]}
    for position, raw in enumerate(reader.messages, start=1):
        want = [ids[(position - 1) % 3]] + ([ids[position % 3]] if position % 3 == 0 else [])
        untagged = position % 4 == 0
        expected = [{"id": i} if untagged else {"id": i, "tag": tag_of[i]} for i in want]
        assert json.loads(raw)["matching_rules"] == expected, position
    assert [len(r) for _, r in fake.v2_sent(fake.log[-1].conn)] == [1, 1, 2] * 4


async def test_rule_changes_apply_without_reconnecting(fake: FakeAPI, session) -> None:
    fake.configure(rate=200)
    async with session.get(fake.api_url + FILTER, headers=ALPHA) as response:
        reader = Reader(response)
        await reader.until(keepalives=3)
        assert reader.messages == []  # no rules: keep-alives only
        fake.configure(keepalive_interval=60)  # so only the rule change can wake the stream
        _, body = await add(session, fake, {"value": "first"})
        first = body["data"][0]["id"]
        await reader.until(messages=5)
        assert {i for m in reader.messages for i in rule_ids(m)} == {first}

        _, body = await add(session, fake, {"value": "second"})
        second = body["data"][0]["id"]
        await call(session, fake, "POST", RULES, {"delete": {"ids": [first]}})
        sent_by_then = fake.log[0].sent_count  # at most a message or two may be in flight
        await reader.until(messages=sent_by_then + 20)
        assert [rule_ids(m) for m in reader.messages[-10:]] == [[second]] * 10
        assert [rule_ids(m) for m in reader.messages[:5]] == [[first]] * 5
    assert [r.endpoint for r in fake.log].count("v2/filter") == 1


async def test_sample_stream_has_no_matching_rules(fake: FakeAPI, session) -> None:
    fake.configure(total=3)
    async with session.get(fake.api_url + SAMPLE, headers=ALPHA) as response:
        reader = Reader(response)
        await reader.until(messages=3)
    assert all("matching_rules" not in json.loads(m) for m in reader.messages)
    assert all(len(m) == 1500 for m in reader.messages)
    assert [ids for _, ids in fake.v2_sent(0)] == [[], [], []]


# --------------------------------------------------------------------------- faults


async def test_status_faults_with_and_without_rate_limit_headers(fake: FakeAPI, session) -> None:
    fake.script(
        {"endpoint": "v2/filter", "status": 429, "reset_in": 60},
        {"endpoint": "v2/stream", "status": 429},
        {"endpoint": "v2/sample", "status": 503},
        {"endpoint": "v2/rules", "status": 503, "body": '{"title":"Service Unavailable"}'},
    )
    before = time.time()
    status, body, response = await call(session, fake, "GET", FILTER)
    assert status == 429 and response.content_type == "application/problem+json"
    assert body == {
        "title": "Too Many Requests",
        "detail": "Too Many Requests",
        "type": "about:blank",
        "status": 429,
    }
    headers = response.headers
    assert (headers["x-rate-limit-limit"], headers["x-rate-limit-remaining"]) == ("50", "0")
    assert before + 59 <= int(headers["x-rate-limit-reset"]) <= time.time() + 61
    status, _, response = await call(session, fake, "GET", SAMPLE)
    assert status == 429 and "x-rate-limit-reset" not in response.headers
    status, body, _ = await call(session, fake, "GET", SAMPLE)
    assert status == 503 and body["status"] == 503
    status, body, _ = await call(session, fake, "GET", RULES)
    assert status == 503 and body == {"title": "Service Unavailable"}
    assert [r.status for r in fake.log] == [429, 429, 503, 503]
    assert fake.pending_faults == []


async def test_v1_faults_do_not_leak_into_v2(fake: FakeAPI, session) -> None:
    fake.script({"status": 503})  # endpoint "stream": v1.1 only
    await add(session, fake, {"value": "a"})
    async with session.get(fake.api_url + FILTER, headers=ALPHA) as response:
        assert response.status == 200
    assert len(fake.pending_faults) == 1


async def test_cut_after_sends_half_a_message_then_drops(fake: FakeAPI, session) -> None:
    await add(session, fake, {"value": "a"})
    fake.script({"endpoint": "v2/filter", "cut_after": 3})
    async with session.get(fake.api_url + FILTER, headers=ALPHA) as response:
        reader = Reader(response)
        with pytest.raises(aiohttp.ClientPayloadError):
            await reader.to_end()
    record = fake.log[-1]
    assert len(reader.messages) == 3 == record.sent_count
    assert reader.messages == fake.sent_messages(record.conn)
    assert record.close_reason == "cut" and record.partial_seq == seq_of(reader.messages[-1]) + 1
    assert 500 < len(reader.buffer) < 1000 and str(record.partial_seq).encode() in reader.buffer


async def test_stall_after_sends_nothing_at_all(fake: FakeAPI, session) -> None:
    await add(session, fake, {"value": "a"})
    fake.script({"endpoint": "v2/filter", "stall_after": 2})
    timeout = aiohttp.ClientTimeout(total=None, sock_read=0.4)  # 8 keep-alive intervals
    async with session.get(fake.api_url + FILTER, headers=ALPHA, timeout=timeout) as response:
        reader = Reader(response)
        with pytest.raises(asyncio.TimeoutError):
            await reader.to_end()
    assert (len(reader.messages), reader.keepalives, reader.buffer) == (2, 0, b"")


@pytest.mark.parametrize("shape", ["full", "type_only"])
async def test_operational_disconnect_then_the_end(fake: FakeAPI, session, shape: str) -> None:
    await add(session, fake, {"value": "a"})
    fake.script({"endpoint": "v2/stream", "disconnect_after": 2, "disconnect_shape": shape})
    async with session.get(fake.api_url + FILTER, headers=ALPHA) as response:
        reader = Reader(response)
        await reader.to_end()  # a clean end of body, not a cut
    assert len(reader.messages) == 3 and reader.buffer == b""
    error = json.loads(reader.messages[2])["errors"][0]
    assert error["disconnect_type"] == "OperationalDisconnect"
    if shape == "full":
        assert error == {
            "title": "operational-disconnect",
            "disconnect_type": "OperationalDisconnect",
            "detail": "This stream has been disconnected for operational reasons.",
            "type": "https://api.twitter.com/2/problems/operational-disconnect",
        }
    else:
        assert error == {"disconnect_type": "OperationalDisconnect"}
    record = fake.log[-1]
    assert record.close_reason == "operational_disconnect" and record.sent_count == 3
    assert fake.v2_sent(record.conn)[2] == (reader.messages[2], [])


async def test_error_after_is_not_fatal(fake: FakeAPI, session) -> None:
    fake.configure(total=5)
    fake.script({"endpoint": "v2/sample", "error_after": 1})
    async with session.get(fake.api_url + SAMPLE, headers=ALPHA) as response:
        reader = Reader(response)
        await reader.until(messages=5, keepalives=1)
    kinds = [next(iter(json.loads(m))) for m in reader.messages]
    assert kinds == ["data", "errors", "data", "data", "data"]
    assert json.loads(reader.messages[1])["errors"][0]["title"] == "Not Found Error"


async def read_three(fake: FakeAPI, session: aiohttp.ClientSession) -> list[bytes]:
    async with session.get(fake.api_url + FILTER, headers=ALPHA) as response:
        reader = Reader(response)
        await reader.until(messages=3)
    await fake.wait_for(lambda api: api.log[-1].closed is not None, 5)
    assert reader.messages == fake.sent_messages(fake.log[-1].conn)
    return reader.messages


async def test_oversized_and_malformed_lines(fake: FakeAPI, session) -> None:
    _, body = await add(session, fake, {"value": "a", "tag": "big"})
    fake.configure(total=3)
    fake.script({"endpoint": "v2/filter", "oversized_after": 1})
    messages = await read_three(fake, session)
    assert [len(m) for m in messages] == [1500, 2**20, 1500]  # 1 MiB unless told otherwise
    big = json.loads(messages[1])
    assert big["matching_rules"] == [{"id": body["data"][0]["id"], "tag": "big"}]
    assert big["data"]["id"] == str(seq_of(messages[0]) + 1)

    fake.script({"endpoint": "v2/filter", "malformed_after": 1, "size": 10})
    messages = await read_three(fake, session)
    with pytest.raises(json.JSONDecodeError):
        json.loads(messages[1])
    assert seq_of(messages[1]) == seq_of(messages[0]) + 1
    json.loads(messages[2])


def test_bad_v2_fault_scripts_are_refused() -> None:
    api = FakeAPI()
    for bad in (
        {"error_after": 1},  # v2 only
        {"endpoint": "v2/rules", "cut_after": 1},
        {"endpoint": "v2/filter", "disconnect_after": 1, "disconnect_shape": "odd"},
        {"endpoint": "v2/filter", "reset_in": 5},
        {"endpoint": "v3/filter", "status": 500},
    ):
        with pytest.raises(ValueError):
            api.script(bad)


# --------------------------------------------------------------------------- control, secrets


async def test_control_endpoints(fake: FakeAPI, session) -> None:
    control = fake.url + "/_fake"
    async with session.post(control + "/configure", json={"multi_match_every": 2, "total": 3}) as r:
        settings = await r.json()
        assert (settings["multi_match_every"], settings["max_rules"]) == (2, 1000)
    async with session.post(control + "/configure", json={"max_rules": -1}) as r:
        assert r.status == 400
    async with session.post(
        control + "/script", json=[{"endpoint": "v2/filter", "error_after": 0}]
    ) as r:
        assert r.status == 200
    await add(session, fake, {"value": "a"}, {"value": "b", "tag": "bee"})
    await add(session, fake, {"value": "c"}, headers=BETA)
    async with session.get(control + "/v2/rules") as r:
        rules = await r.json()
    assert {k: [x["value"] for x in v] for k, v in rules.items()} == {
        "alpha": ["a", "b"],
        "beta": ["c"],
    }
    async with session.get(fake.api_url + FILTER, headers=ALPHA) as response:
        reader = Reader(response)
        await reader.until(messages=3)
    conn = fake.log[-1].conn
    async with session.get(control + f"/v2/sent/{conn}") as r:
        sent = await r.json()
    assert [s["message"].encode() for s in sent] == reader.messages
    assert [len(s["rules"]) for s in sent] == [0, 2, 1]  # the error object matches nothing
    async with session.get(control + f"/sent/{conn}") as r:
        assert [m.encode() for m in await r.json()] == reader.messages
    async with session.post(control + "/reset") as r:
        assert r.status == 200
    assert fake.rules("alpha") == [] and fake.log == []


async def test_no_secret_is_ever_shown(fake: FakeAPI, session, credentials) -> None:
    await add(session, fake, {"value": "a"})
    await call(session, fake, "GET", FILTER, headers={"Authorization": "Bearer wrong-SECRET"})
    async with session.get(fake.url + "/_fake/log") as r:
        shown = await r.text()
    shown += repr(fake.log) + repr(fake.v2)
    for credential in credentials.values():
        for secret in credential.secrets():
            assert secret not in shown
    assert "wrong-SECRET" not in shown
