"""STREAM settings' rules: one table, `FIELDS`, that both checks values and renders the JSON
Schema, so the control API's document cannot drift from what is enforced.

The registry's file and the control API's bodies hold the same settings, so both are checked
here. Exact duplicates in track/follow/locations/people/language are dropped, first one kept,
order kept: Twitter ORs them anyway, and the stored settings show what is really sent. Limits
count the list as sent, duplicates included, so the schema's maxItems says the same as the
checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sfmd.errors import Refused

MAX_TRACK = 400
MAX_FOLLOW = 5000
MAX_LOCATIONS = 25
MAX_PEOPLE = 100  # users/lookup takes 100 screen names per call
MAX_LANGUAGE = 100
MAX_RULES = 1000  # v2: rules per app at the highest access level; the API enforces its own cap
MAX_RULE_CHARS = 1024  # v2: 512 at the basic access level, 1,024 at the higher ones
APIS = ("v1.1", "v2")
SOURCES = ("twitter", "bluesky", "mastodon")
#: Each network's kinds of stream.
KINDS = {
    "twitter": ("filter", "sample"),
    "bluesky": ("jetstream",),
    "mastodon": ("public", "public:local", "public:remote", "hashtag", "hashtag:local", "list",
                 "user"),
}
#: The Mastodon kinds that name a hashtag (`tag`), and the one that names a list (`list`).
TAG_KINDS = ("hashtag", "hashtag:local")
LIST_KINDS = ("list",)
MAX_COLLECTIONS = 100  # Jetstream's own limits
MAX_DIDS = 10_000

#: The fields a filter needs at least one of, and a sample may not have.
FILTER_FIELDS = ("track", "follow", "locations", "people")

# Control characters (Unicode category Cc): they would break logs, files and the wire.
_NO_CONTROL = r"\u0000-\u001f\u007f-\u009f"

#: The API's HTTP status for each refusal code a settings check can give.
STATUS_OF_CODE = {
    "bad_request": 400,
    "invalid": 422,
    "name_taken": 409,
    "credential_in_use": 409,
}


class ValidationError(Refused):
    """A STREAM body or change was refused; `code` is the control API's error code.

    bad_request: wrong JSON types. invalid: a rule is broken. name_taken (`Registry.add`) and
    credential_in_use (`Registry.check_credential_free`): something in the registry is in the way.
    """

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(message, status=STATUS_OF_CODE.get(code, 422), code=code)
        self.field = field



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
    prefix: str = ""  # accepted before the value and dropped (the @ of a screen name)

    def schema(self) -> dict[str, Any]:
        # A character never takes fewer bytes than one, so maxLength bounds a byte limit too.
        pattern = self.pattern
        if self.prefix:  # the anchored pattern, with the prefix allowed in front
            pattern = f"^{re.escape(self.prefix)}?{pattern.removeprefix('^')}"
        return {
            "type": "string",
            "minLength": self.min_len,
            "maxLength": self.max_len + len(self.prefix),
            "pattern": pattern,
        }

    def check(self, value: object, field: str, label: str, subject: str) -> str:
        if not isinstance(value, str):
            raise ValidationError(
                "bad_request",
                field,
                f"{label} must be a string, got {_json_type(value)}{self.type_hint}",
            )
        if self.prefix:
            value = value.removeprefix(self.prefix)
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
    sources: tuple[str, ...] = SOURCES  # the networks whose streams have this setting

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
            Choice(tuple(kind for kinds in KINDS.values() for kind in kinds)),
            "Twitter: filter (statuses/filter.json; with api v2 the filtered stream with rules)"
            " or sample. Bluesky: jetstream. Fixed once created.",
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
            sources=("twitter",),
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
            sources=("twitter",),
        ),
        Field(
            "locations",
            ListOf(Box(), "box", "boxes", MAX_LOCATIONS),
            "Bounding boxes [west, south, east, north], in degrees, longitude first.",
            (),
            sources=("twitter",),
        ),
        Field(
            "people",
            ListOf(
                Text(
                    r"^[A-Za-z0-9_]+$",
                    15,
                    "a screen name of 1-15 characters of A-Z a-z 0-9 _ (a leading @ is dropped)",
                    prefix="@",
                ),
                "screen name",
                "screen names",
                MAX_PEOPLE,
            ),
            "Screen names, turned into follow ids through users/lookup when set or changed.",
            (),
            sources=("twitter",),
        ),
        Field(
            "language",
            ListOf(
                Text(
                    r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
                    35,
                    "a BCP 47 code: a 2-3 letter language (ISO 639, not its name), then optional"
                    " -subtags of 1-8 letters or digits, e.g. en or pt-BR",
                ),
                "code",
                "codes",
                MAX_LANGUAGE,
            ),
            "Only tweets detected as in one of these languages (optional).",
            (),
            sources=("twitter",),
        ),
        Field(
            "credential",
            Text(
                rf"^[^{_NO_CONTROL}]+$",
                64,
                "1-64 characters with no control character, naming a table in the credentials file",
            ),
            "The credential to connect with. Twitter: defaults to [twitter] default_credential."
            " Mastodon: required, a table with mastodon_instance and mastodon_token.",
            None,  # filled from default_credential by validate_stream (Twitter only)
            sources=("twitter", "mastodon"),
        ),
        Field("active", Flag(), "Whether the stream should be running.", True),
        Field(
            "isolation",
            Choice(("task", "process")),
            "Run as a task in the daemon, or as its own process under supervisord (Mastodon"
            " streams share their account's connection, so they run as tasks).",
            "task",
        ),
        Field(
            "api",
            Choice(APIS),
            "Twitter's API version. v2 filters on one credential share one connection, each"
            " message going to the streams whose rules it matched. Fixed once created.",
            "v1.1",
            sources=("twitter",),
        ),
        Field(
            "rules",
            ListOf(RuleValue(), "rule", "rules", MAX_RULES),
            "v2 filters only: the rules to collect, each tagged by sfmd with the stream's name.",
            (),
            sources=("twitter",),
        ),
        Field(
            "source",
            Choice(SOURCES),
            "The network: twitter, bluesky (Jetstream) or mastodon. Fixed once created.",
            "twitter",
        ),
        Field(
            "collections",
            ListOf(
                Text(
                    r"^[a-zA-Z][a-zA-Z0-9-]*(\.[a-zA-Z0-9-]+)+(\.[a-zA-Z][a-zA-Z0-9]*|\.\*)$",
                    317,
                    "an NSID such as app.bsky.feed.post, or a prefix such as app.bsky.*",
                ),
                "collection",
                "collections",
                MAX_COLLECTIONS,
            ),
            "Bluesky: the record collections to collect (empty: all). Identity and account"
            " events come whatever the collections.",
            (),
            sources=("bluesky",),
        ),
        Field(
            "dids",
            ListOf(
                Text(
                    r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$",
                    2048,
                    "a DID such as did:plc:ewvi7nxzyoun6zhxrhs64oiz",
                ),
                "DID",
                "DIDs",
                MAX_DIDS,
            ),
            "Bluesky: only the events of these accounts (empty: every account).",
            (),
            sources=("bluesky",),
        ),
        Field(
            "endpoint",
            Text(
                r"^$|^wss?://[^\s/?#]+(/[^\s?#]*)?$",
                300,
                "empty (the configured jetstream_url) or a ws:// or wss:// URL of a Jetstream"
                " instance's /subscribe",
                min_len=0,
            ),
            "Bluesky: another Jetstream instance than [bluesky] jetstream_url (optional).",
            "",
            sources=("bluesky",),
        ),
        Field(
            "tag",
            Text(
                # Letters, digits, marks and _ of any script; no space or ASCII punctuation.
                rf"^[^\s!-/:-@\[-^`{{-~{_NO_CONTROL}]*$",
                100,
                "a hashtag of 1-100 letters, digits or _ (a leading # is dropped)",
                min_len=0,
                prefix="#",
            ),
            "Mastodon hashtag and hashtag:local streams: the hashtag, without its #.",
            "",
            sources=("mastodon",),
        ),
        Field(
            "list",
            Text(r"^$|^[0-9]{1,20}$", 20, "a list id of 1-20 digits", min_len=0),
            "Mastodon list streams: the id of one of the account's lists.",
            "",
            sources=("mastodon",),
        ),
    )
}


def fields_of(source: str) -> list[str]:
    """The settings a stream of `source` has, in the table's order."""
    return [f.name for f in FIELDS.values() if source in f.sources]

