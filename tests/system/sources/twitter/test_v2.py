"""Twitter API v2 through the real daemon and socket, against the fake v2 API.

v2 filters on one credential share one connection; each message is stored in the archive of
every stream its `matching_rules` name; rules follow the registry without reconnecting.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfmd.fake import FakeAPI
from sfmd.registry import Registry, validate_stream
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import SfmdProcess, Teardown, running_daemon, start_daemon, stop
from tests.helpers.files import stored_messages
from tests.helpers.logs import log_events
from tests.helpers.waits import wait_until


def v2_filter(name: str, *values: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "filter", "api": "v2",
            "rules": [{"value": v} for v in values], **extra}


def connections(api: FakeAPI, endpoint: str) -> list[Any]:
    return [r for r in api.log if r.endpoint == endpoint and r.status == 200]


def rules_at(api: FakeAPI, credential: str = "alpha") -> dict[str, str]:
    return {r["value"]: r.get("tag", "") for r in api.rules(credential)}


def names_in(message: bytes) -> set[str]:
    """The stream names a message's matching_rules carry in their tags."""
    names: set[str] = set()
    for rule in json.loads(message).get("matching_rules", []):
        names.update(rule.get("tag", "").split(","))
    return names


def registry_bytes(tmp_path: Path) -> bytes:
    return (tmp_path / "state" / "streams.json").read_bytes()


@pytest.fixture
async def daemon(tmp_path: Path, fake_api: FakeAPI) -> AsyncIterator[SfmdProcess]:
    async with running_daemon(tmp_path, fake_api, Teardown.KILL) as proc:
        yield proc


async def until_messages(
    api: Api, names: str, count: int, timeout: float = 20
) -> dict[str, Any]:
    """Poll GET /streams until each named stream has stored `count` messages."""
    deadline = time.monotonic() + timeout
    while True:
        shown = {s["name"]: s for s in (await api.ok("GET", "/streams"))["streams"]}
        if all(shown[n]["status"]["messages"] >= count for n in names):
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {count} messages in {names}: {shown}")
        await asyncio.sleep(0.05)


async def test_filters_share_one_connection_and_rules_follow_the_registry(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess
) -> None:
    fake_api.configure(rate=150, multi_match_every=4)
    async with Api(tmp_path / "sfmd.sock") as api:
        for body in (v2_filter("a", "cats"), v2_filter("b", "dogs"),
                     v2_filter("c", "birds", "fish")):
            created = await api.ok("POST", "/streams", body, status=201)
            assert created["api"] == "v2" and created["rules"] == body["rules"]
        # v1.1's one-stream-per-credential rule stands apart: a v1.1 filter on alpha is fine,
        # and so is a v2 sample; a second v2 sample on alpha is not.
        await api.ok("POST", "/streams", {"name": "old", "kind": "filter", "track": ["x"]},
                     status=201)
        await api.ok("POST", "/streams", {"name": "s1", "kind": "sample", "api": "v2"},
                     status=201)
        status, refused = await api.call("POST", "/streams",
                                         {"name": "s2", "kind": "sample", "api": "v2"})
        assert status == 409 and refused["error"] == "credential_in_use"
        assert "'s1'" in refused["message"]

        assert rules_at(fake_api) == {"cats": "a", "dogs": "b", "birds": "c", "fish": "c"}
        shown = await until_messages(api, "abc", 15)
        connection = shown["a"]["status"]["connection"]
        assert connection["state"] == "streaming" and connection["rules"] == 4

        # Change, remove and add v2 filters while the connection streams.
        await api.ok("PATCH", "/streams/b", {"rules": [{"value": "dogs"}, {"value": "mice"}]})
        assert (await api.call("DELETE", "/streams/c"))[0] == 204
        await api.ok("POST", "/streams", v2_filter("d", "cats", "owls"), status=201)
        assert rules_at(fake_api) == {"cats": "a,d", "dogs": "b", "mice": "b", "owls": "d"}
        await until_messages(api, "d", 15)

        # Stopping a v2 filter takes its rules off the API; the others keep streaming.
        await api.ok("POST", "/streams/b/stop")
        assert rules_at(fake_api) == {"cats": "a,d", "owls": "d"}
    await stop(daemon, timeout=15)

    filters = connections(fake_api, "v2/filter")
    assert len(filters) == 1, "the filtered-stream connection was never dropped"
    sent = [message for message, _ in fake_api.v2_sent(filters[0].conn)]
    assert any(len(names_in(m)) == 2 for m in sent), "some message matched two rules"
    data = tmp_path / "data"
    for name in "abcd":
        expected = [m for m in sent if name in names_in(m)]
        stored = stored_messages(data, name)
        assert len(stored) >= 15
        # In order, nothing lost or added: what the stream stored is what the API sent for
        # it, up to where the stream stopped (its archive closes before its rules go).
        assert stored == expected[: len(stored)], name
    both = {m for m in sent if {"a", "d"} <= names_in(m)}
    in_a, in_d = set(stored_messages(data, "a")), set(stored_messages(data, "d"))
    assert both & in_a & in_d, "a message matching both is stored in both"


