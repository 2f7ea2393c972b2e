"""The v2 filtered stream's rules: what the API holds, what the registry wants, the difference.

On v2 the rules belong to the app (its bearer token), not to a connection: one filtered-stream
connection per credential carries the rules of every v2 filter using that credential, each rule
tagged with the names of the streams that want it (sorted, joined by commas; the API refuses
two rules with one value). Rules change through the rules API while the connection stays up.

Which held rules are sfmd's? Those whose tag names only streams sfmd knows (in the registry,
or deleted while this daemon ran). Anything else is foreign: reported, and deleted only when
`twitter.v2_prune_foreign_rules` says so.

Twitter's add is not atomic (valid rules are created, refused ones listed in `errors`, with a
2xx or a 4xx status), so new rule values are always tried with `dry_run=true` first: a refused
rule comes back to the caller, and nothing changes.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sfmd.credentials import Credential
from sfmd.errors import SfmdError, Unreachable

RULES_PATH = "/2/tweets/search/stream/rules"
BATCH = 100  # rules per add or delete request, well under the API's request size limits


class RulesUnavailable(Unreachable):
    """The rules API could not be asked (network, auth, an answer that makes no sense)."""

    code = "rules_unavailable"


class RulesRejected(SfmdError):
    """The API refused one or more rule values; `reasons` says why, value by value."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Rule:
    id: str
    value: str
    tag: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in self.tag.split(",") if n) if self.tag else ()

    def is_ours(self, known_names: Collection[str]) -> bool:
        """sfmd tags every rule it makes with stream names; an untagged rule is foreign."""
        return bool(self.names) and all(name in known_names for name in self.names)


def tag_for(names: Iterable[str]) -> str:
    return ",".join(sorted(set(names)))


@dataclass
class Plan:
    """What to do at the API: new values to validate, ids to delete, rules to add."""

    validate: list[str] = field(default_factory=list)
    delete: list[Rule] = field(default_factory=list)
    add: list[tuple[str, str]] = field(default_factory=list)  # (value, tag)
    keep: list[Rule] = field(default_factory=list)
    foreign: list[Rule] = field(default_factory=list)  # left alone

    @property
    def empty(self) -> bool:
        return not (self.delete or self.add)


def plan(
    wanted: Mapping[str, Collection[str]],
    held: Iterable[Rule],
    *,
    known_names: Collection[str],
    prune_foreign: bool,
) -> Plan:
    """The steps from `held` to `wanted` (rule value → names of the streams that want it).

    A held rule with a wanted value but another tag is replaced (tags cannot be edited); a
    held rule nobody wants is deleted if it is sfmd's (its tag names only `known_names`), or
    if foreign rules are to be pruned.
    """
    result = Plan()
    held_values: set[str] = set()
    for rule in held:
        names = wanted.get(rule.value)
        if names is not None and rule.tag == tag_for(names):
            result.keep.append(rule)
            held_values.add(rule.value)
        elif names is not None or rule.is_ours(known_names) or prune_foreign:
            result.delete.append(rule)
            if names is not None:
                held_values.add(rule.value)  # known valid: no dry run needed to re-add it
        else:
            result.foreign.append(rule)
    kept = {rule.value for rule in result.keep}
    for value, names in wanted.items():
        if value not in kept:
            result.add.append((value, tag_for(names)))
            if value not in held_values:
                result.validate.append(value)
    return result


class RulesApi:
    """The rules endpoint of one app, called with its bearer token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        credential: Credential,
        *,
        timeout: float = 30.0,
    ) -> None:
        self._session = session
        self._url = api_url.rstrip("/") + RULES_PATH
        self._credential = credential
        self._timeout = timeout

    async def get(self) -> list[Rule]:
        answer = await self._call("GET", None)
        data = answer.get("data", [])
        if not isinstance(data, list):
            raise RulesUnavailable("the rules API answered a `data` that is not a list")
        return _rules(data)

    async def check(self, values: list[str]) -> None:
        """Ask the API (dry run) whether it would take these values; RulesRejected if not."""
        for start in range(0, len(values), BATCH):
            batch = values[start : start + BATCH]
            answer = await self._call("POST", {"add": [{"value": v} for v in batch]}, dry_run=True)
            _raise_refusals(answer)

    async def add(self, rules: list[tuple[str, str]]) -> list[Rule]:
        created: list[Rule] = []
        for start in range(0, len(rules), BATCH):
            batch = rules[start : start + BATCH]
            body = {"add": [{"value": v, "tag": t} for v, t in batch]}
            answer = await self._call("POST", body)
            created += _rules(answer.get("data") or [])
            _raise_refusals(answer)
        return created

    async def delete(self, ids: list[str]) -> None:
        for start in range(0, len(ids), BATCH):
            answer = await self._call("POST", {"delete": {"ids": ids[start : start + BATCH]}})
            errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)]
            # An id the API no longer holds is what we wanted anyway; anything else is not.
            serious = [e for e in errors if "does not exist" not in json.dumps(e).lower()]
            if serious:
                raise RulesUnavailable(f"the rules API refused a delete: {_reasons(serious)[0]}")

    async def _call(
        self, method: str, body: dict[str, Any] | None, *, dry_run: bool = False
    ) -> dict[str, Any]:
        if not self._credential.bearer_token:
            raise RulesUnavailable(
                f"credential {self._credential.name!r} has no bearer_token; v2 streams need one"
            )
        headers = {"Authorization": f"Bearer {self._credential.bearer_token}"}
        params = {"dry_run": "true"} if dry_run else None
        try:
            async with self._session.request(
                method,
                self._url,
                params=params,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RulesUnavailable(
                f"the rules API could not be reached at {self._url}: {type(e).__name__}"
            ) from None
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise RulesUnavailable(f"the rules API answered HTTP {status} with no JSON object")
        if status >= 400 and not answer.get("errors"):
            detail = answer.get("detail") or answer.get("title") or ""
            raise RulesUnavailable(f"the rules API answered HTTP {status} {detail}".strip())
        return answer


def _rules(data: list[Any]) -> list[Rule]:
    return [
        Rule(item["id"], str(item.get("value", "")), str(item.get("tag", "")))
        for item in data
        if isinstance(item, dict) and isinstance(item.get("id"), str)
    ]


def _reasons(errors: list[dict[str, Any]]) -> list[str]:
    reasons = []
    for error in errors:
        value = error.get("value")
        details = error.get("details")
        why = "; ".join(map(str, details)) if isinstance(details, list) and details else (
            error.get("detail") or error.get("message") or error.get("title") or "refused"
        )
        reasons.append(f"rule {value!r}: {why}" if value is not None else str(why))
    return reasons


def _raise_refusals(answer: dict[str, Any]) -> None:
    """A refusal arrives as `errors` (with a 2xx or a 4xx status) or as a summary count."""
    errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)]
    summary = (answer.get("meta") or {}).get("summary") or {}
    invalid = summary.get("invalid", 0) if isinstance(summary, dict) else 0
    if errors:
        raise RulesRejected(_reasons(errors))
    if isinstance(invalid, int) and invalid > 0:
        raise RulesRejected([f"{invalid} rule(s) refused by the API, with no reason given"])
