"""One stream's desired settings (`StreamSpec`), checked, and what follows from them.

Choices left open by the settings themselves:
- A stream that names no credential gets `[twitter] default_credential`, filter and sample
  alike: with one credential there is nothing to choose, and the per-credential rule still
  refuses a second active stream on it (`Registry.check_credential_free` names the holder).
- `people` is not sent to Twitter: the control API resolves it to ids through users/lookup when
  it is set or changed and keeps the answer in `people_ids` (screen name → id), which sfmd
  alone writes; those ids join follow on the wire, so follow plus people must fit in 5,000.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sfmd.registry.fields import (
    FIELDS,
    FILTER_FIELDS,
    KINDS,
    LIST_KINDS,
    MAX_FOLLOW,
    TAG_KINDS,
    V1_ONLY,
    ValidationError,
    _json_type,
    _show,
    fields_of,
)


class Mode(enum.Enum):
    """How a stream runs, which decides the back end that runs it."""

    TASK = "task"  # its own connection, as a task in the daemon
    SHARED = "shared"  # a member of a connection it shares (v2 filters on one credential)
    PROCESS = "process"  # its own connection, in its own process under supervisord


def slot_of(api: str, kind: str, credential: str) -> str:
    """The name of the connection a stream of this api and kind needs on `credential`."""
    return credential if api == "v1.1" else f"{credential}.v2-{kind}"


def mastodon_slot(credential: str) -> str:
    """The name of a Mastodon account's one streaming connection."""
    return f"{credential}.mastodon"


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
    source: str = "twitter"  # a key of `sfmd.sources.SOURCES`
    collections: tuple[str, ...] = ()  # Bluesky
    dids: tuple[str, ...] = ()  # Bluesky
    endpoint: str = ""  # Bluesky: a Jetstream instance other than the configured one
    tag: str = ""  # Mastodon hashtag kinds, without its #
    list: str = ""  # Mastodon list kind: the list's id

    @property
    def people_unresolved(self) -> list[str]:
        """Screen names users/lookup did not know, for the API to report."""
        found = {name.lower() for name, _ in self.people_ids}
        return [name for name in self.people if name.lower() not in found]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as the control API returns and the registry file stores it: the
        settings of the stream's network (a Bluesky stream has no `track`)."""
        every = {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "track": list(self.track),
            "follow": list(self.follow),
            "locations": [list(box) for box in self.locations],
            "people": list(self.people),
            "language": list(self.language),
            "collections": list(self.collections),
            "dids": list(self.dids),
            "endpoint": self.endpoint,
            "tag": self.tag,
            "list": self.list,
            "credential": self.credential,
            "active": self.active,
            "isolation": self.isolation,
            "api": self.api,
            "rules": [{"value": value} for value in self.rules],
        }
        if self.source == "mastodon":  # only the kind's own: a public stream shows no tag
            if self.kind not in TAG_KINDS:
                del every["tag"]
            if self.kind not in LIST_KINDS:
                del every["list"]
        return {key: value for key, value in every.items() if self.source in FIELDS[key].sources}

    def to_record(self) -> dict[str, Any]:
        """The settings plus what sfmd derived (people_ids): the registry file and API answers."""
        if self.source != "twitter":
            return self.to_dict()
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
        view = self.to_record()
        if self.source == "twitter":
            view["people_unresolved"] = self.people_unresolved
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
        if self.source == "bluesky":  # new collections or DIDs go out on the open connection
            return (self.source, self.endpoint)
        if self.source == "mastodon":  # (un)subscribing happens on the account's connection
            return (self.source, self.credential)
        if self.api == "v2":
            return (self.api, self.kind, self.credential)
        return (self.kind, sorted(self.wire_params().items()), self.people, self.credential)

    @functools.cached_property
    def mode(self) -> Mode:
        """Which back end runs this stream; computed here once, so nothing else reads `api`,
        `kind` and `isolation` to decide."""
        if (self.api == "v2" and self.kind == "filter") or self.source == "mastodon":
            return Mode.SHARED
        return Mode.PROCESS if self.isolation == "process" else Mode.TASK

    @functools.cached_property
    def slot(self) -> str:
        """The connection this stream needs, by name: one holder at a time, except that a
        shared slot's members share it.

        v1.1 streams need the credential's user tokens (Twitter cuts the older of two
        connections on them); a v2 sample needs the app's one sample connection; v2 filters
        share the app's one filtered-stream connection; a Bluesky stream has a connection of
        its own; a Mastodon account's streams share its one streaming connection. The name is
        also the lock's file name.
        """
        if self.source == "bluesky":
            return f"bluesky.{self.name}"
        if self.source == "mastodon":
            return mastodon_slot(self.credential)
        return slot_of(self.api, self.kind, self.credential)

    @property
    def exclusive(self) -> bool:
        """Whether an active stream keeps every other stream out of its slot."""
        return self.mode is not Mode.SHARED


