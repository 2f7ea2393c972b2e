"""The control API through the real socket of a real `sfmd run`, watched from the fake API."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sfmd.credentials import Credential
from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.daemon import SfmdProcess, Teardown, running_daemon
from tests.helpers.fakeapi import live, stream_connections
from tests.helpers.files import manifest
from tests.helpers.logs import log_events, log_text
from tests.helpers.waits import wait_until


@pytest.fixture
async def daemon(tmp_path: Path, fake_api: FakeAPI) -> AsyncIterator[SfmdProcess]:
    fake_api.configure(rate=20)
    async with running_daemon(tmp_path, fake_api, Teardown.STOP_IF_RUNNING) as proc:
        yield proc


F1 = {"name": "f1", "kind": "filter", "track": ["archive"], "credential": "alpha"}


async def test_a_stream_s_whole_life_through_the_api(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess
) -> None:
    async with Api(tmp_path / "sfmd.sock") as api:
        created = await api.ok("POST", "/streams", F1, status=201)
        assert created["name"] == "f1" and created["active"] is True
        assert created["status"]["state"] in ("connecting", "streaming")
        await wait_until(lambda: len(live(fake_api)) == 1)
        assert stream_connections(fake_api)[0].params["track"] == "archive"

        shown = await api.ok("GET", "/streams/f1")
        assert {"people_ids", "people_unresolved", "status"} <= shown.keys()
        listed = await api.ok("GET", "/streams")
        assert [s["name"] for s in listed["streams"]] == ["f1"]
        health = await api.ok("GET", "/health")
        assert health["status"] == "ok" and health["streams"] == 1 and health["uptime"] > 0

        # A no-op PATCH and a PATCH that changes nothing Twitter sees: no reconnect.
        await api.ok("PATCH", "/streams/f1", {"track": ["archive"]})
        await api.ok("PATCH", "/streams/f1", {})
        # A PATCH that changes track: one new connection with the new parameters.
        patched = await api.ok("PATCH", "/streams/f1", {"track": ["archive", "library"]})
        assert patched["track"] == ["archive", "library"]
        await wait_until(lambda: len(stream_connections(fake_api)) == 2
                         and len(live(fake_api)) == 1)
        assert stream_connections(fake_api)[1].params["track"] == "archive,library"
        assert stream_connections(fake_api)[0].closed is not None

        await wait_until(lambda: fake_api.log[-1].sent_count > 0)
        stopped = await api.ok("POST", "/streams/f1/stop")
        assert stopped["active"] is False and stopped["status"]["state"] == "stopped"
        assert not live(fake_api)
        data = tmp_path / "data"
        assert manifest(data, "f1")  # the open file was published at the stop
        assert not list(data.rglob("*.part"))

        started = await api.ok("POST", "/streams/f1/start")
        assert started["active"] is True
        await wait_until(lambda: len(live(fake_api)) == 1)
        assert len(stream_connections(fake_api)) == 3

        status, body = await api.call("DELETE", "/streams/f1")
        assert status == 204 and body == ""
        await wait_until(lambda: not live(fake_api))
        assert manifest(data, "f1")  # published files stay
        assert (await api.ok("GET", "/streams"))["streams"] == []

    log_lines = log_events(tmp_path)
    changes = [x for x in log_lines if x["event"] == "api_change"]
    assert [c["method"] for c in changes] == [
        "POST", "PATCH", "PATCH", "PATCH", "POST", "POST", "DELETE"]
    assert all(isinstance(c["uid"], int) for c in changes)
    states = [x for x in log_lines if x["event"] == "stream_state"]
    assert any(x.get("reason") == "its filter settings changed" for x in states)
    # The track change reconnected without stopping the runner (its open file stayed open):
    # only the stop and the delete closed an archive.
    stops = [x["reason"] for x in states if x.get("state") == "stopping"]
    assert stops == ["stopped in the registry", "stopped in the registry"]


async def test_people_are_resolved_and_unknown_names_reported(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess
) -> None:
    async with Api(tmp_path / "sfmd.sock") as api:
        body = {"name": "p1", "kind": "filter", "people": ["Alice", "nosuchperson"],
                "follow": ["42"]}
        created = await api.ok("POST", "/streams", body, status=201)
    assert set(created["people_ids"]) == {"Alice"}
    assert created["people_unresolved"] == ["nosuchperson"]
    await wait_until(lambda: len(live(fake_api)) == 1)
    lookup = [r for r in fake_api.log if r.endpoint == "users/lookup"]
    assert lookup and lookup[0].auth_ok and lookup[0].credential == "alpha"
    follow = stream_connections(fake_api)[0].params["follow"].split(",")
    assert follow == ["42", created["people_ids"]["Alice"]]


async def test_two_streams_on_one_credential_409_and_never_two_connections(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess
) -> None:
    async with Api(tmp_path / "sfmd.sock") as api:
        await api.ok("POST", "/streams", F1, status=201)
        status, body = await api.call(
            "POST", "/streams", {"name": "s1", "kind": "sample", "credential": "alpha"})
        assert status == 409 and body["error"] == "credential_in_use"
        assert "'f1'" in body["message"]
        # Inactive is fine; starting it while f1 holds the credential is not.
        await api.ok("POST", "/streams", {"name": "s1", "kind": "sample", "credential": "alpha",
                                          "active": False}, status=201)
        status, body = await api.call("POST", "/streams/s1/start")
        assert status == 409 and body["error"] == "credential_in_use"
        # Hand the credential over: stop f1, start s1.
        await api.ok("POST", "/streams/f1/stop")
        await api.ok("POST", "/streams/s1/start")
        await wait_until(lambda: len(live(fake_api)) == 1
                         and live(fake_api)[0].endpoint == "sample")
    connections = stream_connections(fake_api)
    for a, b in itertools.pairwise(connections):
        assert a.closed is not None and a.closed <= b.opened  # never two at once
    assert not any(r.close_reason == "replaced" for r in fake_api.log)


BIG = "x" * (1024 * 1024)
MANY_TRACK = [f"t{i}" for i in range(401)]
MANY_FOLLOW = [str(i) for i in range(1, 5002)]
MANY_BOXES = [[-1.0, -1.0, 1.0, 1.0]] * 26

# (id, method, path, body, raw bytes, content type, expected status, expected error code)
BAD: list[tuple[str, str, str, Any, bytes | None, str | None, int, str]] = [
    ("not_json", "POST", "/streams", None, b"{not json", "application/json", 400, "bad_request"),
    ("empty_body", "POST", "/streams", None, b"", "application/json", 400, "bad_request"),
    ("array_body", "POST", "/streams", [], None, "application/json", 400, "bad_request"),
    ("text_plain", "POST", "/streams", F1, None, "text/plain", 415, "unsupported_media_type"),
    ("form", "POST", "/streams", None, b"name=x", "application/x-www-form-urlencoded", 415,
     "unsupported_media_type"),
    ("too_large", "POST", "/streams", {"name": "big", "kind": "filter", "track": [BIG]}, None,
     "application/json", 413, "too_large"),
    ("name_taken", "POST", "/streams", F1, None, "application/json", 409, "name_taken"),
    ("credential_busy", "POST", "/streams", {"name": "x2", "kind": "sample",
     "credential": "alpha"}, None, "application/json", 409, "credential_in_use"),
    ("name_traversal", "POST", "/streams", {**F1, "name": "../x"}, None, "application/json",
     422, "invalid"),
    ("name_percent", "POST", "/streams", {**F1, "name": "a%b"}, None, "application/json", 422,
     "invalid"),
    ("name_newline", "POST", "/streams", {**F1, "name": "a\nb"}, None, "application/json", 422,
     "invalid"),
    ("name_hash", "POST", "/streams", {**F1, "name": "#a"}, None, "application/json", 422,
     "invalid"),
    ("name_semicolon", "POST", "/streams", {**F1, "name": "a;b"}, None, "application/json",
     422, "invalid"),
    ("name_upper", "POST", "/streams", {**F1, "name": "Abc"}, None, "application/json", 422,
     "invalid"),
    ("name_long", "POST", "/streams", {**F1, "name": "a" * 65}, None, "application/json", 422,
     "invalid"),
    ("name_missing", "POST", "/streams", {"kind": "sample"}, None, "application/json", 422,
     "invalid"),
    ("name_number", "POST", "/streams", {**F1, "name": 5}, None, "application/json", 400,
     "bad_request"),
    ("kind_unknown", "POST", "/streams", {**F1, "kind": "firehose"}, None, "application/json",
     422, "invalid"),
    ("filter_empty", "POST", "/streams", {"name": "e", "kind": "filter", "credential": "beta"},
     None, "application/json", 422, "invalid"),
    ("sample_with_track", "POST", "/streams", {"name": "e", "kind": "sample", "track": ["a"],
     "credential": "beta"}, None, "application/json", 422, "invalid"),
    ("track_401", "POST", "/streams", {**F1, "name": "e", "track": MANY_TRACK}, None,
     "application/json", 422, "invalid"),
    ("track_61_bytes", "POST", "/streams", {**F1, "name": "e", "track": ["y" * 61]}, None,
     "application/json", 422, "invalid"),
    ("track_comma", "POST", "/streams", {**F1, "name": "e", "track": ["a,b"]}, None,
     "application/json", 422, "invalid"),
    ("track_string", "POST", "/streams", {**F1, "name": "e", "track": "a"}, None,
     "application/json", 400, "bad_request"),
    ("follow_5001", "POST", "/streams", {**F1, "name": "e", "follow": MANY_FOLLOW}, None,
     "application/json", 422, "invalid"),
    ("follow_int", "POST", "/streams", {**F1, "name": "e", "follow": [12]}, None,
     "application/json", 400, "bad_request"),
    ("follow_letters", "POST", "/streams", {**F1, "name": "e", "follow": ["12a"]}, None,
     "application/json", 422, "invalid"),
    ("boxes_26", "POST", "/streams", {**F1, "name": "e", "locations": MANY_BOXES}, None,
     "application/json", 422, "invalid"),
    ("box_longitude", "POST", "/streams", {**F1, "name": "e", "locations": [[-200, 0, 0, 1]]},
     None, "application/json", 422, "invalid"),
    ("box_west_east", "POST", "/streams", {**F1, "name": "e", "locations": [[10, 0, 5, 1]]},
     None, "application/json", 422, "invalid"),
    ("box_south_north", "POST", "/streams", {**F1, "name": "e", "locations": [[0, 5, 1, 1]]},
     None, "application/json", 422, "invalid"),
    ("box_three", "POST", "/streams", {**F1, "name": "e", "locations": [[0, 0, 1]]}, None,
     "application/json", 422, "invalid"),
    ("credential_unknown", "POST", "/streams", {**F1, "name": "e", "credential": "nope"}, None,
     "application/json", 422, "invalid"),
    ("unknown_field", "POST", "/streams", {**F1, "name": "e", "colour": "red"}, None,
     "application/json", 422, "invalid"),
    ("active_string", "POST", "/streams", {**F1, "name": "e", "active": "yes"}, None,
     "application/json", 400, "bad_request"),
    ("isolation_thread", "POST", "/streams", {**F1, "name": "e", "isolation": "thread"}, None,
     "application/json", 422, "invalid"),
    ("language_bad", "POST", "/streams", {**F1, "name": "e", "language": ["e"]}, None,
     "application/json", 422, "invalid"),
    ("people_bad", "POST", "/streams", {**F1, "name": "e", "people": ["bad name!"]}, None,
     "application/json", 422, "invalid"),
    ("patch_name", "PATCH", "/streams/f1", {"name": "g"}, None, "application/json", 422,
     "invalid"),
    ("patch_kind", "PATCH", "/streams/f1", {"kind": "sample"}, None, "application/json", 422,
     "invalid"),
    ("patch_unknown_field", "PATCH", "/streams/f1", {"speed": 1}, None, "application/json",
     422, "invalid"),
    ("patch_credential_unknown", "PATCH", "/streams/f1", {"credential": "nope"}, None,
     "application/json", 422, "invalid"),
    ("patch_text_plain", "PATCH", "/streams/f1", {"track": ["z"]}, None, "text/plain", 415,
     "unsupported_media_type"),
    ("patch_missing", "PATCH", "/streams/nope", {"track": ["z"]}, None, "application/json",
     404, "not_found"),
    ("patch_empties_filter", "PATCH", "/streams/f1", {"track": []}, None, "application/json",
     422, "invalid"),
    ("start_busy", "POST", "/streams/s1/start", None, None, None, 409, "credential_in_use"),
    ("show_missing", "GET", "/streams/nope", None, None, None, 404, "not_found"),
    ("delete_missing", "DELETE", "/streams/nope", None, None, None, 404, "not_found"),
    ("start_missing", "POST", "/streams/nope/start", None, None, None, 404, "not_found"),
    ("unknown_path", "GET", "/nope", None, None, None, 404, "not_found"),
    ("wrong_method", "PUT", "/streams", None, None, None, 405, "method_not_allowed"),
]


async def test_bad_requests_are_refused_plainly_and_change_nothing(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess, credentials: dict[str, Credential]
) -> None:
    async with Api(tmp_path / "sfmd.sock") as api:
        await api.ok("POST", "/streams", F1, status=201)
        await api.ok("POST", "/streams", {"name": "s1", "kind": "sample", "credential": "alpha",
                                          "active": False}, status=201)
        await wait_until(lambda: len(live(fake_api)) == 1)
        registry_file = tmp_path / "state" / "streams.json"
        before = registry_file.read_bytes()
        for case, method, path, body, raw, ctype, status, code in BAD:
            got, answer = await api.call(method, path, body, raw=raw, content_type=ctype)
            assert (got, answer.get("error") if isinstance(answer, dict) else answer) == (
                status, code), (case, got, answer)
            assert isinstance(answer["message"], str) and len(answer["message"]) > 10, case
            assert registry_file.read_bytes() == before, f"{case} changed the registry"
        assert len(BAD) >= 30
        listed = await api.ok("GET", "/streams")
    assert [s["name"] for s in listed["streams"]] == ["f1", "s1"]
    assert len(stream_connections(fake_api)) == 1  # nothing reconnected
    everything = json.dumps(listed) + log_text(tmp_path)
    for credential in credentials.values():
        assert not any(secret in everything for secret in credential.secrets())


async def test_metrics_and_openapi(
    tmp_path: Path, fake_api: FakeAPI, daemon: SfmdProcess
) -> None:
    async with Api(tmp_path / "sfmd.sock") as api:
        await api.ok("POST", "/streams", F1, status=201)
        await wait_until(lambda: fake_api.log and fake_api.log[-1].sent_count >= 3)
        await wait_until(lambda: True)
        status, text = await api.call("GET", "/metrics")
        assert status == 200
        for metric in ("sfmd_stream_messages_total{stream=\"f1\"}",
                       "sfmd_stream_state{state=\"streaming\",stream=\"f1\"} 1\n",
                       "sfmd_uptime_seconds", "sfmd_build_info{version=",
                       "sfmd_stream_limit_undelivered", "sfmd_stream_files_published_total"):
            assert metric in text, metric
        doc = await api.ok("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")
    settings = doc["components"]["schemas"]["StreamSettings"]
    assert settings["properties"]["track"]["maxItems"] == 400
    assert set(doc["paths"]) >= {"/health", "/streams", "/streams/{name}",
                                 "/streams/{name}/start", "/streams/{name}/stop",
                                 "/metrics", "/openapi.json"}
