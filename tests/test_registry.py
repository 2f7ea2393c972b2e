"""STREAM settings rules, each with a refusing and an accepting boundary case; the registry file."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfmd.credentials import Credential
from sfmd.registry import (
    FIELDS,
    MAX_FOLLOW,
    Registry,
    RegistryError,
    StreamSpec,
    ValidationError,
    apply_patch,
    json_schema,
    validate_stream,
    with_people_ids,
)

CREDS = ["default", "research"]


def filt(**extra: Any) -> dict[str, Any]:
    return {"name": "news", "kind": "filter", "track": ["news"], **extra}


def ok(data: dict[str, Any], **kwargs: Any) -> StreamSpec:
    kwargs.setdefault("credentials", CREDS)
    kwargs.setdefault("default_credential", "default")
    return validate_stream(data, **kwargs)


def refused(data: object, code: str = "invalid", **kwargs: Any) -> ValidationError:
    kwargs.setdefault("credentials", CREDS)
    kwargs.setdefault("default_credential", "default")
    with pytest.raises(ValidationError) as caught:
        validate_stream(data, **kwargs)
    assert caught.value.code == code, caught.value.message
    assert str(caught.value) == caught.value.message
    return caught.value


def ids(n: int, start: int = 1) -> list[str]:
    return [str(i) for i in range(start, start + n)]


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
    assert spec.kind == spec.endpoint == "sample"
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


@pytest.mark.parametrize("bad", ["", "x" * 16, "@jack", "a-b", "a b", "é"])
def test_bad_screen_names_are_refused(bad: str) -> None:
    assert refused(filt(people=[bad])).message.startswith("people: screen name 1 ")


def test_a_15_character_screen_name_is_accepted() -> None:
    assert ok(filt(people=["Abc_123456789_x"])).people == ("Abc_123456789_x",)


def test_follow_plus_people_must_fit_in_follows_limit() -> None:
    ok(filt(follow=ids(4900), people=[f"u{i}" for i in range(100)]))
    error = refused(filt(follow=ids(4901), people=[f"u{i}" for i in range(100)]))
    assert f"must not exceed {MAX_FOLLOW}" in error.message


@pytest.mark.parametrize("code", ["en", "pt-BR", "zh-Hant-TW", "und", "abcdefgh"])
def test_good_language_codes_are_accepted(code: str) -> None:
    assert ok(filt(language=[code])).language == (code,)


@pytest.mark.parametrize("bad", ["", "e", "abcdefghi", "en_US", "en-", "1en", "en-toolongtag"])
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
    assert error.message == "credential 'x' is not in the credentials file; known: a, b"
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


# --- the JSON form and the wire --------------------------------------------------------------


def test_to_dict_holds_every_field_as_json_lists() -> None:
    spec = ok(filt(locations=[[-122.75, 36.8, -121.75, 37.8]], people=["jack"]))
    assert spec.to_dict() == {
        "name": "news",
        "kind": "filter",
        "track": ["news"],
        "follow": [],
        "locations": [[-122.75, 36.8, -121.75, 37.8]],
        "people": ["jack"],
        "language": [],
        "credential": "default",
        "active": True,
        "isolation": "task",
        "api": "v1.1",
        "rules": [],
    }
    assert list(spec.to_dict()) == list(FIELDS)


def test_wire_params_join_lists_and_omit_empty_ones() -> None:
    spec = ok(
        filt(
            track=["climate change", "#cop28"],
            follow=["12", "783214"],
            locations=[[-122.75, 36.8, -121.75, 37.8], [-74, 40, -73, 41]],
            people=["jack"],
            language=["en", "fr"],
        )
    )
    assert spec.wire_params() == {
        "track": "climate change,#cop28",
        "follow": "12,783214",
        "locations": "-122.75,36.8,-121.75,37.8,-74,40,-73,41",
        "language": "en,fr",
    }
    only_track = ok(filt()).wire_params()
    assert only_track == {"track": "news"}
    assert "stall_warnings" not in only_track


def test_tiny_coordinates_never_use_exponent_notation() -> None:
    spec = ok(filt(track=[], locations=[[0.00001, -0.00002, 1, 1]]))
    assert spec.wire_params() == {"locations": "0.00001,-0.00002,1,1"}


def test_the_connection_key_ignores_what_does_not_reach_twitter() -> None:
    spec = ok(filt())
    same = dataclasses.replace(spec, active=False, isolation="process")
    assert same.connection_key() == spec.connection_key()
    for changed in (
        dataclasses.replace(spec, track=("other",)),
        dataclasses.replace(spec, credential="research"),
        dataclasses.replace(spec, people=("jack",)),
        dataclasses.replace(spec, language=("en",)),
    ):
        assert changed.connection_key() != spec.connection_key()


def _phrases() -> st.SearchStrategy[str]:
    alphabet = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=",")
    return st.text(alphabet, min_size=1, max_size=20).filter(lambda s: s.strip())


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    lon = st.floats(-180, 180)
    lat = st.floats(-90, 90)
    kind = draw(st.sampled_from(["filter", "sample"]))
    body: dict[str, Any] = {
        "name": draw(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)),
        "kind": kind,
        "credential": draw(st.sampled_from(CREDS)),
        "active": draw(st.booleans()),
        "isolation": draw(st.sampled_from(["task", "process"])),
        "language": draw(st.lists(st.sampled_from(["en", "fr", "pt-BR"]), max_size=3)),
    }
    if kind == "filter":
        body["track"] = draw(st.lists(_phrases(), min_size=1, max_size=5))
        body["follow"] = draw(st.lists(st.integers(1, 2**64 - 1).map(str), max_size=5))
        boxes = st.tuples(lon, lat, lon, lat).filter(lambda b: b[0] < b[2] and b[1] < b[3])
        body["locations"] = [list(b) for b in draw(st.lists(boxes, max_size=3))]
        body["people"] = draw(st.lists(st.from_regex(r"[A-Za-z0-9_]{1,15}", fullmatch=True)))
    return body


@settings(max_examples=60, deadline=None)
@given(_bodies())
def test_to_dict_round_trips_through_json_and_validation(body: dict[str, Any]) -> None:
    spec = ok(body)
    again = ok(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.to_dict() == spec.to_dict()


# --- PATCH -----------------------------------------------------------------------------------


def test_a_patch_changes_only_what_it_names() -> None:
    spec = ok(filt(language=["en"], credential="research"))
    patched = apply_patch(spec, {"track": ["other"], "active": False}, credentials=CREDS)
    assert patched == dataclasses.replace(spec, track=("other",), active=False)


@pytest.mark.parametrize("field", ["name", "kind"])
def test_name_and_kind_are_fixed_once_created(field: str) -> None:
    spec = ok(filt())
    with pytest.raises(ValidationError) as caught:
        apply_patch(spec, {field: "sample" if field == "kind" else "renamed"})
    assert caught.value.code == "invalid"
    assert caught.value.field == field
    assert f"{field} is fixed once created" in caught.value.message
    assert apply_patch(spec, {field: getattr(spec, field)}) == spec  # unchanged is fine


@pytest.mark.parametrize(
    ("patch", "code", "field"),
    [
        ({"colour": "red"}, "invalid", "colour"),
        ({"track": []}, "invalid", "kind"),  # a filter left with no selector
        ({"track": None}, "bad_request", "track"),
        ({"credential": "nobody"}, "invalid", "credential"),
        ({"follow": [5]}, "bad_request", "follow"),
        ([], "bad_request", "body"),
        ("track=x", "bad_request", "body"),
    ],
)
def test_bad_patches_are_refused(patch: object, code: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        apply_patch(ok(filt()), patch, credentials=CREDS)
    assert (caught.value.code, caught.value.field) == (code, field)


def test_a_patch_not_naming_the_credential_does_not_recheck_it() -> None:
    spec = ok(filt(credential="gone"), credentials=None)
    assert apply_patch(spec, {"active": False}, credentials=CREDS).active is False


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
    assert props["kind"]["enum"] == ["filter", "sample"]
    assert props["isolation"]["default"] == "task"
    assert "1-60 bytes" in props["track"]["description"]
    patch = json_schema(for_patch=True)
    assert "required" not in patch
    assert patch["properties"] == props


# --- the registry file -----------------------------------------------------------------------


def spec_of(name: str, credential: str = "default", active: bool = True) -> StreamSpec:
    return ok(filt(name=name, credential=credential, active=active))


def test_a_missing_file_is_an_empty_registry(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path / "state")
    assert registry.list() == []
    assert registry.path == tmp_path / "state" / "streams.json"
    assert not registry.path.exists()


def test_changes_are_on_disk_before_returning_and_load_back(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path / "new" / "state")  # folders made on first write
    registry.add(spec_of("zeta", "default"))
    registry.add(spec_of("alpha", "research"))
    document = json.loads(registry.path.read_text())
    assert document["version"] == 1
    assert [s["name"] for s in document["streams"]] == ["alpha", "zeta"]
    assert document["streams"][0] == registry.get("alpha").to_record()

    registry.replace(dataclasses.replace(registry.get("zeta"), track=("changed",)))
    registry.remove("alpha")
    again = Registry.load(registry.path.parent, credentials=CREDS)
    assert (
        again.list()
        == registry.list()
        == [dataclasses.replace(spec_of("zeta"), track=("changed",))]
    )
    assert os.listdir(registry.path.parent) == ["streams.json"]  # no temp file left


def test_get_replace_remove_of_an_unknown_name_raise_key_error(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path)
    with pytest.raises(KeyError):
        registry.get("nope")
    with pytest.raises(KeyError):
        registry.replace(spec_of("nope"))
    with pytest.raises(KeyError):
        registry.remove("nope")
    assert not registry.path.exists()


def test_adding_a_taken_name_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("news"))
    before = registry.path.read_bytes()
    with pytest.raises(ValidationError) as caught:
        registry.add(spec_of("news", "research"))
    assert caught.value.code == "name_taken"
    assert registry.path.read_bytes() == before
    assert registry.get("news").credential == "default"


def test_one_active_stream_per_credential_is_checked_on_request(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("first"))
    with pytest.raises(ValidationError) as caught:
        registry.check_credential_free(spec_of("second"))
    assert caught.value.code == "credential_in_use"
    assert caught.value.field == "credential"
    assert "in use by active stream 'first'" in caught.value.message

    registry.check_credential_free(spec_of("second", active=False))  # inactive may share it
    registry.check_credential_free(spec_of("second", "research"))
    registry.check_credential_free(dataclasses.replace(registry.get("first"), track=("x",)))
    registry.add(spec_of("second", active=False))
    registry.replace(dataclasses.replace(registry.get("first"), active=False))
    registry.check_credential_free(dataclasses.replace(registry.get("second"), active=True))
    assert registry.holder_of(registry.get("first")) is None


def test_the_registry_stores_a_conflict_it_is_given(tmp_path: Path) -> None:
    """The credential locks hold the rule at run time; the registry does not second-guess."""
    registry = Registry.load(tmp_path)
    registry.add(spec_of("first"))
    registry.add(spec_of("second"))
    assert [s.name for s in Registry.load(tmp_path).list()] == ["first", "second"]


def _failing(*args: object, **kwargs: object) -> None:
    raise OSError(5, "Input/output error (simulated)")


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_memory_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("keep"))
    before_file = registry.path.read_bytes()
    before_memory = registry.list()

    if step == "write":
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, f: Any) -> None:
                self.f = f

            def __enter__(self) -> Full:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> None:
                self.f.write(data[: len(data) // 2])
                raise OSError(28, "No space left on device (simulated)")

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, step, _failing)

    with pytest.raises(OSError, match="simulated"):
        registry.add(spec_of("lost", "research"))
    with pytest.raises(OSError, match="simulated"):
        registry.remove("keep")
    monkeypatch.undo()

    assert registry.path.read_bytes() == before_file
    assert registry.list() == before_memory
    assert os.listdir(tmp_path) == ["streams.json"]  # the temp file was cleaned up
    assert Registry.load(tmp_path).list() == before_memory


def test_a_failed_folder_sync_propagates_and_leaves_memory_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("keep"))
    real_fsync = os.fsync

    def fsync_files_only(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(5, "Input/output error (simulated)")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_files_only)
    with pytest.raises(OSError, match="simulated"):
        registry.add(spec_of("maybe", "research"))
    assert [s.name for s in registry.list()] == ["keep"]


def test_a_reader_always_sees_a_whole_file_while_a_writer_rewrites_it(tmp_path: Path) -> None:
    writer = Registry.load(tmp_path)
    writer.add(spec_of("base"))
    errors: list[Exception] = []
    reads = 0
    done = threading.Event()

    def read_until_done() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                json.loads(writer.path.read_bytes())
                reads += 1
            except Exception as e:  # any failure is the finding
                errors.append(e)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for i in range(30):  # big enough files that a torn write would be seen
            writer.replace(dataclasses.replace(writer.get("base"), track=ids(100 + i * 7)))
    finally:
        done.set()
        reader.join(timeout=5)
    assert not errors, errors[:3]
    assert reads > 0


# --- a registry file that cannot be trusted --------------------------------------------------


GOOD_ENTRY = {
    "name": "news",
    "kind": "filter",
    "track": ["news"],
    "follow": [],
    "locations": [],
    "people": [],
    "language": [],
    "credential": "default",
    "active": True,
    "isolation": "task",
}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "not valid JSON"),
        (b'{"version": 1, "streams": [', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[]", 'exactly "version" and "streams"'),
        (b'{"streams": []}', 'exactly "version" and "streams"'),
        (b'{"version": 1, "streams": [], "extra": 1}', 'exactly "version" and "streams"'),
        (b'{"version": 2, "streams": []}', "has version 2"),
        (b'{"version": 1, "streams": {}}', '"streams" must be an array'),
        (
            json.dumps({"version": 1, "streams": [{**GOOD_ENTRY, "track": ["a,b"]}]}).encode(),
            "stream 1 ('news') is refused: track: phrase 1 'a,b'",
        ),
        (
            json.dumps({"version": 1, "streams": [{**GOOD_ENTRY, "surprise": 1}]}).encode(),
            "unknown field 'surprise'",
        ),
        (
            json.dumps(
                {
                    "version": 1,
                    "streams": [{k: v for k, v in GOOD_ENTRY.items() if k != "credential"}],
                }
            ).encode(),
            "credential is required",
        ),
        (json.dumps({"version": 1, "streams": [GOOD_ENTRY, 5]}).encode(), "stream 2 is refused"),
        (
            json.dumps({"version": 1, "streams": [GOOD_ENTRY, GOOD_ENTRY]}).encode(),
            "stream 2 ('news') repeats the name",
        ),
        (
            json.dumps({"version": 1, "streams": [{**GOOD_ENTRY, "credential": "old"}]}).encode(),
            "credential 'old' is not in the credentials file; known: default, research",
        ),
    ],
)
def test_a_corrupt_registry_file_is_refused_naming_file_and_problem(
    tmp_path: Path, content: bytes, words: str
) -> None:
    (tmp_path / "streams.json").write_bytes(content)
    with pytest.raises(RegistryError) as caught:
        Registry.load(tmp_path, credentials=CREDS)
    message = str(caught.value)
    assert str(tmp_path / "streams.json") in message
    assert words in message


def test_a_valid_hand_written_file_loads(tmp_path: Path) -> None:
    (tmp_path / "streams.json").write_text(json.dumps({"version": 1, "streams": [GOOD_ENTRY]}))
    loaded = Registry.load(tmp_path, credentials=CREDS).get("news").to_dict()
    assert loaded == {**GOOD_ENTRY, "api": "v1.1", "rules": []}  # written before v2 existed


def test_an_unreadable_registry_is_refused(tmp_path: Path) -> None:
    (tmp_path / "streams.json").mkdir()
    with pytest.raises(RegistryError, match="cannot be read"):
        Registry.load(tmp_path)


def test_people_ids_are_kept_in_the_file_and_join_follow_on_the_wire(tmp_path: Path) -> None:
    spec = validate_stream(
        {"name": "p", "kind": "filter", "follow": ["5"], "people": ["Alice", "nosuch", "bob"]},
        credentials=CREDS,
        default_credential="default",
    )
    spec = with_people_ids(spec, {"Alice": "11", "bob": "5"})
    assert spec.people_unresolved == ["nosuch"]
    assert spec.wire_params()["follow"] == "5,11"  # an id already followed is sent once
    registry = Registry(tmp_path / "streams.json")
    registry.add(spec)
    loaded = Registry.load(tmp_path, credentials=CREDS).get("p")
    assert loaded == spec
    assert loaded.to_record()["people_ids"] == {"Alice": "11", "bob": "5"}
    # A patch that leaves people alone keeps the ids; one that changes them drops the old ones.
    assert apply_patch(spec, {"track": ["x"]}).people_ids == spec.people_ids
    assert apply_patch(spec, {"people": ["carol"]}).people_ids == ()


def test_a_hand_edited_people_ids_must_be_ids(tmp_path: Path) -> None:
    entry = {**GOOD_ENTRY, "people_ids": {"alice": "not-a-number"}}
    (tmp_path / "streams.json").write_text(json.dumps({"version": 1, "streams": [entry]}))
    with pytest.raises(RegistryError, match="people_ids"):
        Registry.load(tmp_path, credentials=CREDS)


def test_leftovers_of_interrupted_writes_are_removed_on_request(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("first"))
    leftover = tmp_path / f".{registry.path.name}.abc123.tmp"
    leftover.write_text("{half")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("keep")
    assert Registry.load(tmp_path).remove_leftovers() == [leftover]
    assert not leftover.exists() and unrelated.exists()
    assert [s.name for s in Registry.load(tmp_path).list()] == ["first"]
