"""The filtered stream's rules as Twitter keeps them for one app: value checks, the
non-atomic add, delete, and the parsing of a rules request. Pure: no I/O, no clock.

`sfmd.fake.v2` serves this over HTTP; its docstring lists the wire shapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sfmd.fake.mount import dumps

MAX_RULE_LENGTH = 512
PROBLEMS = "https://api.twitter.com/2/problems/"

#: `word:` operators the filtered stream knows; any other is refused.
OPERATORS = frozenset(
    "bio bio_location bio_name bounding_box context conversation_id entity followers_count "
    "following_count from has in_reply_to_tweet_id is lang listed_count place place_country "
    "point_radius quotes_of_tweet_id retweets_of retweets_of_tweet_id sample source to "
    "tweets_count url url_contains url_description url_title".split()
)


def invalid_request(message: str, parameters: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {
        "errors": [{"parameters": parameters or {}, "message": message}],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": PROBLEMS + "invalid-request",
    }


class BadRequest(Exception):
    """A request Twitter refuses whole with 400; `body` is its problem JSON."""

    def __init__(self, message: str, parameters: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.body = invalid_request(message, parameters)


_OPERATOR = re.compile(r"(?:^|(?<=[\s(\-]))([A-Za-z_]+):")


def rule_problems(value: str) -> list[str]:
    """Why Twitter would refuse a rule's value: `details` strings, empty when it is valid."""
    if not value.strip():
        return ["Rules must contain at least one term."]
    if len(value) > MAX_RULE_LENGTH:
        return [
            f"Rule length is {len(value)}; rules must be {MAX_RULE_LENGTH} characters or fewer."
        ]
    problems: list[str] = []
    unquoted: list[str] = []
    depth, in_quote, escaped, unbalanced = 0, False, False, False
    for ch in value:
        if in_quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
            unquoted.append(" ")  # operators inside a quoted phrase are plain text
            continue
        if ch == '"':
            in_quote = True
            unquoted.append(" ")
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            unbalanced = unbalanced or depth < 0
        unquoted.append(ch)
    if in_quote:
        problems.append("Rule has an unclosed double quote.")
    if unbalanced or depth != 0:
        problems.append("Rule has unbalanced parentheses.")
    for match in _OPERATOR.finditer("".join(unquoted)):
        name = match.group(1)
        if name not in OPERATORS:
            problems.append(
                f"Reference to invalid operator '{name}'. Operator is not available in current "
                "product or product packaging. Please refer to complete available operator list "
                "at https://developer.twitter.com/en/docs/twitter-api/tweets/filtered-stream/"
                "integrate/build-a-rule."
            )
    return problems


#: A rule's terms: a "quoted phrase" (perhaps negated), a parenthesis, or a run of other text.
_TERM = re.compile(r'-?"(?:[^"\\]|\\.)*"|[()]|[^\s()]+')


def rule_words(value: str) -> str:
    """Text a tweet must hold to match the rule: its keywords, "exact phrases", #hashtags,
    @mentions and $cashtags, which Twitter ANDs (and the alternatives of an OR, all of
    them, which matches too). Negated terms (`-cats`) and operators (`has:images`,
    `lang:en`, ...) are left out: they are not words of the text."""
    words = []
    for term in _TERM.findall(value):
        if term in ("(", ")", "OR") or term.startswith("-"):
            continue
        if term.startswith('"'):
            words.append(term[1:-1].replace('\\"', '"'))
        elif not _OPERATOR.match(term):
            words.append(term)
    return " ".join(words)


@dataclass(frozen=True)
class Rule:
    """One rule of an app; its `matching_rules` entries and the words a tweet matching it
    holds (JSON-escaped, for a tweet's text) are rendered once, at creation."""

    id: str
    value: str
    tag: str | None = None
    entry: bytes = field(default=b"", repr=False, compare=False)
    untagged_entry: bytes = field(default=b"", repr=False, compare=False)
    words: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, rule_id: str, value: str, tag: str | None) -> Rule:
        untagged = dumps({"id": rule_id})
        tagged = untagged if tag is None else dumps({"id": rule_id, "tag": tag})
        return cls(rule_id, value, tag, tagged, untagged, dumps(rule_words(value))[1:-1])

    def to_json(self) -> dict[str, str]:
        out = {"id": self.id, "value": self.value}
        if self.tag is not None:
            out["tag"] = self.tag
        return out


@dataclass
class AddOutcome:
    created: list[dict[str, str]]
    errors: list[dict[str, Any]]
    summary: dict[str, int]


