"""The stream registry: the daemon's desired state, one JSON file written atomically.

The registry's file and the control API's bodies hold the same STREAM settings, so their rules
live here in one table, `FIELDS`, that both checks values and renders the JSON Schema: the API
document cannot drift from what is enforced.

Choices the contract leaves open:
- A stream that names no credential gets `[twitter] default_credential`, filter and sample
  alike: with one credential there is nothing to choose, and the per-credential rule still
  refuses a second active stream on it (`Registry.check_credential_free` names the holder).
- Exact duplicates in track/follow/locations/people/language are dropped, first one kept, order
  kept: Twitter ORs them anyway, and the stored settings show what is really sent. Limits count
  the list as sent, duplicates included, so the schema's maxItems says the same as the checks.
- `people` is not sent to Twitter: the control API resolves it to ids through users/lookup when
  it is set or changed and keeps the answer in `people_ids` (screen name → id), which sfmd
  alone writes; those ids join follow on the wire, so follow plus people must fit in 5,000.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from sfmd.durable import write_atomically

FILE_NAME = "streams.json"
FORMAT_VERSION = 1

MAX_TRACK = 400
MAX_FOLLOW = 5000
MAX_LOCATIONS = 25
MAX_PEOPLE = 100  # users/lookup takes 100 screen names per call
MAX_LANGUAGE = 100
MAX_RULES = 1000  # v2: rules per app at the highest access level; the API enforces its own cap
MAX_RULE_CHARS = 1024  # v2: 512 at the basic access level, 1,024 at the higher ones
APIS = ("v1.1", "v2")

#: The fields a filter needs at least one of, and a sample may not have.
FILTER_FIELDS = ("track", "follow", "locations", "people")

# Control characters (Unicode category Cc): they would break logs, files and the wire.
_NO_CONTROL = r"\u0000-\u001f\u007f-\u009f"


class ValidationError(Exception):
    """A STREAM body or change was refused; `code` is the control API's error code.

    bad_request: wrong JSON types. invalid: a rule is broken. name_taken (`Registry.add`) and
    credential_in_use (`Registry.check_credential_free`): something in the registry is in the way.
    """

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


class RegistryError(Exception):
    """The registry file cannot be read or trusted; the message names the file and the problem."""


# --- the rule table --------------------------------------------------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def _refused(field: str, label: str, value: object, subject: str, rule: str) -> ValidationError:
    message = f"{label} {_show(value)} is refused; {subject} must be {rule}"
    return ValidationError("invalid", field, message)


@dataclass(frozen=True)
class Choice:
    """One of a few strings."""

    values: tuple[str, ...]

    @property
    def rule(self) -> str:
        return "one of " + ", ".join(f'"{v}"' for v in self.values)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}

    def check(self, value: object, field: str, label: str, subject: str) -> str:
        if not isinstance(value, str):
            raise ValidationError(
                "bad_request", field, f"{label} must be a string, got {_json_type(value)}"
            )
        if value not in self.values:
            raise _refused(field, label, value, subject, self.rule)
        return value


@dataclass(frozen=True)
class Flag:
    rule: str = "true or false"

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def check(self, value: object, field: str, label: str, subject: str) -> bool:
        if not isinstance(value, bool):
            raise ValidationError(
                "bad_request", field, f"{label} must be true or false, got {_json_type(value)}"
            )
        return value


@dataclass(frozen=True)
class Text:
    """A string with length bounds and a pattern (anchored, valid in Python and ECMA-262)."""

    pattern: str
    max_len: int
    rule: str
    min_len: int = 1
    in_bytes: bool = False  # lengths in UTF-8 bytes (Twitter's unit for track), not characters
    type_hint: str = ""

    def schema(self) -> dict[str, Any]:
        # A character never takes fewer bytes than one, so maxLength bounds a byte limit too.
        return {
            "type": "string",
            "minLength": self.min_len,
            "maxLength": self.max_len,
            "pattern": self.pattern,
        }

    def check(self, value: object, field: str, label: str, subject: str) -> str:
        if not isinstance(value, str):
            raise ValidationError(
                "bad_request",
                field,
                f"{label} must be a string, got {_json_type(value)}{self.type_hint}",
            )
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(
                "invalid", field, f"{label} is not valid Unicode (it holds a lone surrogate)"
            ) from None
        length, unit = (len(encoded), "bytes") if self.in_bytes else (len(value), "characters")
        if not self.min_len <= length <= self.max_len:
            raise ValidationError(
                "invalid", field, f"{label} is {length} {unit}; {subject} must be {self.rule}"
            )
        if not re.fullmatch(self.pattern, value):
            raise _refused(field, label, value, subject, self.rule)
        return value


_LONGITUDE = (-180, 180)
_LATITUDE = (-90, 90)
_CORNERS = (("west", _LONGITUDE), ("south", _LATITUDE), ("east", _LONGITUDE), ("north", _LATITUDE))


@dataclass(frozen=True)
class Box:
    """A bounding box [west, south, east, north], longitude first as on Twitter's wire."""

    rule: str = (
        "[west, south, east, north]: longitudes from -180 to 180, latitudes from -90 to 90, "
        "west < east and south < north"
    )

    def schema(self) -> dict[str, Any]:
        corners = [
            {"type": "number", "minimum": low, "maximum": high} for _, (low, high) in _CORNERS
        ]
        return {"type": "array", "prefixItems": corners, "items": False, "minItems": 4}

    def check(
        self, value: object, field: str, label: str, subject: str
    ) -> tuple[float, float, float, float]:
        if not isinstance(value, list):
            raise ValidationError(
                "bad_request",
                field,
                f"{label} must be an array [west, south, east, north], got {_json_type(value)}",
            )
        if len(value) != 4:
            raise ValidationError(
                "invalid", field, f"{label} has {len(value)} numbers; {subject} must be {self.rule}"
            )
        numbers: list[float] = []
        for number, (corner, (low, high)) in zip(value, _CORNERS, strict=True):
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ValidationError(
                    "bad_request",
                    field,
                    f"{label} {corner} must be a number, got {_json_type(number)}",
                )
            if not low <= number <= high:  # NaN fails this too
                raise ValidationError(
                    "invalid",
                    field,
                    f"{label} {corner} is {_show(number)}; {subject} must be {self.rule}",
                )
            numbers.append(float(number))
        west, south, east, north = numbers
        for low, high, a, b in (("west", "east", west, east), ("south", "north", south, north)):
            if not a < b:
                raise ValidationError(
                    "invalid",
                    field,
                    f"{label} {_show(value)} has {low} not less than {high}; "
                    f"{subject} must be {self.rule}",
                )
        return west, south, east, north


