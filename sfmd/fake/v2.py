"""The simulated Twitter API v2, mounted on the fake server (`sfmd.fake.server`) beside v1.1:
bearer auth, the filtered stream's rules, and the filtered and sample streams, with the same
settings, sequence numbers, fault script and record of sent messages.

Rules and the connection limit belong to an app, which is its bearer token: every credential
with the same `bearer_token` is the same app. Without a credentials file any bearer token is
accepted and each distinct one is an app labelled `app-1`, `app-2`, ...

Wire shapes, as api.twitter.com sends them (JSON compact on streams, `sent` is ISO-8601 UTC
with milliseconds, every id is a string of digits):

- Auth: `Authorization: Bearer <token>`. Missing or unknown: 401, `application/problem+json`,
  `{"title":"Unauthorized","type":"about:blank","status":401,"detail":"Unauthorized"}`.
- Problems (`application/problem+json`): an HTTP error from a fault is `{"title": phrase,
  "detail": phrase, "type": "about:blank", "status": N}`. A bad request (400) is
  `{"errors": [{"parameters": {NAME: [VALUE]}, "message": "..."}], "title": "Invalid Request",
  "detail": "One or more parameters to your request was invalid.",
  "type": "https://api.twitter.com/2/problems/invalid-request"}`; unknown query parameters and
  unknown `*.fields` / `expansions` values are refused this way, as Twitter does.
- `GET /2/tweets/search/stream/rules[?ids=1,2]` → 200 `{"data": [{"id", "value", "tag"?}],
  "meta": {"sent", "result_count"}}`; no `data` key when there are no rules. `max_results`
  and `pagination_token` are accepted and ignored: every rule comes in one page.
- `POST /2/tweets/search/stream/rules[?dry_run=true]`, body `{"add": [{"value", "tag"?}]}` or
  `{"delete": {"ids": [...]}}` or `{"delete": {"values": [...]}}` (one of add/delete).
  Adding is NOT atomic: valid rules are created, refused ones are listed in `errors`:
  `{"data": [{"value", "tag"?, "id"}], "meta": {"sent", "summary": {"created",
  "not_created", "valid", "invalid"}}, "errors": [...]}`, 201 when a rule was created, else
  200 (`data` / `errors` absent when empty). With `dry_run=true` nothing is stored, `data`
  lists the rules that would be created (without ids) and the summary holds `valid` and
  `invalid` only. The setting `rules_errors_as_http` answers 400 instead of 200/201 whenever
  `errors` is not empty; the body and what was stored stay the same. Refusals, per rule:
  - `{"value", "details": ["Reference to invalid operator 'x'. ..."], "title":
    "UnprocessableEntity", "type": "https://api.twitter.com/2/problems/invalid-rules"}` for an
    unknown `word:` operator, unbalanced parentheses or quotes, or a value of 0 or over 512
    characters;
  - `{"value", "id": EXISTING, "title": "DuplicateRule",
    "type": "https://api.twitter.com/2/problems/duplicate-rules"}` for a value the app (or an
    earlier rule of the same request) already has;
  - `{"value", "title": "RulesCapExceeded", "detail": "...",
    "type": "https://api.twitter.com/2/problems/rule-cap"}` past `max_rules` (a valid rule).
  Deleting answers 200 `{"meta": {"sent", "summary": {"deleted", "not_deleted"}},
  "errors": [...]}` with one invalid-request entry per unknown id or value; a non-numeric id
  is a 400 (`'x' is not a valid Long`). Rule ids are increasing numeric strings above 2^53.
- `GET /2/tweets/search/stream` and `GET /2/tweets/sample/stream` (query: `tweet.fields`,
  `expansions`, `user.fields`, `media.fields`, `place.fields`, `poll.fields`,
  `backfill_minutes`, recorded in `ConnectionRecord.params`): 200, chunked,
  `application/json`; one JSON object per `\\r\\n`-ended line; a bare `\\r\\n` is a
  keep-alive. A tweet is `{"data": {"id", "text", "author_id", "created_at",
  "edit_history_tweet_ids"}, "includes": {"users": [...]}, "matching_rules": [{"id",
  "tag"?}]}` padded (in `text`) to `message_size`; the sample stream has no
  `matching_rules`. A filtered tweet's text holds the words of the rules it names
  (`rulebook.rule_words`: keywords, quoted phrases, hashtags, mentions; not negated terms or
  operators), so it matches them as Twitter would. One connection per app per endpoint: a
  second one gets 429
  `{"title": "ConnectionException", "detail": "This stream is currently at the maximum
  allowed connection limit.", "connection_issue": "TooManyConnections",
  "type": "https://api.twitter.com/2/problems/streaming-connection"}`.
- Routing: each filtered message matches the app's rules as they are when it is sent (rule
  changes apply without reconnecting), round-robin; every `multi_match_every`th message also
  matches the next rule; every `untagged_every`th names its rules without tags (as does any
  rule added without a tag). An app without rules gets keep-alives only.
- In-stream errors (faults): `{"errors": [{"title": "operational-disconnect",
  "disconnect_type": "OperationalDisconnect", "detail": "This stream has been disconnected
  for operational reasons.", "type": "https://api.twitter.com/2/problems/
  operational-disconnect"}]}` then the end of the body (or, with `disconnect_shape:
  "type_only"`, `{"errors": [{"disconnect_type": "OperationalDisconnect"}]}`); a non-fatal
  `{"errors": [{..."type": "https://api.twitter.com/2/problems/resource-not-found"}]}` after
  which the stream goes on.

Faults name the endpoints `v2/filter`, `v2/sample`, `v2/stream` (either) and `v2/rules`.
Stream faults: `status` (+ `body`, `headers`, `reset_in` seconds for `x-rate-limit-*`
headers), `cut_after`, `stall_after`, `disconnect_after` (+ `disconnect_shape`),
`error_after`, `oversized_after` (+ `size`, default 1 MiB), `malformed_after`, `delay`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from sfmd.credentials import Credential
from sfmd.fake.faults import TRIGGERS
from sfmd.fake.mount import (
    ConnectionRecord,
    Handler,
    Host,
    StreamHandle,
    abort_when_flushed,
    dumps,
    reason_phrase,
    stream_body,
)
from sfmd.fake.pacing import Pacer, block_count, next_batch
from sfmd.fake.rulebook import (
    PROBLEMS,
    BadRequest,
    Rule,
    RuleBook,
    parse_dry_run,
    parse_rules_body,
)
from sfmd.fake.settings import Settings

FILTER_PATH = "/2/tweets/search/stream"
SAMPLE_PATH = "/2/tweets/sample/stream"
RULES_PATH = "/2/tweets/search/stream/rules"
API_PATHS = {FILTER_PATH: "v2/filter", SAMPLE_PATH: "v2/sample", RULES_PATH: "v2/rules"}

#: The first rule id: above 2^53 like Twitter's, and apart from the tweet ids.
FIRST_RULE_ID = 1_600_000_000_000_000_000
OVERSIZED_DEFAULT = 1024 * 1024
PROBLEM_JSON = "application/problem+json"

#: What each list parameter of the streams may hold (a superset of what twarc asks for).
STREAM_PARAMS: dict[str, frozenset[str]] = {
    "expansions": frozenset(
        "attachments.media_keys attachments.poll_ids author_id edit_history_tweet_ids "
        "entities.mentions.username geo.place_id in_reply_to_user_id referenced_tweets.id "
        "referenced_tweets.id.author_id".split()
    ),
    "tweet.fields": frozenset(
        "attachments author_id card_uri context_annotations conversation_id created_at "
        "edit_controls edit_history_tweet_ids entities geo id in_reply_to_user_id lang "
        "non_public_metrics note_tweet organic_metrics possibly_sensitive promoted_metrics "
        "public_metrics referenced_tweets reply_settings source text withheld".split()
    ),
    "user.fields": frozenset(
        "connection_status created_at description entities id location most_recent_tweet_id "
        "name pinned_tweet_id profile_image_url protected public_metrics receives_your_dm "
        "subscription_type url username verified verified_type withheld".split()
    ),
    "media.fields": frozenset(
        "alt_text duration_ms height media_key non_public_metrics organic_metrics "
        "preview_image_url promoted_metrics public_metrics type url variants width".split()
    ),
    "place.fields": frozenset(
        "contained_within country country_code full_name geo id name place_type".split()
    ),
    "poll.fields": frozenset("duration_minutes end_datetime id options voting_status".split()),
}
STREAM_QUERY = frozenset({*STREAM_PARAMS, "backfill_minutes"})
RULES_QUERY = {
    "GET": frozenset({"ids", "max_results", "pagination_token"}),
    "POST": frozenset({"dry_run"}),
}

UNAUTHORIZED = {
    "title": "Unauthorized",
    "type": "about:blank",
    "status": 401,
    "detail": "Unauthorized",
}
TOO_MANY_CONNECTIONS = {
    "title": "ConnectionException",
    "detail": "This stream is currently at the maximum allowed connection limit.",
    "connection_issue": "TooManyConnections",
    "type": PROBLEMS + "streaming-connection",
}
OPERATIONAL_DISCONNECT = {
    "full": {
        "errors": [
            {
                "title": "operational-disconnect",
                "disconnect_type": "OperationalDisconnect",
                "detail": "This stream has been disconnected for operational reasons.",
                "type": PROBLEMS + "operational-disconnect",
            }
        ]
    },
    "type_only": {"errors": [{"disconnect_type": "OperationalDisconnect"}]},
}
#: Triggers whose message is a tweet, so a filtered stream holds them until it has a rule.
_TWEET_TRIGGERS = frozenset({"cut_after", "oversized_after", "malformed_after"})


# --------------------------------------------------------------------------- answers


def iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def http_problem(status: int) -> dict[str, Any]:
    phrase = reason_phrase(status)
    return {"title": phrase, "detail": phrase, "type": "about:blank", "status": status}


def check_query(params: dict[str, str], known: frozenset[str]) -> None:
    """Twitter refuses unknown query parameters and unknown field names."""
    for name, value in params.items():
        if name not in known:
            raise BadRequest(
                f"The query parameter [{name}] is not one of [{','.join(sorted(known))}]",
                {name: [value]},
            )
        allowed = STREAM_PARAMS.get(name)
        if allowed is None:
            continue
        for item in value.split(","):
            if item not in allowed:
                raise BadRequest(
                    f"The `{name}` query parameter value [{item}] is not one of "
                    f"[{','.join(sorted(allowed))}]",
                    {name: [value]},
                )
    backfill = params.get("backfill_minutes")
    if backfill is not None and not (backfill.isdigit() and int(backfill) <= 5):
        raise BadRequest(
            "The `backfill_minutes` query parameter value must be an integer from 0 to 5",
            {"backfill_minutes": [backfill]},
        )


# --------------------------------------------------------------------------- messages

_ID_MARK = "9999999999999999901"
_PAD_MARK = "@@PADDING@@"
_TEXT = "Fake tweet from sfmd fakeapi \u2014 caf\u00e9 \u2615 #fakeapi "
_FILLER = (
    b"Simulated tweet text for load and fault testing; every byte here is padding so that "
    b"messages reach a realistic size. "
)
_AUTHOR = {
    "id": "2244994945",
    "name": "Fake API",
    "username": "sfmd_fakeapi",
    "created_at": "2018-01-01T00:00:00.000Z",
    "description": "A simulated account. It never sleeps.",
    "protected": False,
    "verified": False,
    "public_metrics": {
        "followers_count": 1234,
        "following_count": 56,
        "tweet_count": 4321,
        "listed_count": 7,
    },
}


@functools.lru_cache(maxsize=64)
def _filler(size: int) -> bytes:
    """Padding of `size` bytes; cached because a stream needs the same few sizes again."""
    return (_FILLER * (size // len(_FILLER) + 1))[:size]


@dataclass(frozen=True)
class _Shape:
    """A tweet cut where its two ids, its padding and its matching_rules go."""

    head: bytes  # ... "id":"
    before_pad: bytes  # ","text":"Fake tweet ...
    after_pad: bytes  # ","author_id":... "edit_history_tweet_ids":["
    tail: bytes  # "]},"includes":{...}   (the closing brace comes after matching_rules)

    def build(self, seq: int, size: int, rules_part: bytes, words: bytes = b"") -> bytes:
        """The tweet; `words` (JSON-escaped) go into its text before the padding, so that
        it matches the rules it names."""
        digits = b"%d" % seq
        fixed = len(self.head) + len(self.before_pad) + len(self.after_pad) + len(self.tail)
        pad = max(0, size - fixed - 2 * len(digits) - len(rules_part) - len(words) - 1)
        return b"".join(
            (
                self.head,
                digits,
                self.before_pad,
                words,
                _filler(pad),
                self.after_pad,
                digits,
                self.tail,
                rules_part,
                b"}",
            )
        )


class MessageFactory:
    """v2 tweets from a per-second template: only ids, padding and matching_rules change."""

    def __init__(self) -> None:
        self._second = -1
        self._shape: _Shape | None = None

    def shape(self) -> _Shape:
        second = int(time.time())
        if self._shape is not None and self._second == second:
            return self._shape
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(second))
        obj = {
            "data": {
                "id": _ID_MARK,
                "text": _TEXT + _PAD_MARK,
                "author_id": _AUTHOR["id"],
                "created_at": created,
                "edit_history_tweet_ids": [_ID_MARK],
            },
            "includes": {"users": [_AUTHOR]},
        }
        raw = dumps(obj)
        head, middle, tail = raw[:-1].split(_ID_MARK.encode())
        before_pad, after_pad = middle.split(_PAD_MARK.encode())
        self._second, self._shape = second, _Shape(head, before_pad, after_pad, tail)
        return self._shape

    def tweet(self, seq: int, size: int, matched: list[Rule] | None, tagged: bool = True) -> bytes:
        return self.shape().build(seq, size, rules_part(matched, tagged), words_part(matched))

    @staticmethod
    def malformed(seq: int) -> bytes:
        return b'{"data":{"id":"%d","text":"this object never ends' % seq

    @staticmethod
    def error() -> bytes:
        """A non-fatal in-stream error: the stream goes on after it."""
        missing = "20"  # Twitter's first tweet, as good a missing reference as any
        return dumps(
            {
                "errors": [
                    {
                        "value": missing,
                        "detail": f"Could not find tweet with id: [{missing}].",
                        "title": "Not Found Error",
                        "resource_type": "tweet",
                        "parameter": "id",
                        "resource_id": missing,
                        "type": PROBLEMS + "resource-not-found",
                    }
                ]
            }
        )


def rules_part(matched: list[Rule] | None, tagged: bool) -> bytes:
    if matched is None:
        return b""
    entries = b",".join(r.entry if tagged else r.untagged_entry for r in matched)
    return b',"matching_rules":[' + entries + b"]"


def words_part(matched: list[Rule] | None) -> bytes:
    """What goes into the text of a tweet matching these rules: each rule's words, then a
    space before the padding."""
    if not matched:
        return b""
    return b" ".join(r.words for r in matched if r.words) + b" "


def route(rules: list[Rule], position: int, settings: Settings) -> tuple[list[Rule], bool]:
    """The rules the `position`th message (1-based) of a connection matches, and if tagged."""
    matched = [rules[(position - 1) % len(rules)]]
    every = settings.multi_match_every
    if every and position % every == 0 and len(rules) > 1:
        matched.append(rules[position % len(rules)])
    every = settings.untagged_every
    return matched, not (every and position % every == 0)


# --------------------------------------------------------------------------- the v2 API


@dataclass(frozen=True)
class App:
    """A bearer token's app. The token is its identity and is never shown."""

    token: str = field(repr=False)
    label: str