class RuleBook:
    """One app's rules, in creation order, and Twitter's non-atomic way of changing them."""

    def __init__(self, next_id: Callable[[], str]) -> None:
        self.rules: dict[str, Rule] = {}
        self._next_id = next_id

    def current(self) -> list[Rule]:
        return list(self.rules.values())

    def add(self, wanted: list[tuple[str, str | None]], *, dry_run: bool, cap: int) -> AddOutcome:
        """Create every acceptable rule; refuse the others one by one, as Twitter does."""
        by_value = {rule.value: rule.id for rule in self.rules.values()}
        room = cap - len(self.rules)
        created: list[dict[str, str]] = []
        errors: list[dict[str, Any]] = []
        valid = invalid = 0
        for value, tag in wanted:
            details = rule_problems(value)
            if details:
                invalid += 1
                errors.append(
                    {
                        "value": value,
                        "details": details,
                        "title": "UnprocessableEntity",
                        "type": PROBLEMS + "invalid-rules",
                    }
                )
                continue
            if value in by_value:
                invalid += 1
                existing = {"id": by_value[value]} if by_value[value] else {}  # none in a dry run
                errors.append(
                    {"value": value}
                    | existing
                    | {"title": "DuplicateRule", "type": PROBLEMS + "duplicate-rules"}
                )
                continue
            valid += 1
            if room <= 0:
                errors.append(
                    {
                        "value": value,
                        "title": "RulesCapExceeded",
                        "detail": f"Rule creation would exceed the rule cap of {cap} for this app.",
                        "type": PROBLEMS + "rule-cap",
                    }
                )
                continue
            room -= 1
            if dry_run:
                by_value[value] = ""
                created.append({"value": value} | ({} if tag is None else {"tag": tag}))
                continue
            rule = Rule.make(self._next_id(), value, tag)
            self.rules[rule.id] = rule
            by_value[value] = rule.id
            created.append(
                {"value": value} | ({} if tag is None else {"tag": tag}) | {"id": rule.id}
            )
        if dry_run:
            return AddOutcome(created, errors, {"valid": valid, "invalid": invalid})
        summary = {
            "created": len(created),
            "not_created": len(wanted) - len(created),
            "valid": valid,
            "invalid": invalid,
        }
        return AddOutcome(created, errors, summary)

    def delete(
        self, ids: list[str], values: list[str], *, dry_run: bool
    ) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Delete what exists; each id or value that does not is an error, the rest go on."""
        by_value = {rule.value: rule.id for rule in self.rules.values()}
        found: list[str] = []
        errors: list[dict[str, Any]] = []
        for kind, items in (("ids", ids), ("values", values)):
            for item in items:
                rule_id = item if kind == "ids" else by_value.get(item)
                if rule_id is None or rule_id not in self.rules or rule_id in found:
                    errors.append(invalid_request("Rule does not exist", {kind: [item]}))
                else:
                    found.append(rule_id)
        if not dry_run:
            for rule_id in found:
                del self.rules[rule_id]
        return {"deleted": len(found), "not_deleted": len(errors)}, errors


def parse_rules_body(raw: bytes) -> tuple[list[tuple[str, str | None]], list[str], list[str]]:
    """(rules to add, ids to delete, values to delete) from a POST body; BadRequest if bad."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("Request contains an invalid JSON body") from None
    if not isinstance(body, dict) or len(set(body) & {"add", "delete"}) != 1 or len(body) != 1:
        raise BadRequest("The request body must hold exactly one of `add` or `delete`")
    if "add" in body:
        add = body["add"]
        if not isinstance(add, list) or not add:
            raise BadRequest("`add` must be a non-empty array of rules", {"add": [str(add)]})
        wanted: list[tuple[str, str | None]] = []
        for i, rule in enumerate(add):
            if (
                not isinstance(rule, dict)
                or not isinstance(rule.get("value"), str)
                or set(rule) - {"value", "tag"}
                or not isinstance(rule.get("tag", ""), str | None)
            ):
                raise BadRequest(
                    f"`add[{i}]` must be an object with a string `value` and an optional "
                    "string `tag`",
                    {f"add[{i}]": [json.dumps(rule)]},
                )
            wanted.append((rule["value"], rule.get("tag")))
        return wanted, [], []
    delete = body["delete"]
    if not isinstance(delete, dict) or not delete or set(delete) - {"ids", "values"}:
        raise BadRequest("`delete` must be an object with `ids` or `values`")
    ids = delete.get("ids", [])
    values = delete.get("values", [])
    if not isinstance(ids, list) or not isinstance(values, list) or not (ids or values):
        raise BadRequest("`delete.ids` and `delete.values` must be arrays, not both empty")
    for item in ids:
        if not (isinstance(item, str) and item.isdigit()):
            raise BadRequest(f"'{item}' is not a valid Long", {"ids": [str(item)]})
    if not all(isinstance(v, str) for v in values):
        raise BadRequest("`delete.values` must be strings")
    return [], ids, values


def parse_dry_run(params: dict[str, str]) -> bool:
    value = params.get("dry_run", "false")
    if value not in ("true", "false"):
        raise BadRequest(
            f"The `dry_run` query parameter value [{value}] is not one of [false,true]",
            {"dry_run": [value]},
        )
    return value == "true"