@dataclass(frozen=True)
class RuleValue:
    """A v2 rule as the API takes it, `{"value": "..."}`; sfmd sets the tag itself."""

    text: Text = Text(
        rf"^(?=.*\S)[^{_NO_CONTROL}]+$",
        MAX_RULE_CHARS,
        f"1-{MAX_RULE_CHARS} characters with no control character, not only spaces",
    )

    @property
    def rule(self) -> str:
        return f'an object {{"value": ...}} whose value is {self.text.rule}'

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"value": self.text.schema()},
            "required": ["value"],
            "additionalProperties": False,
        }

    def check(self, value: object, field: str, label: str, subject: str) -> str:
        if not isinstance(value, dict):
            raise ValidationError(
                "bad_request",
                field,
                f'{label} must be an object like {{"value": "cats has:images"}}, '
                f"got {_json_type(value)}",
            )
        extra = sorted(set(value) - {"value"})
        if extra:
            hint = " (sfmd tags each rule with its stream's name)" if "tag" in extra else ""
            raise ValidationError(
                "invalid", field, f"{label} has unknown key(s) {', '.join(extra)}{hint}"
            )
        if "value" not in value:
            raise ValidationError("invalid", field, f'{label} needs a "value"')
        return self.text.check(value["value"], field, f"{label} value", "each rule value")


