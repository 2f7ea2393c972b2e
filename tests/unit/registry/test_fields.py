"""STREAM settings rules, each with a refusing and an accepting boundary case, and the JSON
schema made from the same table (sfmd.registry.fields)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from sfmd.credentials import Credential
from sfmd.registry import (
    FIELDS,
    MAX_FOLLOW,
    StreamSpec,
    json_schema,
)
from tests.helpers.specs import filt, ids, ok, refused

# --- name, kind, body ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "9lives", "a_b-c", "x" * 64, "news-2024_eu"])
def test_good_names_are_accepted(name: str) -> None:
    assert ok(filt(name=name)).name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 65,
        "../x",
        "a/b",
        "a%b",
        "a\nb",
        "news\n",
        "a#b",
        "a;b",
        "A",
        "News",
        "_a",
        "-a",
        "a b",
        "é",
        "a.b",
        "a:b",
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    error = refused(filt(name=name))
    assert error.field == "name"
    assert error.message.startswith("name ")
    assert "1-64 characters of a-z 0-9 _ -" in error.message


def test_a_name_that_is_not_a_string_is_a_bad_request() -> None:
    assert refused(filt(name=5), "bad_request").field == "name"


@pytest.mark.parametrize("missing", ["name", "kind"])
def test_name_and_kind_are_required(missing: str) -> None:
    data = filt()
    del data[missing]
    assert refused(data).message == f"{missing} is required"


def test_kind_must_be_filter_or_sample() -> None:
    assert '"filter", "sample"' in refused(filt(kind="firehose")).message
    refused(filt(kind=["filter"]), "bad_request")


@pytest.mark.parametrize("body", [[], "x", 5, None])
def test_a_body_that_is_not_an_object_is_a_bad_request(body: object) -> None:
    assert refused(body, "bad_request").field == "body"


def test_an_unknown_field_is_invalid_and_named() -> None:
    error = refused(filt(stall_warnings=True))
    assert error.field == "stall_warnings"
    assert "unknown field 'stall_warnings'" in error.message


# --- filter / sample -------------------------------------------------------------------------


@pytest.mark.parametrize("selector", ["track", "follow", "locations", "people"])
def test_a_filter_with_any_one_selector_is_accepted(selector: str) -> None:
    value = {
        "track": ["a"],
        "follow": ["12"],
        "locations": [[-1, -1, 1, 1]],
        "people": ["jack"],
    }[selector]
    spec = ok({"name": "f", "kind": "filter", selector: value})
    assert getattr(spec, selector)


def test_a_filter_needs_a_selector_and_language_alone_is_not_one() -> None:
    assert (
        "at least one of track, follow, locations, people"
        in refused({"name": "f", "kind": "filter", "language": ["en"], "track": []}).message
    )


@pytest.mark.parametrize(
    "selector",
    [{"track": ["a"]}, {"follow": ["1"]}, {"locations": [[0, 0, 1, 1]]}, {"people": ["a"]}],
)
def test_a_sample_takes_no_selector(selector: dict[str, Any]) -> None:
    error = refused({"name": "s", "kind": "sample", **selector})
    assert error.field == next(iter(selector))
    assert "a sample stream takes none of" in error.message


def test_a_sample_may_have_a_language_and_empty_selectors() -> None:
    spec = ok({"name": "s", "kind": "sample", "track": [], "language": ["en"]})
    assert spec.kind == "sample" and spec.source == "twitter"
    assert spec.wire_params() == {"language": "en"}


# --- track -----------------------------------------------------------------------------------


def test_track_phrase_of_60_bytes_is_accepted_61_refused() -> None:
    assert ok(filt(track=["a" * 60])).track == ("a" * 60,)
    error = refused(filt(track=["ok", "fine", "a" * 61]))
    assert error.field == "track"
    assert error.message.startswith("track: phrase 3 is 61 bytes; each phrase must be 1-60 bytes")


def test_track_counts_utf8_bytes_not_characters() -> None:
    assert ok(filt(track=["é" * 30])).track == ("é" * 30,)  # 60 bytes
    assert "is 62 bytes" in refused(filt(track=["é" * 31])).message
    assert "is 64 bytes" in refused(filt(track=["😀" * 16])).message


def test_track_400_phrases_are_accepted_401_refused() -> None:
    assert len(ok(filt(track=ids(400))).track) == 400
    assert "has 401 phrases; at most 400" in refused(filt(track=ids(401))).message


@pytest.mark.parametrize(
    "phrase", ["", "a,b", ",", "a\tb", "a\nb", "a\rb", "nul\x00", "del\x7f", "c1\x85", " ", "   "]
)
def test_bad_track_phrases_are_refused(phrase: str) -> None:
    error = refused(filt(track=[phrase]))
    assert error.message.startswith("track: phrase 1 ")
    assert "no comma" in error.message


def test_a_lone_surrogate_is_refused_not_crashed_on() -> None:
    assert "not valid Unicode" in refused(filt(track=["\ud800"])).message


@pytest.mark.parametrize("phrase", ["a", "Twitter API", " spaced ", "#hashtag", "@user", "日本"])
def test_good_track_phrases_are_accepted(phrase: str) -> None:
    assert ok(filt(track=[phrase])).track == (phrase,)


@pytest.mark.parametrize("value", ["news", [1], [None], {"a": 1}, None])
def test_track_of_the_wrong_type_is_a_bad_request(value: object) -> None:
    assert refused(filt(track=value), "bad_request").field == "track"


def test_exact_duplicates_are_dropped_keeping_first_order() -> None:
    spec = ok(
        filt(track=["b", "a", "b", "A"], follow=["2", "1", "2"], locations=[[0, 0, 1, 1]] * 2)
    )
    assert spec.track == ("b", "a", "A")
    assert spec.follow == ("2", "1")
    assert spec.locations == ((0.0, 0.0, 1.0, 1.0),)


# --- follow ----------------------------------------------------------------------------------


def test_follow_5000_ids_are_accepted_5001_refused() -> None:
    assert len(ok(filt(follow=ids(5000))).follow) == 5000
    assert "has 5001 ids; at most 5000" in refused(filt(follow=ids(5001))).message


@pytest.mark.parametrize("bad", ["0", "012", "12a", "", " 12", "-5", "1.5", "1" * 21, "١٢"])
def test_bad_follow_ids_are_refused(bad: str) -> None:
    assert refused(filt(follow=["7", bad])).message.startswith("follow: id 2 ")


def test_follow_ids_up_to_20_digits_are_accepted() -> None:
    big = "18446744073709551615"
    assert ok(filt(follow=[big, "1"])).follow == (big, "1")


def test_a_follow_id_sent_as_a_json_number_is_a_bad_request_with_a_hint() -> None:
    error = refused(filt(follow=[12]), "bad_request")
    assert error.field == "follow"
    assert "send ids as strings" in error.message
    refused(filt(follow=[True]), "bad_request")


# --- locations -------------------------------------------------------------------------------


def test_locations_25_boxes_are_accepted_26_refused() -> None:
    boxes = [[-180 + i, -90, -179 + i, 90] for i in range(26)]
    assert len(ok(filt(locations=boxes[:25])).locations) == 25
    assert "has 26 boxes; at most 25" in refused(filt(locations=boxes)).message


def test_boxes_at_the_edges_of_the_world_are_accepted() -> None:
    spec = ok(filt(locations=[[-180, -90, 180, 90], [-122.75, 36.8, -121.75, 37.8]]))
    assert spec.locations[0] == (-180.0, -90.0, 180.0, 90.0)


@pytest.mark.parametrize(
    ("box", "words"),
    [
        ([-180.0001, 0, 1, 1], "west is -180.0001"),
        ([0, 0, 180.5, 1], "east is 180.5"),
        ([0, -90.5, 1, 1], "south is -90.5"),
        ([0, 0, 1, 91], "north is 91"),
        ([1, 0, 1, 1], "has west not less than east"),
        ([2, 0, 1, 1], "has west not less than east"),
        ([0, 1, 1, 1], "has south not less than north"),
        ([0, 0, 1], "has 3 numbers"),
        ([0, 0, 1, 1, 2], "has 5 numbers"),
        ([float("nan"), 0, 1, 1], "west is nan"),
        ([0, 0, float("inf"), 1], "east is inf"),
    ],
)
def test_bad_boxes_are_refused(box: list[float], words: str) -> None:
    error = refused(filt(locations=[[0, 0, 1, 1], box]))
    assert error.message.startswith("locations: box 2 ")
    assert words in error.message


@pytest.mark.parametrize("box", [[True, 0, 1, 1], ["0", 0, 1, 1], [None, 0, 1, 1], "0,0,1,1", 5])
def test_a_box_of_the_wrong_type_is_a_bad_request(box: object) -> None:
    assert refused(filt(locations=[box]), "bad_request").field == "locations"


# --- people, language ------------------------------------------------------------------------


def test_people_100_are_accepted_101_refused() -> None:
    names = [f"user{i}" for i in range(101)]
    assert len(ok(filt(people=names[:100])).people) == 100
    assert "has 101 screen names; at most 100" in refused(filt(people=names)).message


@pytest.mark.parametrize("bad", ["", "x" * 16, "@", "@@jack", "@" + "x" * 16, "a-b", "a b", "é"])
def test_bad_screen_names_are_refused(bad: str) -> None:
    assert refused(filt(people=[bad])).message.startswith("people: screen name 1 ")


def test_a_leading_at_is_dropped_as_people_write_screen_names() -> None:
    assert ok(filt(people=["@jack", "jack", "@Abc_123456789_x"])).people == (
        "jack", "Abc_123456789_x")  # the same person once

def test_a_15_character_screen_name_is_accepted() -> None:
    assert ok(filt(people=["Abc_123456789_x"])).people == ("Abc_123456789_x",)


def test_follow_plus_people_must_fit_in_follows_limit() -> None:
    ok(filt(follow=ids(4900), people=[f"u{i}" for i in range(100)]))
    error = refused(filt(follow=ids(4901), people=[f"u{i}" for i in range(100)]))
    assert f"must not exceed {MAX_FOLLOW}" in error.message


@pytest.mark.parametrize("code", ["en", "pt-BR", "zh-Hant-TW", "und", "zh-cn"])
def test_good_language_codes_are_accepted(code: str) -> None:
    assert ok(filt(language=[code])).language == (code,)


@pytest.mark.parametrize(
    "bad", ["", "e", "english", "abcdefgh", "en_US", "en-", "1en", "en-toolongtag"]
)
def test_bad_language_codes_are_refused(bad: str) -> None:
    assert refused(filt(language=[bad])).message.startswith("language: code 1 ")


def test_language_100_codes_are_accepted_101_refused() -> None:
    codes = [f"l{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(101)]
    assert len(ok(filt(language=codes[:100])).language) == 100
    assert "at most 100" in refused(filt(language=codes)).message


# --- credential, active, isolation -----------------------------------------------------------


def test_a_stream_without_credential_gets_the_default_filter_and_sample_alike() -> None:
    assert ok(filt()).credential == "default"
    assert ok({"name": "s", "kind": "sample"}, default_credential="research").credential == (
        "research"
    )


def test_without_credential_or_default_the_credential_is_required() -> None:
    error = refused(filt(), default_credential=None)
    assert error.field == "credential"
    assert "credential is required" in error.message


def test_an_unknown_credential_is_refused_naming_only_names() -> None:
    creds = {
        "a": Credential("a", "ck-SECRET", "cs-SECRET", "at-SECRET", "ats-SECRET"),
        "b": Credential("b", "ck2-SECRET", "cs2-SECRET", "at2-SECRET", "ats2-SECRET"),
    }
    error = refused(filt(credential="x"), credentials=creds)
    assert error.message.startswith(
        "credential 'x' is not in the credentials file; known: a, b (just added it? run "
        "`sfmctl reload`")
    assert "SECRET" not in error.message
    assert ok(filt(credential="b"), credentials=creds).credential == "b"


def test_a_credential_is_not_checked_when_no_credentials_are_given() -> None:
    assert ok(filt(credential="anything"), credentials=None).credential == "anything"


@pytest.mark.parametrize(
    ("value", "code"),
    [("", "invalid"), ("x" * 65, "invalid"), ("a\nb", "invalid"), (5, "bad_request")],
)
def test_bad_credential_names_are_refused(value: object, code: str) -> None:
    assert refused(filt(credential=value), code, credentials=None).field == "credential"


def test_a_64_character_credential_name_is_accepted() -> None:
    assert ok(filt(credential="c" * 64), credentials=None).credential == "c" * 64


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_active_must_be_a_json_boolean(value: object) -> None:
    assert refused(filt(active=value), "bad_request").field == "active"


def test_active_and_isolation_defaults_and_choices() -> None:
    spec = ok(filt())
    assert (spec.active, spec.isolation) == (True, "task")
    assert ok(filt(active=False, isolation="process")).isolation == "process"
    assert refused(filt(isolation="thread")).field == "isolation"


# --- the schema ------------------------------------------------------------------------------


def test_the_json_schema_comes_from_the_same_table() -> None:
    schema = json_schema()
    json.dumps(schema)
    assert (
        list(schema["properties"])
        == list(FIELDS)
        == [f.name for f in dataclasses.fields(StreamSpec) if f.name != "people_ids"]
    )
    assert schema["required"] == ["name", "kind"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["track"]["maxItems"] == 400
    assert props["track"]["items"]["maxLength"] == 60
    assert props["follow"]["maxItems"] == 5000
    assert props["locations"]["maxItems"] == 25
    assert props["people"]["maxItems"] == 100
    assert props["kind"]["enum"] == ["filter", "sample", "jetstream", "public", "public:local",
                                     "public:remote", "hashtag", "hashtag:local", "list", "user"]
    assert props["isolation"]["default"] == "task"
    assert "1-60 bytes" in props["track"]["description"]
    patch = json_schema(for_patch=True)
    assert "required" not in patch
    assert patch["properties"] == props


