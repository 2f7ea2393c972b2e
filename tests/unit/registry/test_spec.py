"""A stream spec's JSON form, its wire parameters and connection key, and PATCH
(sfmd.registry.spec)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfmd.registry import FIELDS, Mode, ValidationError, apply_patch, validate_stream
from sfmd.registry.fields import fields_of
from tests.helpers.specs import CREDS, filt, ok

# --- the JSON form and the wire --------------------------------------------------------------


def test_to_dict_holds_every_field_as_json_lists() -> None:
    spec = ok(filt(locations=[[-122.75, 36.8, -121.75, 37.8]], people=["jack"]))
    assert spec.to_dict() == {
        "name": "news",
        "source": "twitter",
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
    assert sorted(spec.to_dict()) == sorted(fields_of("twitter"))  # Twitter's, no Bluesky's
    assert set(fields_of("twitter")) | set(fields_of("bluesky")) | set(
        fields_of("mastodon")) == set(FIELDS)


def test_a_mastodon_stream_shows_its_kinds_own_fields_only() -> None:
    tag = validate_stream({"name": "t", "source": "mastodon", "kind": "hashtag", "tag": "#Archives",
              "credential": "fedi"})
    assert tag.to_dict() == {"name": "t", "source": "mastodon", "kind": "hashtag",
                             "tag": "Archives", "credential": "fedi", "active": True,
                             "isolation": "task"}
    public = validate_stream({"name": "p", "source": "mastodon", "kind": "public:local",
                              "credential": "fedi"})
    assert "tag" not in public.to_dict() and "list" not in public.to_dict()
    listed = validate_stream({"name": "l", "source": "mastodon", "kind": "list", "list": "42",
                 "credential": "fedi"})
    assert listed.to_dict()["list"] == "42"
    # One connection per account, whatever the kind and tag; a new tag keeps it.
    assert tag.mode is Mode.SHARED and tag.slot == "fedi.mastodon" == public.slot
    assert apply_patch(tag, {"tag": "python"}).connection_key() == tag.connection_key()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "hashtag"}, "tag"),
        ({"kind": "hashtag:local", "tag": "two words"}, "tag"),
        ({"kind": "hashtag", "tag": "a,b"}, "tag"),
        ({"kind": "public", "tag": "archives"}, "tag"),
        ({"kind": "list"}, "list"),
        ({"kind": "list", "list": "abc"}, "list"),
        ({"kind": "user", "list": "1"}, "list"),
        ({"kind": "user", "isolation": "process"}, "isolation"),
        ({"kind": "user", "track": ["x"]}, "track"),
        ({"kind": "jetstream"}, "kind"),
    ],
)
def test_a_mastodon_stream_is_refused_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        validate_stream({"name": "m", "source": "mastodon", "credential": "fedi", **body})
    assert e.value.field == field and e.value.status == 422


def test_a_mastodon_stream_names_its_credential() -> None:
    with pytest.raises(ValidationError) as e:
        validate_stream({"name": "m", "source": "mastodon", "kind": "user"},
                        default_credential="default")
    assert e.value.field == "credential"
    assert "mastodon_instance" in str(e.value)


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