@dataclass(frozen=True)
class ListOf:
    item: Text | Box | RuleValue
    noun: str
    plural: str
    max_items: int

    @property
    def rule(self) -> str:
        return f"up to {self.max_items} {self.plural}; each {self.noun} must be {self.item.rule}"

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "maxItems": self.max_items, "items": self.item.schema()}

    def check(self, value: object, field: str, label: str, subject: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValidationError(
                "bad_request", field, f"{label} must be an array, got {_json_type(value)}"
            )
        if len(value) > self.max_items:
            raise ValidationError(
                "invalid",
                field,
                f"{label} has {len(value)} {self.plural}; at most {self.max_items} are allowed",
            )
        checked = (
            self.item.check(v, field, f"{label}: {self.noun} {i}", f"each {self.noun}")
            for i, v in enumerate(value, start=1)
        )
        return tuple(dict.fromkeys(checked))  # drops exact duplicates, keeps the first's place


Rule = Choice | Flag | Text | ListOf

_REQUIRED = object()


@dataclass(frozen=True)
class Field:
    name: str
    rule: Rule
    doc: str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        return f"{self.doc} Rule: {self.rule.rule}."

    def check(self, value: object) -> Any:
        return self.rule.check(value, self.name, self.name, "it")


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field(
            "name",
            Text(
                r"^[a-z0-9][a-z0-9_-]*$",
                64,
                "1-64 characters of a-z 0-9 _ -, starting with a letter or digit",
            ),
            "The stream's name: its folder under data_dir and its key in the API. Fixed once"
            " created.",
        ),
        Field(
            "kind",
            Choice(("filter", "sample")),
            "statuses/filter.json or statuses/sample.json (with api v2: the filtered stream"
            " with rules, or the sample stream). Fixed once created.",
        ),
        Field(
            "track",
            ListOf(
                Text(
                    rf"^(?=.*\S)[^,{_NO_CONTROL}]+$",
                    60,
                    "1-60 bytes of UTF-8 with no comma (a comma would split the phrase on the"
                    " wire), no control character, and not only spaces",
                    in_bytes=True,
                ),
                "phrase",
                "phrases",
                MAX_TRACK,
            ),
            "Phrases to match: a space inside a phrase means AND, the phrases are ORed.",
            (),
        ),
        Field(
            "follow",
            ListOf(
                Text(
                    r"^[1-9][0-9]*$",
                    20,
                    "a user id as a string of 1-20 digits with no leading zero",
                    type_hint='; send ids as strings, e.g. "783214", since JSON numbers lose'
                    " digits above 2^53",
                ),
                "id",
                "ids",
                MAX_FOLLOW,
            ),
            "Numeric user ids, as strings, whose tweets to collect.",
            (),
        ),
        Field(
            "locations",
            ListOf(Box(), "box", "boxes", MAX_LOCATIONS),
            "Bounding boxes [west, south, east, north], in degrees, longitude first.",
            (),
        ),
        Field(
            "people",
            ListOf(
                Text(
                    r"^[A-Za-z0-9_]+$",
                    15,
                    "a screen name of 1-15 characters of A-Z a-z 0-9 _ (without @)",
                ),
                "screen name",
                "screen names",
                MAX_PEOPLE,
            ),
            "Screen names, turned into follow ids through users/lookup when set or changed.",
            (),
        ),
        Field(
            "language",
            ListOf(
                Text(
                    r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$",
                    35,
                    "a BCP 47 code: 2-8 letters, then optional -subtags of 1-8 letters or"
                    " digits, e.g. en or pt-BR",
                ),
                "code",
                "codes",
                MAX_LANGUAGE,
            ),
            "Only tweets detected as in one of these languages (optional).",
            (),
        ),
        Field(
            "credential",
            Text(
                rf"^[^{_NO_CONTROL}]+$",
                64,
                "1-64 characters with no control character, naming a table in the credentials file",
            ),
            "The credential to connect with; defaults to [twitter] default_credential.",
            None,  # filled from default_credential by validate_stream
        ),
        Field("active", Flag(), "Whether the stream should be running.", True),
        Field(
            "isolation",
            Choice(("task", "process")),
            "Run as a task in the daemon, or as its own process under supervisord.",
            "task",
        ),
        Field(
            "api",
            Choice(APIS),
            "Twitter's API version. v2 filters on one credential share one connection, each"
            " message going to the streams whose rules it matched. Fixed once created.",
            "v1.1",
        ),
        Field(
            "rules",
            ListOf(RuleValue(), "rule", "rules", MAX_RULES),
            "v2 filters only: the rules to collect, each tagged by sfmd with the stream's name.",
            (),
        ),
    )
}