class V2API:
    """The v2 routes of a FakeAPI: rules per app, streams, and the rules each message matched."""

    def __init__(self, host: Host, credentials: dict[str, Credential] | None) -> None:
        self._host = host
        self._by_name: dict[str, str] | None = None
        self._labels: dict[str, str] = {}  # token -> label
        if credentials is not None:
            self._by_name = {n: c.bearer_token for n, c in credentials.items() if c.bearer_token}
            for name in sorted(self._by_name):
                token = self._by_name[name]
                self._labels[token] = (
                    f"{self._labels[token]},{name}" if token in self._labels else name
                )
        self._books: dict[str, RuleBook] = {}
        self._holders: dict[tuple[str, str], StreamHandle] = {}
        #: conn -> the rule ids of each message `Host.record_sent` kept, in the same order.
        self._matched: dict[int, list[list[str]]] = {}
        self._next_rule_id = FIRST_RULE_ID
        self._factory = MessageFactory()

    def add_routes(self, app: web.Application, handler: Callable[[str], Handler]) -> None:
        """Mount the API paths on the server's `handler`, and the v2 control routes."""
        app.router.add_get(FILTER_PATH, handler(API_PATHS[FILTER_PATH]))
        app.router.add_get(SAMPLE_PATH, handler(API_PATHS[SAMPLE_PATH]))
        rules = handler(API_PATHS[RULES_PATH])
        app.router.add_get(RULES_PATH, rules)
        app.router.add_post(RULES_PATH, rules)
        app.router.add_get("/_fake/v2/rules", self._control_rules)
        app.router.add_get("/_fake/v2/sent/{conn}", self._control_sent)

    # ---- the test-facing API

    def rules(self, app: str) -> list[dict[str, str]]:
        """An app's rules (by credential name, or `app-N` without credentials), in order."""
        book = self._books.get(self._token_of(app))
        return [rule.to_json() for rule in book.current()] if book else []

    def all_rules(self) -> dict[str, list[dict[str, str]]]:
        names = self._by_name or {label: token for token, label in self._labels.items()}
        return {name: self.rules(name) for name in sorted(names)}

    def sent(self, conn: int) -> list[tuple[bytes, list[str]]]:
        """(message, matched rule ids) for each message fully sent on `conn`, if recording."""
        matched = self._matched.get(conn)
        if matched is None:
            return []
        return list(zip(self._host.sent_messages(conn), matched, strict=True))

    def reset(self) -> None:
        self._books.clear()
        self._matched.clear()
        if self._by_name is None:
            self._labels.clear()

    def _token_of(self, app: str) -> str:
        if self._by_name is not None:
            if app not in self._by_name:
                raise KeyError(f"no credential {app!r} with a bearer_token")
            return self._by_name[app]
        for token, label in self._labels.items():
            if label == app:
                return token
        raise KeyError(f"no app {app!r}")

    # ---- requests

    async def serve(self, request: web.Request, stream: StreamHandle) -> web.StreamResponse:
        """Answer one v2 request whose record `FakeAPI` has opened."""
        record = stream.record
        raw = await request.read()
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        record.params = params
        fault = self._host.take_fault(record.endpoint)
        record.fault = fault
        if fault and fault.get("delay"):
            loop = asyncio.get_running_loop()
            await stream.sleep_until(loop.time() + fault["delay"])
            if stream.stop_reason:
                return self._reply(record, 503, http_problem(503))
        if fault and "status" in fault:
            return self._status_fault(record, fault)
        app = self._authenticate(request)
        if app is None:
            response = self._reply(record, 401, UNAUTHORIZED)
            response.force_close()
            return response
        record.auth_ok = True
        record.credential = app.label
        try:
            if record.endpoint == "v2/rules":
                return self._rules_call(request.method, raw, record, app)
            check_query(params, STREAM_QUERY)
        except BadRequest as e:
            return self._reply(record, 400, e.body)
        return await self._stream(request, stream, app)

    def _authenticate(self, request: web.Request) -> App | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if self._by_name is None:
            self._labels.setdefault(token, f"app-{len(self._labels) + 1}")
        label = self._labels.get(token)
        return None if label is None else App(token, label)

    def _reply(
        self,
        record: ConnectionRecord,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = PROBLEM_JSON,
    ) -> web.Response:
        """A JSON answer; Twitter sends its errors as `application/problem+json`."""
        record.status = status
        record.first_byte = time.monotonic()
        return web.json_response(body, status=status, headers=headers, content_type=content_type)

    def _status_fault(self, record: ConnectionRecord, fault: dict[str, Any]) -> web.Response:
        status = fault["status"]
        headers = dict(fault.get("headers", {}))
        if "reset_in" in fault:
            headers["x-rate-limit-limit"] = "50"
            headers["x-rate-limit-remaining"] = "0"
            headers["x-rate-limit-reset"] = str(int(time.time() + fault["reset_in"]))
        if "body" not in fault:
            return self._reply(record, status, http_problem(status), headers)
        record.status = status
        record.first_byte = time.monotonic()
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json; charset=utf-8"
        return web.Response(status=status, body=fault["body"].encode(), headers=headers)

    # ---- rules

    def _book(self, token: str) -> RuleBook:
        book = self._books.get(token)
        if book is None:
            book = self._books[token] = RuleBook(self._new_rule_id)
        return book

    def _new_rule_id(self) -> str:
        self._next_rule_id += 1
        return str(self._next_rule_id)

    def _rules_call(
        self, method: str, raw: bytes, record: ConnectionRecord, app: App
    ) -> web.Response:
        check_query(record.params, RULES_QUERY[method])
        book = self._book(app.token)
        meta: dict[str, Any] = {"sent": iso_now()}
        if method == "GET":
            wanted = set(record.params.get("ids", "").split(",")) - {""}
            data = [r.to_json() for r in book.current() if not wanted or r.id in wanted]
            meta["result_count"] = len(data)
            record.summary = {"result_count": len(data)}
            return self._answer(record, 200, ({"data": data} if data else {}) | {"meta": meta})

        dry_run = parse_dry_run(record.params)
        add, ids, values = parse_rules_body(raw)
        body: dict[str, Any] = {}
        if add:
            outcome = book.add(add, dry_run=dry_run, cap=self._host.settings.max_rules)
            if outcome.created:
                body["data"] = outcome.created
            summary, errors = outcome.summary, outcome.errors
            status = 201 if summary.get("created") else 200
        else:
            summary, errors = book.delete(ids, values, dry_run=dry_run)
            status = 200
        body["meta"] = meta | {"summary": summary}
        if errors:
            body["errors"] = errors
            if add and self._host.settings.rules_errors_as_http:
                status = 400
        record.summary = {"dry_run": dry_run, "add": len(add), "delete": len(ids) + len(values)}
        record.summary.update(summary)
        if not dry_run:
            self._rules_changed(app)
        return self._answer(record, status, body)

    def _answer(self, record: ConnectionRecord, status: int, body: Any) -> web.Response:
        """A rules answer: plain JSON, even when it carries `errors`."""
        return self._reply(record, status, body, content_type="application/json")

    def _rules_changed(self, app: App) -> None:
        holder = self._holders.get((app.token, "v2/filter"))
        if holder is not None:
            holder.wake.set()  # an idle filtered stream starts (or stops) at once
        self._host.notify()

    # ---- streams

    async def _stream(
        self, request: web.Request, stream: StreamHandle, app: App
    ) -> web.StreamResponse:
        record = stream.record
        key = (app.token, record.endpoint)
        if key in self._holders:
            return self._reply(record, 429, TOO_MANY_CONNECTIONS)
        self._holders[key] = stream
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "x-rate-limit-limit": "50",
            "x-rate-limit-remaining": "49",
            "x-rate-limit-reset": str(int(time.time()) + 900),
        }
        try:
            return await stream_body(
                request, stream, self._host, headers,
                lambda response: self._pump(request, stream, response, app),
            )
        finally:
            if self._holders.get(key) is stream:
                del self._holders[key]

    async def _pump(
        self,
        request: web.Request,
        stream: StreamHandle,
        response: web.StreamResponse,
        app: App,
    ) -> None:
        """Send tweets, keep-alives and the scripted fault until the stream must end."""
        loop = asyncio.get_running_loop()
        record = stream.record
        filtered = record.endpoint == "v2/filter"
        book = self._book(app.token)
        fault = record.fault or {}
        trigger = next((k for k in TRIGGERS if k in fault), None)
        trigger_at: int | None = fault[trigger] if trigger else None
        pacer = Pacer()
        last_write = loop.time()
        while not stream.stop_reason:
            settings = self._host.settings
            sent = record.sent_count
            rules = book.current() if filtered else None
            can_tweet = not filtered or bool(rules)
            if trigger_at == sent and (can_tweet or trigger not in _TWEET_TRIGGERS):
                trigger_at = None
                assert trigger is not None
                if await self._fire(trigger, fault, request, stream, response, rules):
                    return
                last_write = loop.time()
                continue

            count, last_write = await next_batch(
                stream, response, pacer, settings,
                want=block_count(settings.message_size) if can_tweet else 0,
                sent=sent, trigger_at=trigger_at, last_write=last_write,
            )
            if count <= 0:
                continue

            first = self._host.allocate(count)
            messages: list[bytes] = []
            matched: list[list[str]] = []
            for offset in range(count):
                message, ids = self._tweet(first + offset, sent + offset + 1, rules, settings)
                messages.append(message)
                matched.append(ids)
            await response.write(b"\r\n".join(messages) + b"\r\n")
            record.sent_count += count
            record.add_seqs(first, first + count - 1)
            if settings.record_bytes:
                self._host.record_sent(record.conn, messages)
                self._matched.setdefault(record.conn, []).extend(matched)
            self._host.notify()
            last_write = loop.time()
            await asyncio.sleep(0)  # a fast reader never blocks the write: let others run

    def _tweet(
        self,
        seq: int,
        position: int,
        rules: list[Rule] | None,
        settings: Settings,
        size: int | None = None,
    ) -> tuple[bytes, list[str]]:
        size = settings.message_size if size is None else size
        if not rules:
            return self._factory.tweet(seq, size, None), []
        matched, tagged = route(rules, position, settings)
        return self._factory.tweet(seq, size, matched, tagged), [r.id for r in matched]

    async def _send_one(
        self,
        stream: StreamHandle,
        response: web.StreamResponse,
        message: bytes,
        matched: list[str],
        seq: int | None,
    ) -> None:
        """Send one special message (a fault's); error objects carry no sequence number."""
        record = stream.record
        await response.write(message + b"\r\n")
        record.sent_count += 1
        if seq is not None:
            record.add_seqs(seq, seq)
        if self._host.settings.record_bytes:
            self._host.record_sent(record.conn, [message])
            self._matched.setdefault(record.conn, []).append(matched)
        self._host.notify()

    async def _fire(
        self,
        trigger: str,
        fault: dict[str, Any],
        request: web.Request,
        stream: StreamHandle,
        response: web.StreamResponse,
        rules: list[Rule] | None,
    ) -> bool:
        """Play the scripted fault; True when the stream is over."""
        record = stream.record
        settings = self._host.settings
        position = record.sent_count + 1
        if trigger == "stall_after":
            while not stream.stop_reason:
                await stream.sleep_until(None)
            return True
        if trigger == "disconnect_after":
            shape = fault.get("disconnect_shape", "full")
            await self._send_one(stream, response, dumps(OPERATIONAL_DISCONNECT[shape]), [], None)
            record.close_reason = "operational_disconnect"
            response.force_close()
            return True
        if trigger == "error_after":
            await self._send_one(stream, response, MessageFactory.error(), [], None)
            return False
        seq = self._host.allocate(1)
        if trigger == "malformed_after":
            await self._send_one(stream, response, MessageFactory.malformed(seq), [], seq)
            return False
        size = fault.get("size", OVERSIZED_DEFAULT) if trigger == "oversized_after" else None
        message, matched = self._tweet(seq, position, rules, settings, size)
        if trigger == "oversized_after":
            await self._send_one(stream, response, message, matched, seq)
            return False
        # cut_after: half a message, then a dropped connection.
        framed = message + b"\r\n"
        await response.write(framed[: len(framed) // 2])
        record.partial_seq = seq
        record.close_reason = "cut"
        await abort_when_flushed(request, stream)
        return True

    # ---- control endpoints

    async def _control_rules(self, request: web.Request) -> web.Response:
        return web.json_response(self.all_rules())

    async def _control_sent(self, request: web.Request) -> web.Response:
        try:
            conn = int(request.match_info["conn"])
        except ValueError:
            return web.json_response({"error": "conn must be a number"}, status=400)
        return web.json_response(
            [{"message": m.decode(), "rules": ids} for m, ids in self.sent(conn)]
        )