async def test_untagged_matches_are_routed_by_rule_id(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess
) -> None:
    fake_api.configure(rate=150, untagged_every=3)
    fake_api.script({"endpoint": "v2/filter", "error_after": 20})  # a non-fatal errors object
    async with Api(tmp_path / "sfmd.sock") as api:
        await api.ok("POST", "/streams", v2_filter("a", "cats"), status=201)
        await api.ok("POST", "/streams", v2_filter("b", "dogs"), status=201)
        ids = {r["tag"]: r["id"] for r in fake_api.rules("alpha")}
        shown = await until_messages(api, "ab", 20)
        assert shown["a"]["status"]["connection"]["errors"] == 1
    await stop(daemon, timeout=15)
    assert len(connections(fake_api, "v2/filter")) == 1
    conn = connections(fake_api, "v2/filter")[0].conn
    for name in "ab":
        expected = [m for m, rule_ids in fake_api.v2_sent(conn) if ids[name] in rule_ids]
        assert any(b'"tag"' not in m for m in expected)
        stored = stored_messages(tmp_path / "data", name)
        assert len(stored) >= 20 and stored == expected[: len(stored)]


@pytest.mark.parametrize("as_http_error", [False, True])
async def test_a_rule_the_api_refuses_is_a_422_and_nothing_changes(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess, as_http_error: bool
) -> None:
    fake_api.configure(rules_errors_as_http=as_http_error)
    async with Api(tmp_path / "sfmd.sock") as api:
        await api.ok("POST", "/streams", v2_filter("a", "cats"), status=201)
        before_registry, before_rules = registry_bytes(tmp_path), fake_api.rules("alpha")

        status, answer = await api.call("POST", "/streams", v2_filter("b", "dogs bogus:x"))
        assert status == 422 and answer["error"] == "invalid", answer
        assert "bogus" in answer["message"] and "invalid operator" in answer["message"]
        status, answer = await api.call(
            "PATCH", "/streams/a", {"rules": [{"value": "cats"}, {"value": "(unbalanced"}]}
        )
        assert status == 422 and "(unbalanced" in answer["message"], answer

        assert registry_bytes(tmp_path) == before_registry
        assert fake_api.rules("alpha") == before_rules
        calls = [r for r in fake_api.log if r.endpoint == "v2/rules" and r.method == "POST"]
        assert calls and all(r.summary and r.summary["dry_run"] for r in calls[-2:])