V1_ONLY = (*FILTER_FIELDS, "language")

CROSS_RULES = (
    f"A v1.1 filter needs at least one of {', '.join(FILTER_FIELDS)}; a v1.1 sample has none"
    " of them.",
    f"A v2 filter needs rules and has none of {', '.join(V1_ONLY)}; a v2 sample has none of"
    " them and no rules; v2 filters run as tasks (isolation = task).",
    f"follow ids plus people must not exceed {MAX_FOLLOW} (each person becomes one follow id).",
    "At most one active v1.1 stream per credential, and one active v2 sample; any number of"
    " v2 filters.",
)


def json_schema(*, for_patch: bool = False) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a STREAM body, or of a PATCH body with `for_patch`."""
    properties: dict[str, Any] = {}
    for f in FIELDS.values():
        prop = {**f.rule.schema(), "description": f.describe()}
        if not f.required and f.default is not None:
            prop["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        properties[f.name] = prop
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "STREAM settings (changes)" if for_patch else "STREAM settings",
        "description": " ".join(CROSS_RULES),
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if for_patch:
        return schema
    schema["required"] = [f.name for f in FIELDS.values() if f.required]
    v2 = {"properties": {"api": {"const": "v2"}}, "required": ["api"]}
    none_of = {"properties": {name: {"maxItems": 0} for name in (*FILTER_FIELDS, "rules")}}
    schema["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": "sample"}}, "required": ["kind"]},
            "then": none_of,
        },
        {
            "if": {"properties": {"kind": {"const": "filter"}}, "required": ["kind"]},
            "then": {
                "if": v2,
                "then": {
                    "required": ["rules"],
                    "properties": {
                        "rules": {"minItems": 1},
                        "isolation": {"const": "task"},
                        **{name: {"maxItems": 0} for name in V1_ONLY},
                    },
                },
                "else": {
                    "properties": {"rules": {"maxItems": 0}},
                    "anyOf": [
                        {"required": [name], "properties": {name: {"minItems": 1}}}
                        for name in FILTER_FIELDS
                    ],
                },
            },
        },
    ]
    return schema


# --- the settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSpec:
    """One stream's desired settings, already checked: build it with `validate_stream`."""

    name: str
    kind: str
    track: tuple[str, ...]
    follow: tuple[str, ...]
    locations: tuple[tuple[float, float, float, float], ...]
    people: tuple[str, ...]
    language: tuple[str, ...]
    credential: str
    active: bool = True
    isolation: str = "task"
    api: str = "v1.1"
    rules: tuple[str, ...] = ()  # v2 rule values
    people_ids: tuple[tuple[str, str], ...] = ()  # (screen name, id) pairs, set by sfmd

    @property
    def endpoint(self) -> str:
        return self.kind

    @property
    def people_unresolved(self) -> list[str]:
        """Screen names users/lookup did not know, for the API to report."""
        found = {name.lower() for name, _ in self.people_ids}
        return [name for name in self.people if name.lower() not in found]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as the control API returns and the registry file stores it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "track": list(self.track),
            "follow": list(self.follow),
            "locations": [list(box) for box in self.locations],
            "people": list(self.people),
            "language": list(self.language),
            "credential": self.credential,
            "active": self.active,
            "isolation": self.isolation,
            "api": self.api,
            "rules": [{"value": value} for value in self.rules],
        }

    def to_record(self) -> dict[str, Any]:
        """The settings plus what sfmd derived (people_ids): the registry file and API answers."""
        return {**self.to_dict(), "people_ids": dict(self.people_ids)}

    @functools.cached_property
    def registry_line(self) -> str:
        """This stream's line in the registry file: every change rewrites the whole file, and
        re-encoding 1,000 unchanged streams held the GIL for milliseconds each time."""
        return json.dumps(self.to_record(), ensure_ascii=False)

    @functools.cached_property
    def view_json_open(self) -> bytes:
        """The settings part of the API's STREAM (the record plus `people_unresolved`) as JSON
        without its closing brace, for the daemon to add `status` to. Encoded once per spec (a
        spec never changes): encoding every stream's settings on every listing was most of
        GET /streams' cost at 1,000 streams."""
        view = {**self.to_record(), "people_unresolved": self.people_unresolved}
        return orjson.dumps(view)[:-1]

    def wire_params(self) -> dict[str, str]:
        """The v1.1 request parameters; `people` is resolved to follow ids by the stream."""
        follow = list(self.follow)
        follow += [i for _, i in self.people_ids if i not in self.follow]
        params = {
            "track": ",".join(self.track),
            "follow": ",".join(follow),
            "locations": ",".join(_coordinate(c) for box in self.locations for c in box),
            "language": ",".join(self.language),
        }
        return {key: value for key, value in params.items() if value}

    def connection_key(self) -> tuple[object, ...]:
        """What the connection depends on: a change here (and only here) means reconnecting.

        A v2 filter's rules change on the API while its shared connection stays up. Kept
        once computed: every reconcile compares it for every running stream.
        """
        return self._connection_key

    @functools.cached_property
    def _connection_key(self) -> tuple[object, ...]:
        if self.api == "v2":
            return (self.api, self.endpoint, self.credential)
        return (self.endpoint, sorted(self.wire_params().items()), self.people, self.credential)

    @property
    def connection_group(self) -> str | None:
        """Which one-connection-per-credential rule this stream falls under, if any.

        v1.1 streams share the user tokens' rule; a v2 sample holds the app's one sample
        connection; v2 filters share one connection, so any number may be active.
        """
        if self.api == "v1.1":
            return "v1.1"
        return "v2 sample" if self.kind == "sample" else None