V1_ONLY = (*FILTER_FIELDS, "language")

CROSS_RULES = (
    f"A v1.1 filter needs at least one of {', '.join(FILTER_FIELDS)}; a v1.1 sample has none"
    " of them.",
    f"A v2 filter needs rules and has none of {', '.join(V1_ONLY)}; a v2 sample has none of"
    " them and no rules; v2 filters run as tasks (isolation = task).",
    f"follow ids plus people must not exceed {MAX_FOLLOW} (each person becomes one follow id).",
    "At most one active v1.1 stream per credential, and one active v2 sample; any number of"
    " v2 filters.",
    "A Bluesky stream (source bluesky) is of kind jetstream and has none of Twitter's settings"
    " (no credential); a Twitter stream has none of Bluesky's.",
    "A Mastodon stream (source mastodon) names its credential; hashtag kinds need a tag, the"
    " list kind a list, the other kinds neither; Mastodon streams run as tasks.",
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
    source_rules = [
        {
            "if": {"properties": {"source": {"const": source}}, **(
                {"required": ["source"]} if source != "twitter" else {})},
            "then": {
                "properties": {"kind": {"enum": list(KINDS[source])}},
                "not": {"anyOf": [{"required": [f.name]} for f in FIELDS.values()
                                  if source not in f.sources]},
            },
        }
        for source in SOURCES
    ]
    v2 = {"properties": {"api": {"const": "v2"}}, "required": ["api"]}
    none_of = {"properties": {name: {"maxItems": 0} for name in (*FILTER_FIELDS, "rules")}}
    def mastodon(kinds: tuple[str, ...] | None, then: dict[str, Any]) -> dict[str, Any]:
        when: dict[str, Any] = {"source": {"const": "mastodon"}}
        if kinds is not None:
            when["kind"] = {"enum": list(kinds)}
        return {"if": {"properties": when, "required": list(when)}, "then": then}

    others = [k for k in KINDS["mastodon"] if k not in TAG_KINDS]
    schema["allOf"] = [
        *source_rules,
        mastodon(None, {"required": ["credential"], "properties": {
            "isolation": {"const": "task"}}}),
        mastodon(TAG_KINDS, {"required": ["tag"], "properties": {"tag": {"minLength": 1}}}),
        mastodon(LIST_KINDS, {"required": ["list"], "properties": {"list": {"minLength": 1}}}),
        mastodon(tuple(others), {"properties": {"tag": {"maxLength": 0}}}),
        mastodon(tuple(k for k in KINDS["mastodon"] if k not in LIST_KINDS),
                 {"properties": {"list": {"maxLength": 0}}}),
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