async def test_refusals_before_the_api_is_asked(
    tmp_path: Path, fake_api: FakeAPI, credentials_file: Path
) -> None:
    with open(credentials_file, "a") as f:
        f.write('\n[gamma]\nconsumer_key = "ck"\nconsumer_secret = "cs"\n'
                'access_token = "at"\naccess_token_secret = "ats"\n'
                '\n[delta]\nbearer_token = "bt"\n')
    os.chmod(credentials_file, 0o600)
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, fake_api))
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            cases = [
                (v2_filter("n", "cats", credential="gamma"), "bearer_token"),
                ({"name": "n", "kind": "sample", "credential": "delta"}, "OAuth 1.0a keys"),
                (v2_filter("n"), "at least one rule"),
                (v2_filter("n", "cats", track=["x"]), "rules"),
                ({"name": "n", "kind": "filter", "track": ["x"], "rules": [{"value": "x"}]},
                 "v2"),
                ({"name": "n", "kind": "sample", "api": "v2", "rules": [{"value": "x"}]},
                 "sample"),
                (v2_filter("n", "cats", isolation="process"), "task"),
                ({**v2_filter("n"), "rules": [{"value": "x", "tag": "mine"}]}, "tag"),
                ({**v2_filter("n"), "rules": ["x"]}, "object"),
            ]
            for body, words in cases:
                status, answer = await api.call("POST", "/streams", body)
                assert status in (400, 422), (body, answer)
                assert words in answer["message"], (body, answer)
            await api.ok("POST", "/streams", v2_filter("a", "cats"), status=201)
            status, answer = await api.call("PATCH", "/streams/a", {"api": "v1.1"})
            assert status == 422 and "fixed" in answer["message"]
        assert rules_at(fake_api) == {"cats": "a"}
        assert [s.name for s in Registry.load(tmp_path / "state").list()] == ["a"]
    finally:
        proc.kill()


FAULTS = [
    {"status": 429},
    {"status": 429, "reset_in": 1},
    {"disconnect_after": 5},
    {"disconnect_after": 5, "disconnect_shape": "type_only"},
    {"cut_after": 5},
    {"stall_after": 5},
    {"oversized_after": 3, "size": 1_200_000},  # the connection goes on: the last fault
]


async def test_the_v2_sample_survives_every_fault_and_stores_what_was_sent(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess
) -> None:
    fake_api.configure(rate=200)
    fake_api.script(*({**fault, "endpoint": "v2/sample"} for fault in FAULTS))
    async with Api(tmp_path / "sfmd.sock") as api:
        await api.ok("POST", "/streams", {"name": "s", "kind": "sample", "api": "v2"},
                     status=201)
        try:
            await wait_until(lambda: not fake_api.pending_faults, timeout=40)
        except AssertionError:
            raise AssertionError(f"faults left: {fake_api.pending_faults}; connections: "
                                 f"{[(r.status, r.close_reason) for r in fake_api.log]}") from None
        attempts = [r for r in fake_api.log if r.endpoint == "v2/sample"]
        assert len(attempts) == len(FAULTS)  # one fault per attempt, the last one goes on
        await wait_until(lambda: attempts[-1].sent_count >= 5, timeout=20)
    await stop(daemon, timeout=15)
    sample = connections(fake_api, "v2/sample")
    sent = [m for record in sample for m, _ in fake_api.v2_sent(record.conn)]
    stored = stored_messages(tmp_path / "data", "s")
    assert any(len(m) >= 1_200_000 for m in stored), "the oversized line was stored"
    assert any(m.startswith(b'{"errors"') for m in stored), "errors objects are stored too"
    # Every connection the server ended gave all it fully sent; the last one, ended by our
    # SIGTERM, a prefix.
    closed_by_server = [m for record in sample[:-1] for m, _ in fake_api.v2_sent(record.conn)]
    assert stored[: len(closed_by_server)] == closed_by_server
    assert stored == sent[: len(stored)]
    log = log_events(tmp_path)
    reasons = [x.get("reason", "") for x in log if x["event"] == "disconnected"]
    assert sum("operational disconnect" in r for r in reasons) == 2
    assert any("HTTP 429" in r for r in reasons)
    assert any(x["event"] == "api_error_message" for x in log)