def _coordinate(value: float) -> str:
    """Plain decimal, never exponent notation (1e-05), which Twitter's parser may refuse."""
    text = format(Decimal(repr(value)), "f")
    return text[:-2] if text.endswith(".0") else text


def validate_stream(
    data: object,
    *,
    credentials: Collection[str] | None = None,
    default_credential: str | None = None,
) -> StreamSpec:
    """Check a STREAM body (or registry entry) against FIELDS and the cross-field rules."""
    if not isinstance(data, dict):
        raise ValidationError(
            "bad_request",
            "body",
            f"the body must be a JSON object of stream settings, got {_json_type(data)}",
        )
    for name in data:
        if name not in FIELDS:
            raise ValidationError(
                "invalid", name, f"unknown field {_show(name)}; known fields: {', '.join(FIELDS)}"
            )
    values: dict[str, Any] = {}
    for f in FIELDS.values():
        if f.name in data:
            values[f.name] = f.check(data[f.name])
        elif f.name == "credential" and default_credential is not None:
            values[f.name] = default_credential
        elif f.required or f.default is None:
            hint = "; no default_credential is configured" if f.name == "credential" else ""
            raise ValidationError("invalid", f.name, f"{f.name} is required{hint}")
        else:
            values[f.name] = f.default
    spec = StreamSpec(**values)
    _check_cross_rules(spec)
    if credentials is not None:
        check_credential(spec.credential, credentials)
    return spec


def _check_cross_rules(spec: StreamSpec) -> None:
    if spec.api == "v2":
        _check_v2(spec)
        return
    if spec.rules:
        raise ValidationError(
            "invalid", "rules", 'rules are for v2 filters; set "api": "v2" or use track/follow'
        )
    given = [name for name in FILTER_FIELDS if getattr(spec, name)]
    if spec.kind == "filter" and not given:
        raise ValidationError(
            "invalid",
            "kind",
            f"a filter stream needs at least one of {', '.join(FILTER_FIELDS)}",
        )
    if spec.kind == "sample" and given:
        raise ValidationError(
            "invalid",
            given[0],
            f"a sample stream takes none of {', '.join(FILTER_FIELDS)}; got {', '.join(given)}",
        )
    if len(spec.follow) + len(spec.people) > MAX_FOLLOW:
        raise ValidationError(
            "invalid",
            "follow",
            f"follow has {len(spec.follow)} ids and people {len(spec.people)} screen names; "
            f"together they must not exceed {MAX_FOLLOW} (each person becomes one follow id)",
        )