def _coordinate(value: float) -> str:
    """Plain decimal, never exponent notation (1e-05), which Twitter's parser may refuse."""
    from decimal import Decimal  # here: only location filters need it (0.3 MB resident)

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
    source = FIELDS["source"].check(data["source"]) if "source" in data else "twitter"
    values: dict[str, Any] = {}
    for f in FIELDS.values():
        if f.name in data and source not in f.sources:
            raise ValidationError(
                "invalid", f.name, f"a {source} stream has no {f.name}; its settings are "
                f"{', '.join(fields_of(source))}",
            )
        if f.name in data:
            values[f.name] = f.check(data[f.name])
        elif source not in f.sources:
            values[f.name] = f.default if f.default is not None else ""
        elif f.name == "credential" and default_credential is not None and source == "twitter":
            values[f.name] = default_credential
        elif f.required or f.default is None:
            hint = ""
            if f.name == "credential":
                hint = ("; name a table holding mastodon_instance and mastodon_token"
                        if source == "mastodon" else "; no default_credential is configured")
            raise ValidationError("invalid", f.name, f"{f.name} is required{hint}")
        else:
            values[f.name] = f.default
    spec = StreamSpec(**values)
    _check_cross_rules(spec)
    if credentials is not None and "credential" in fields_of(source):
        check_credential(spec.credential, credentials)
    return spec


def _check_cross_rules(spec: StreamSpec) -> None:
    kinds = KINDS[spec.source]
    if spec.kind not in kinds:
        raise ValidationError(
            "invalid", "kind", f"a {spec.source} stream's kind must be one of "
            f"{', '.join(kinds)}; got {spec.kind!r}",
        )
    if spec.source == "mastodon":
        _check_mastodon(spec)
        return
    if spec.source != "twitter":
        return
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


def _check_mastodon(spec: StreamSpec) -> None:
    if spec.kind in TAG_KINDS and not spec.tag:
        raise ValidationError("invalid", "tag", f"a {spec.kind} stream needs a tag")
    if spec.kind not in TAG_KINDS and spec.tag:
        raise ValidationError(
            "invalid", "tag", f"a {spec.kind} stream takes no tag; tags are for "
            f"{' and '.join(TAG_KINDS)} streams")
    if spec.kind in LIST_KINDS and not spec.list:
        raise ValidationError("invalid", "list", "a list stream needs the list's id")
    if spec.kind not in LIST_KINDS and spec.list:
        raise ValidationError("invalid", "list", f"a {spec.kind} stream takes no list")
    if spec.isolation != "task":
        raise ValidationError(
            "invalid", "isolation", "a Mastodon account's streams share one connection in the"
            ' daemon, so they run as tasks; isolation must be "task"')


def check_credential(name: str, credentials: Collection[str]) -> None:
    """Refuse a credential the credentials file lacks; the message lists names, never keys."""
    if name not in credentials:
        known = ", ".join(sorted(credentials)) or "none"
        raise ValidationError(
            "invalid",
            "credential",
            f"credential {name!r} is not in the credentials file; known: {known} (just added"
            " it? run `sfmctl reload` so sfmd reads the file again)",
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
        if name in ("name", "kind", "api", "source") and value != current.get(name, value):
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