async def test_foreign_rules_are_reported_and_pruned_only_when_configured(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    async with aiohttp.ClientSession() as session:  # another tool on the same app
        async with session.post(
            f"{fake_api.api_url}/2/tweets/search/stream/rules",
            json={"add": [{"value": "from:someone", "tag": "their-tool"}]},
            headers={"Authorization": "Bearer bt-alpha-SECRET"},
        ) as resp:
            assert resp.status == 201
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, fake_api))
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            await api.ok("POST", "/streams", v2_filter("a", "cats"), status=201)
            shown = await api.ok("GET", "/streams/a")
            foreign = shown["status"]["connection"]["foreign_rules"]
            assert [(r["value"], r["tag"]) for r in foreign] == [("from:someone", "their-tool")]
            metrics = (await api.call("GET", "/metrics"))[1]
            assert 'sfmd_v2_connection_rules{connection="v2-filter@alpha"} 1\n' in metrics
        assert rules_at(fake_api) == {"cats": "a", "from:someone": "their-tool"}
    finally:
        proc.kill()
    config = write_daemon_config(tmp_path, fake_api, twitter={"v2_prune_foreign_rules": True})
    proc = await start_daemon(tmp_path, config)
    try:
        await wait_until(lambda: rules_at(fake_api) == {"cats": "a"}, what="foreign rule pruned")
    finally:
        proc.kill()


FILTER_FAULTS = [
    {"disconnect_after": 8},
    {"status": 429},
    {"cut_after": 8},
    {"stall_after": 8},
    {"disconnect_after": 8, "disconnect_shape": "type_only"},
    {"status": 429, "reset_in": 1},
]


async def test_the_shared_connection_survives_faults_and_routing_loses_nothing(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess
) -> None:
    fake_api.configure(rate=150, multi_match_every=3)
    fake_api.script(*({**fault, "endpoint": "v2/filter"} for fault in FILTER_FAULTS))
    async with Api(tmp_path / "sfmd.sock") as api:
        await api.ok("POST", "/streams", v2_filter("a", "cats"), status=201)
        await api.ok("POST", "/streams", v2_filter("b", "dogs"), status=201)
        await wait_until(lambda: not fake_api.pending_faults, timeout=60)

        def streaming_again() -> bool:
            last = [r for r in fake_api.log if r.endpoint == "v2/filter"][-1]
            return last.status == 200 and last.sent_count >= 8

        await wait_until(streaming_again, timeout=20)
    await stop(daemon, timeout=15)
    attempts = [r for r in fake_api.log if r.endpoint == "v2/filter"]
    sent = [m for record in attempts for m, _ in fake_api.v2_sent(record.conn)]
    closed_by_server = [m for r in attempts[:-1] for m, _ in fake_api.v2_sent(r.conn)]
    for name in "ab":
        stored = stored_messages(tmp_path / "data", name)
        expected = [m for m in sent if name in names_in(m)]
        assert stored == expected[: len(stored)], name
        assert len(stored) >= len([m for m in closed_by_server if name in names_in(m)])


async def test_a_v2_stream_without_a_bearer_token_fails_plainly(
    tmp_path: Path, fake_api: FakeAPI, credentials_file: Path
) -> None:
    with open(credentials_file, "a") as f:
        f.write('\n[gamma]\nconsumer_key = "ck"\nconsumer_secret = "cs"\n'
                'access_token = "at"\naccess_token_secret = "ats"\n')
    registry = Registry.load(tmp_path / "state")
    for body in ({"name": "g", "kind": "sample", "api": "v2", "credential": "gamma"},
                 v2_filter("h", "cats", credential="gamma"),
                 v2_filter("f", "cats", credential="alpha")):
        registry.add(validate_stream(body))
    config = write_daemon_config(tmp_path, fake_api)
    refused = SfmdProcess("stream", "f", "--config", str(config), cwd=tmp_path)
    assert await refused.wait(timeout=15) != 0
    assert "run inside `sfmd run`" in refused.stderr
    proc = await start_daemon(tmp_path, config)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            for name in "gh":
                shown: dict[str, Any] = {}
                for _ in range(200):  # start-up reconciles just after the socket opens
                    shown = (await api.ok("GET", f"/streams/{name}"))["status"]
                    if shown["state"] == "failed":
                        break
                    await asyncio.sleep(0.05)
                assert shown["state"] == "failed" and "bearer_token" in shown["last_error"]
            await wait_until(lambda: bool(connections(fake_api, "v2/filter")))
    finally:
        proc.kill()