def _check_v2(spec: StreamSpec) -> None:
    given = [name for name in V1_ONLY if getattr(spec, name)]
    if given:
        raise ValidationError(
            "invalid",
            given[0],
            f"a v2 stream takes none of {', '.join(V1_ONLY)} (got {', '.join(given)}); "
            "write them as rules, e.g. {\"value\": \"cats lang:en\"}",
        )
    if spec.kind == "sample" and spec.rules:
        raise ValidationError("invalid", "rules", "a v2 sample stream takes no rules")
    if spec.kind == "filter" and not spec.rules:
        raise ValidationError("invalid", "rules", "a v2 filter stream needs at least one rule")
    if spec.kind == "filter" and spec.isolation != "task":
        raise ValidationError(
            "invalid",
            "isolation",
            "v2 filters on one credential share one connection in the daemon, so they run as "
            'tasks; isolation must be "task"',
        )


def check_credential(name: str, credentials: Collection[str]) -> None:
    """Refuse a credential the credentials file lacks; the message lists names, never keys."""
    if name not in credentials:
        known = ", ".join(sorted(credentials)) or "none"
        raise ValidationError(
            "invalid",
            "credential",
            f"credential {name!r} is not in the credentials file; known: {known}",
        )


def apply_patch(
    spec: StreamSpec, patch: object, *, credentials: Collection[str] | None = None
) -> StreamSpec:
    """The settings after a PATCH; the credential is checked only when the patch names it."""
    if not isinstance(patch, dict):
        raise ValidationError(
            "bad_request",
            "body",
            f"the body must be a JSON object of settings to change, got {_json_type(patch)}",
        )
    current = spec.to_dict()
    for name, value in patch.items():
        if name in ("name", "kind", "api") and value != current[name]:
            raise ValidationError(
                "invalid",
                name,
                f"{name} is fixed once created (it is {current[name]!r}); "
                "create a new stream instead",
            )
    changed = validate_stream(
        {**current, **patch}, credentials=credentials if "credential" in patch else None
    )
    if changed.people == spec.people:
        changed = dataclasses.replace(changed, people_ids=spec.people_ids)
    return changed


def with_people_ids(spec: StreamSpec, ids: Mapping[str, str]) -> StreamSpec:
    """The spec with users/lookup's answer (screen name → id) for its people."""
    pairs = tuple((name, ids[name]) for name in spec.people if name in ids)
    return dataclasses.replace(spec, people_ids=pairs)


def _people_ids(value: object) -> dict[str, str]:
    """The registry's people_ids: screen name → numeric id string, as sfmd wrote it."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.isdigit() for k, v in value.items()
    ):
        raise ValidationError(
            "invalid", "people_ids", "people_ids must map screen names to numeric id strings"
        )
    return value


# --- the file --------------------------------------------------------------------------------


class Registry:
    """The streams by name, and the file that holds them. Only this class writes that file.

    Every change is on disk (written, fsynced, renamed) before it shows in memory, so what the
    API answered is what a restart finds. The one-active-stream-per-credential rule is the
    caller's to ask for (`check_credential_free`, before add/replace): the registry stores what
    it is given, and the credential locks hold the rule at run time whatever the file says.
    """

    def __init__(self, path: Path, streams: Mapping[str, StreamSpec] | None = None) -> None:
        self.path = path
        self._streams: dict[str, StreamSpec] = dict(streams or {})

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r}, {len(self._streams)} streams)"

    @classmethod
    def load(cls, state_dir: Path, *, credentials: Collection[str] | None = None) -> Registry:
        """Read the registry; a missing file is empty, anything doubtful is a RegistryError."""
        path = Path(state_dir) / FILE_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise RegistryError(f"registry {path} cannot be read: {e.strerror}") from None
        return cls(path, _parse(path, raw, credentials))

    def remove_leftovers(self) -> list[Path]:
        """Delete temp files of registry writes a crash interrupted (the registry itself is
        the old or the new one). Only the daemon, the one writer, may call this at start-up:
        anyone else could delete a write in progress."""
        leftovers = sorted(self.path.parent.glob(f".{self.path.name}.*.tmp"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return leftovers

    def get(self, name: str) -> StreamSpec:
        return self._streams[name]

    def list(self) -> list[StreamSpec]:
        return [self._streams[name] for name in sorted(self._streams)]

    def __contains__(self, name: object) -> bool:
        return name in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, spec: StreamSpec) -> None:
        if spec.name in self._streams:
            raise ValidationError(
                "name_taken", "name", f"a stream named {spec.name!r} already exists"
            )
        self._commit(spec)

    def replace(self, spec: StreamSpec) -> None:
        """Store new settings for an existing stream (KeyError if there is none)."""
        if spec.name not in self._streams:
            raise KeyError(spec.name)
        self._commit(spec)

    def remove(self, name: str) -> None:
        streams = dict(self._streams)
        del streams[name]
        self._write(streams)

    def holder_of(self, spec: StreamSpec) -> StreamSpec | None:
        """Another active stream holding the connection `spec` would need, if any."""
        group = spec.connection_group
        if group is None:
            return None
        for other in self._streams.values():
            if (
                other.active
                and other.credential == spec.credential
                and other.connection_group == group
                and other.name != spec.name
            ):
                return other
        return None

    def check_credential_free(self, spec: StreamSpec) -> None:
        """Refuse making `spec` active on a credential another active stream holds (API 409)."""
        holder = self.holder_of(spec) if spec.active else None
        if holder is not None:
            what = "the v2 sample connection of" if spec.api == "v2" else "credential"
            raise ValidationError(
                "credential_in_use",
                "credential",
                f"{what} {spec.credential!r} is in use by active stream {holder.name!r}; "
                "stop that stream or choose another credential",
            )

    def _commit(self, spec: StreamSpec) -> None:
        self._write({**self._streams, spec.name: spec})

    def _write(self, streams: dict[str, StreamSpec]) -> None:
        # One stream per line: still easy to read and diff, and encoded by json's C encoder
        # (any `indent` falls back to the pure-Python one, ten times slower: 90 ms for 1,000
        # streams, all of it holding the GIL while API calls wait).
        lines = ",\n".join(streams[name].registry_line for name in sorted(streams))
        text = f'{{"version": {FORMAT_VERSION}, "streams": [\n{lines}\n]}}\n'
        write_atomically(self.path, text.encode("utf-8"))
        self._streams = streams


def _parse(path: Path, raw: bytes, credentials: Collection[str] | None) -> dict[str, StreamSpec]:
    """The streams in a registry file, or a RegistryError: never drop a stream silently."""
    fix = "fix or restore it; sfmd will not guess which streams were meant"
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"registry {path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict) or set(data) != {"version", "streams"}:
        raise RegistryError(
            f'registry {path} must be an object with exactly "version" and "streams"; {fix}'
        )
    if data["version"] != FORMAT_VERSION:
        raise RegistryError(
            f"registry {path} has version {_show(data['version'])}; this sfmd reads version "
            f"{FORMAT_VERSION}"
        )
    if not isinstance(data["streams"], list):
        raise RegistryError(f'registry {path}: "streams" must be an array; {fix}')
    streams: dict[str, StreamSpec] = {}
    for index, entry in enumerate(data["streams"], start=1):
        label = f"stream {index}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" ({entry['name']!r})"
        try:
            ids: dict[str, str] = {}
            if isinstance(entry, dict) and "people_ids" in entry:
                entry = dict(entry)
                ids = _people_ids(entry.pop("people_ids"))
            spec = with_people_ids(validate_stream(entry, credentials=credentials), ids)
        except ValidationError as e:
            raise RegistryError(
                f"registry {path}: {label} is refused: {e.message}; {fix}"
            ) from None
        if spec.name in streams:
            raise RegistryError(f"registry {path}: {label} repeats the name; {fix}")
        streams[spec.name] = spec
    return streams
