"""A simulated Mastodon instance, mounted on the fake server (`sfmd.fake.server`): the REST API
on the server's port and the streaming server on a second port, as real instances often split
them. The statuses and their timelines are in `sfmd.fake.timelines`.

Following mastodon/mastodon (4.x: `streaming/index.js` and the API controllers):

- Discovery: `GET /api/v2/instance` (no token needed) names the streaming server in
  `configuration.urls.streaming` (`ws://HOST:STREAMPORT`). The streaming port answers
  `GET /api/v1/streaming/health` with `OK` and the WebSocket `GET /api/v1/streaming`; the
  REST port serves no streaming path.
- Tokens: `Authorization: Bearer TOKEN`, else the `access_token` query parameter, else (the
  streaming server only) `Sec-WebSocket-Protocol`, which is then echoed. With credentials the
  valid tokens are their `mastodon_token`s (a token's owner is the credential's name); without,
  any non-empty token is valid and each distinct one is `token-1`, `token-2`, ...
  A missing or unknown token at the upgrade: a plain HTTP 401 with `X-Error-Message`
  (`Missing access token` / `Invalid access token`); on REST, 401
  `{"error": "The access token is invalid"}`.
- Streaming: text messages `{"type": "subscribe"|"unsubscribe", "stream": KIND, "tag": ...,
  "list": ...}` (or `?stream=KIND&tag=...&list=...` at connect). Frames are
  `{"stream": [...], "event": "update"|"delete"|"status.update", "payload": "..."}`; the
  stream array carries the tag or list id as the client spelled it. Each subscription gets its
  own copy of a status that several of them match. Subscribing twice to the same timeline is
  a no-op (hashtags are matched case-insensitively, as Mastodon normalizes them). A bad
  subscribe gets `{"error": "Unknown stream type" | "Missing tag name parameter" |
  "Missing list name parameter", "status": 400}` or, for a list the token does not own,
  `{"error": "Not authorized to stream this list", "status": 401}`; a bad unsubscribe gets
  `{"error": "Error unsubscribing from channel"}`. Other messages are ignored.
- Pings: every `mastodon_ping_interval` s the server drops (no close frame) a socket that did
  not answer its previous ping, and pings the others.
- REST timelines with Mastodon's paging (`max_id`, `since_id`, `min_id`, `limit` default 20,
  at most 40; newest first; `Link` next/prev when the page is not empty) and rack-attack's
  rate limit per token (per address without one): `X-RateLimit-Limit`, `-Remaining`,
  `-Reset` on every answer, 429 `{"error": "Too many requests"}` once exhausted. Answers are
  JSON as Rails writes it ('<', '>', '&' escaped as \\u003c, \\u003e, \\u0026).

Faults (endpoints `mastodon/streaming`, `mastodon/timelines`, `mastodon/instance`; see
`sfmd.fake.faults`) take effect on the next matching request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from sfmd.credentials import Credential
from sfmd.fake.faults import MASTODON_INSTANCE, MASTODON_STREAMING, MASTODON_TIMELINES
from sfmd.fake.mount import (
    ConnectionRecord,
    Handler,
    Host,
    StreamHandle,
    abort_when_flushed,
    reason_phrase,
    serve_socket,
)
from sfmd.fake.settings import FakeAPIError
from sfmd.fake.timelines import (
    KINDS,
    LOCAL_ACCOUNTS,
    LOCAL_DOMAIN,
    Status,
    TimelineStore,
    dumps,
    normalize_tag,
    rails_dumps,
)

STREAMING_PATH = "/api/v1/streaming"
HEALTH_PATH = "/api/v1/streaming/health"
INSTANCE_PATH = "/api/v2/instance"
TIMELINE_PATHS = {
    "/api/v1/timelines/public": "public",
    "/api/v1/timelines/tag/{tag}": "tag",
    "/api/v1/timelines/list/{list}": "list",
    "/api/v1/timelines/home": "home",
}
#: The query parameters each timeline carries into its Link header, as Mastodon permits them.
_LINK_PARAMS = {
    "public": ("local", "remote", "limit", "only_media"),
    "tag": ("local", "limit", "only_media"),
    "list": ("limit",),
    "home": ("local", "limit"),
}
DEFAULT_LIMIT = 20
MAX_LIMIT = 40
#: ActiveModel's false values; anything else non-empty is true.
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "off", "OFF"})
_INVALID_TOKEN = {"error": "The access token is invalid"}


class _StreamError(ValueError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Connection:
    """One open streaming socket: its subscriptions, its outbox and its ping state."""

    request: web.Request
    stream: StreamHandle
    ws: web.WebSocketResponse
    #: (kind, normalized tag or list id) -> the stream array frames carry.
    subs: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    outbox: deque[tuple[str, bool]] = field(default_factory=deque)  # (text, is an event)
    alive: bool = True
    stalled: bool = False
    #: Pings that came during a stall, answered when it ends (a stalled server reads nothing).
    unanswered: list[bytes] = field(default_factory=list)


@dataclass
class _Bucket:
    """rack-attack's fixed window: requests counted per epoch-aligned period."""

    period_start: float = 0.0
    count: int = 0
    held_until: float = 0.0  # a scripted 429 holds the bucket empty until then


class MastodonAPI:
    """The Mastodon instance of a FakeAPI: statuses, REST timelines and the streaming server."""

    def __init__(self, host: Host, credentials: dict[str, Credential] | None) -> None:
        self._host = host
        self._owners: dict[str, str] | None = None  # token -> credential name
        if credentials is not None:
            self._owners = {}
            for name in sorted(credentials):
                token = credentials[name].mastodon_token
                if token:
                    self._owners.setdefault(token, name)
        self._labels: dict[str, str] = {}  # token -> token-N, without credentials
        self.store = TimelineStore(host.settings.mastodon_seed)
        self._conns: dict[int, _Connection] = {}
        self._subscriptions: dict[int, list[dict[str, Any]]] = {}
        self._requests: list[dict[str, Any]] = []
        self._buckets: dict[str, _Bucket] = {}
        self._repeat: tuple[dict[str, Any], int] | None = None  # a REST fault with times left
        self._streaming_app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._producer: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._anchor: tuple[float, float] | None = None  # (start, rate)
        self._made = 0
        self.url = ""
        self.streaming_url = ""

    # ---- lifecycle

    def add_routes(self, app: web.Application, handler: Callable[[str], Handler]) -> None:
        """REST paths and control routes on the server's app; the streaming paths on an app of
        their own, served on the second port by `start`."""
        app.router.add_get(INSTANCE_PATH, handler(MASTODON_INSTANCE))
        timelines = handler(MASTODON_TIMELINES)
        for path in TIMELINE_PATHS:
            app.router.add_get(path, timelines)
        app.router.add_post("/_fake/mastodon/post", self._control_post)
        app.router.add_post("/_fake/mastodon/edit/{id}", self._control_edit)
        app.router.add_post("/_fake/mastodon/delete/{id}", self._control_delete)
        app.router.add_get("/_fake/mastodon/posted", self._control_posted)
        app.router.add_get("/_fake/mastodon/requests", self._control_requests)
        app.router.add_get("/_fake/mastodon/subscriptions/{conn}", self._control_subscriptions)
        # A fresh app each time, as the server builds its own on every start.
        self._streaming_app = web.Application()
        self._streaming_app.router.add_get(HEALTH_PATH, self._health)
        self._streaming_app.router.add_get(STREAMING_PATH, handler(MASTODON_STREAMING))

    async def start(self, rest_url: str, bind_host: str, port: int) -> None:
        """Bind the streaming server and begin posting (called once the REST port listens)."""
        self.url = rest_url
        if self._streaming_app is None:
            raise RuntimeError("add_routes must come before start")
        self._runner = web.AppRunner(
            self._streaming_app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, bind_host, port).start()
        bound = self._runner.addresses[0][1]
        host = f"[{bind_host}]" if ":" in bind_host else bind_host
        self.streaming_url = f"ws://{host}:{bound}"
        if self._producer is None:
            self._producer = asyncio.ensure_future(self._produce_forever())

    async def stop(self) -> None:
        """Stop posting and close the streaming port (its sockets are closed by the server)."""
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
            self._producer = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reset(self) -> None:
        """Forget statuses, logs, rate-limit counts and repeating faults; restart the schedule."""
        self.store = TimelineStore(self._host.settings.mastodon_seed)
        self._subscriptions.clear()
        self._requests.clear()
        self._buckets.clear()
        self._repeat = None
        if self._owners is None:
            self._labels.clear()
        self._anchor, self._made = None, 0
        self._kick.set()

    def settings_changed(self) -> None:
        self.store.set_seed(self._host.settings.mastodon_seed)
        self._kick.set()

    # ---- the test-facing API

    def post(
        self,
        *,
        tags: tuple[str, ...] | list[str] = (),
        local: bool = True,
        lists: tuple[str, ...] | list[str] = (),
        home: bool = False,
        older_than_ms: int | None = None,
        stream: bool = True,
    ) -> dict[str, Any]:
        """Post one status now and answer its JSON; see `FakeAPI.mastodon_post`."""
        if isinstance(tags, str) or isinstance(lists, str):
            raise FakeAPIError("tags and lists are lists of names, not one string")
        known = set(self._host.settings.mastodon_lists)
        if unknown := [str(x) for x in lists if str(x) not in known]:
            raise FakeAPIError(
                f"no list {unknown[0]!r}; the instance's lists are "
                f"{', '.join(sorted(known)) or 'none'} (setting mastodon_lists)"
            )
        clean = [t.removeprefix("#") for t in tags]
        if bad := [t for t in clean if not normalize_tag(t)]:
            raise FakeAPIError(f"{bad[0]!r} is not a hashtag")
        if older_than_ms is not None and (
            isinstance(older_than_ms, bool) or not isinstance(older_than_ms, int)
            or older_than_ms < 0
        ):
            raise FakeAPIError("older_than_ms must be a whole number of ms >= 0")
        status = self.store.add(
            local=bool(local),
            tags=clean,
            lists=[str(x) for x in lists],
            home=bool(home),
            older_than_ms=older_than_ms,
            streamed=bool(stream),
        )
        self._published(status, "update")
        return self.store.render(status)

    def edit(self, status_id: str | int) -> dict[str, Any]:
        """Edit a status: its content changes and `edited_at` is set; streamed as
        `status.update` to the subscriptions it matches; REST shows the new version."""
        status = self._held(status_id, self.store.edit)
        self._published(status, "status.update")
        return self.store.render(status)

    def delete(self, status_id: str | int) -> None:
        """Delete a status: streamed as `delete` (payload: the id), gone from REST."""
        status = self._held(status_id, self.store.delete)
        self._published(status, "delete")

    def _held(self, status_id: str | int, change: Callable[[str | int], Status]) -> Status:
        try:
            return change(status_id)
        except KeyError:
            raise FakeAPIError(f"no status {status_id} (or it was deleted)") from None

    def posted(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.store.posted()]

    def status(self, status_id: str | int) -> dict[str, Any]:
        """A status's JSON as REST would serve it now (deleted ones too)."""
        return self.store.render(self._held(status_id, self.store.get))

    def requests(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._requests]

    def subscriptions(self, conn: int) -> list[dict[str, Any]]:
        return [dict(s) for s in self._subscriptions.get(conn, [])]

    # ---- posting

    def _published(self, status: Status, event: str) -> None:
        """Send the event to every subscription it matches (unless the status is not streamed)."""
        if status.streamed and self._conns:
            if event == "delete":
                payload = str(status.id)
            else:
                payload = dumps(self.store.render(status))
            body = f',"event":"{event}","payload":{json.dumps(payload, ensure_ascii=False)}}}'
            for conn in self._conns.values():
                hit = False
                for (kind, arg), array in conn.subs.items():
                    if status.belongs(kind, arg):
                        conn.outbox.append(('{"stream":' + dumps(array) + body, True))
                        hit = True
                if hit:
                    conn.stream.wake.set()
        self._host.notify()

    async def _produce_forever(self) -> None:
        while True:
            wake_at = self._produce_due(time.time())
            self._kick.clear()
            timeout = None if wake_at is None else max(0.0, wake_at - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._kick.wait()

    def _produce_due(self, now: float) -> float | None:
        """Post what the schedule holds up to `now`; when the next is due (None: never)."""
        rate = self._host.settings.mastodon_rate
        if rate <= 0:
            self._anchor = None
            return None
        if self._anchor is None or self._anchor[1] != rate:
            self._anchor, self._made = (now, rate), 0
        start = self._anchor[0]
        due = int((now - start) * rate)
        if due - self._made > 1000:  # the loop was held up: start again from now
            self._anchor, self._made = (now, rate), 0
            return now + 1 / rate
        while self._made < due:
            self._made += 1
            self._produce_one()
        return start + (self._made + 1) / rate

    def _produce_one(self) -> None:
        settings = self._host.settings
        rng = random.Random((settings.mastodon_seed << 32) ^ self.store.next_index)
        count = rng.choices((0, 1, 2, 3), (3, 4, 2, 1))[0]
        tags = rng.sample(settings.mastodon_tags, min(count, len(settings.mastodon_tags)))
        lists = settings.mastodon_lists
        in_lists = [rng.choice(lists)] if lists and rng.random() < 0.2 else []
        status = self.store.add(
            local=rng.random() < 0.5,
            tags=tags,
            lists=in_lists,
            home=rng.random() < 0.3,
            older_than_ms=None,
            streamed=True,
        )
        self._published(status, "update")

    # ---- tokens

    def _token(self, request: web.Request, *, protocol: bool) -> tuple[str, bool]:
        """The request's token (maybe empty) and whether it came in Sec-WebSocket-Protocol."""
        authorization = request.headers.get("Authorization", "")
        if authorization:
            return authorization.removeprefix("Bearer ").strip(), False
        token = request.query.get("access_token", "")
        if token:
            return token, False
        if protocol:
            return request.headers.get("Sec-WebSocket-Protocol", "").strip(), True
        return "", False

    def _owner(self, token: str) -> str | None:
        """Who a token belongs to (credential name or token-N); None if it is not valid."""
        if not token:
            return None
        if self._owners is not None:
            return self._owners.get(token)
        return self._labels.setdefault(token, f"token-{len(self._labels) + 1}")

    # ---- requests

    async def serve(self, request: web.Request, stream: StreamHandle) -> web.StreamResponse:
        record = stream.record
        record.params = {k: v for k, v in request.query.items() if k != "access_token"}
        if record.endpoint == MASTODON_STREAMING:
            return await self._serve_streaming(request, stream)
        return await self._serve_rest(request, stream)

    async def _delay(self, stream: StreamHandle, fault: dict[str, Any] | None) -> bool:
        """Wait out a fault's `delay`; False if the server stopped meanwhile."""
        if fault and fault.get("delay"):
            await stream.sleep_until(asyncio.get_running_loop().time() + fault["delay"])
        return not stream.stop_reason

    # ---- REST

    async def _serve_rest(self, request: web.Request, stream: StreamHandle) -> web.Response:
        record = stream.record
        record.summary = {"wall": time.time()}  # when it arrived; `opened` is monotonic
        token, _ = self._token(request, protocol=False)
        owner = self._owner(token)
        record.credential = owner
        record.auth_ok = owner is not None
        fault = self._rest_fault(record.endpoint)
        record.fault = fault
        if not await self._delay(stream, fault):
            return self._answer(request, record, 503, {"error": "Service Unavailable"}, {})
        wall = time.time()
        bucket_key = f"owner:{owner}" if owner else f"ip:{request.remote}"
        if fault and fault.get("status") == 429 and "reset_in" in fault:
            bucket = self._bucket(bucket_key, wall)
            bucket.held_until = max(bucket.held_until, wall + fault["reset_in"])
        limited, headers = self._count(bucket_key, wall)
        if fault and "status" in fault:
            status = fault["status"]
            text = fault.get("body") or (
                "Too many requests" if status == 429 else reason_phrase(status)
            )
            headers.update(fault.get("headers") or {})
            return self._answer(request, record, status, {"error": text}, headers)
        if limited:
            return self._answer(request, record, 429, {"error": "Too many requests"}, headers)
        if record.endpoint == MASTODON_INSTANCE:
            return self._answer(request, record, 200, self._instance(), headers)
        if owner is None:
            headers["WWW-Authenticate"] = (
                'Bearer realm="Doorkeeper", error="invalid_token", '
                'error_description="The access token is invalid"'
            )
            return self._answer(request, record, 401, _INVALID_TOKEN, headers)
        return self._timeline(request, record, headers)

    def _rest_fault(self, endpoint: str) -> dict[str, Any] | None:
        """The fault for this REST request: a repeating one's next turn, or the script's."""
        if self._repeat is not None and self._repeat[0].get("endpoint") in (
            endpoint, "mastodon/rest"
        ):
            fault, left = self._repeat
            self._repeat = (fault, left - 1) if left > 1 else None
            return fault
        fault = self._host.take_fault(endpoint)
        if fault and fault.get("times", 1) > 1:
            self._repeat = (fault, fault["times"] - 1)
        return fault

    def _bucket(self, key: str, wall: float) -> _Bucket:
        window = self._host.settings.mastodon_rate_window
        start = wall - wall % window
        bucket = self._buckets.setdefault(key, _Bucket(start))
        if bucket.period_start != start:
            bucket.period_start, bucket.count = start, 0
        return bucket

    def _count(self, key: str, wall: float) -> tuple[bool, dict[str, str]]:
        """Count one request; whether it is over the limit, and the rate-limit headers."""
        settings = self._host.settings
        bucket = self._bucket(key, wall)
        bucket.count += 1
        limit = settings.mastodon_rate_limit
        reset = bucket.period_start + settings.mastodon_rate_window
        remaining = max(0, limit - bucket.count)
        limited = bucket.count > limit
        if wall < bucket.held_until:
            remaining, reset, limited = 0, bucket.held_until, True
        return limited, {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": iso_us(reset),
        }

    def _answer(
        self,
        request: web.Request,
        record: ConnectionRecord,
        status: int,
        body: Any,
        headers: dict[str, str],
    ) -> web.Response:
        record.status = status
        record.first_byte = time.monotonic()
        self._requests.append(
            {
                "monotonic": record.opened,
                "wall": (record.summary or {}).get("wall", time.time()),
                "credential": record.credential,
                "method": request.method,
                "path": request.path,
                "query": dict(record.params),
                "status": status,
                "remaining": headers.get("X-RateLimit-Remaining"),
                "reset": headers.get("X-RateLimit-Reset"),
            }
        )
        self._host.notify()
        return web.Response(
            status=status,
            text=rails_dumps(body),
            content_type="application/json",
            headers=headers,
        )

    def _instance(self) -> dict[str, Any]:
        """A Mastodon 4.x `/api/v2/instance` document naming the streaming server."""
        return {
            "domain": LOCAL_DOMAIN,
            "title": "sfmd fake Mastodon",
            "version": "4.3.0",
            "source_url": "https://github.com/mastodon/mastodon",
            "description": "A simulated instance for tests and dry runs.",
            "usage": {"users": {"active_month": LOCAL_ACCOUNTS}},
            "thumbnail": {"url": f"https://{LOCAL_DOMAIN}/packs/media/images/preview.png"},
            "icon": [],
            "languages": ["en"],
            "configuration": {
                "urls": {
                    "streaming": self.streaming_url,
                    "status": None,
                    "about": f"https://{LOCAL_DOMAIN}/about",
                    "privacy_policy": f"https://{LOCAL_DOMAIN}/privacy-policy",
                    "terms_of_service": None,
                },
                "vapid": {"public_key": ""},
                "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
                "statuses": {
                    "max_characters": 500,
                    "max_media_attachments": 4,
                    "characters_reserved_per_url": 23,
                },
                "media_attachments": {
                    "supported_mime_types": ["image/jpeg", "image/png", "video/mp4"],
                    "image_size_limit": 16_777_216,
                    "image_matrix_limit": 33_177_600,
                    "video_size_limit": 103_809_024,
                    "video_frame_rate_limit": 120,
                    "video_matrix_limit": 8_294_400,
                },
                "polls": {
                    "max_options": 4,
                    "max_characters_per_option": 50,
                    "min_expiration": 300,
                    "max_expiration": 2_629_746,
                },
                "translation": {"enabled": False},
            },
            "registrations": {"enabled": False, "approval_required": False, "message": None},
            "api_versions": {"mastodon": 2},
            "contact": {"email": f"admin@{LOCAL_DOMAIN}", "account": None},
            "rules": [],
        }

    def _timeline(
        self, request: web.Request, record: ConnectionRecord, headers: dict[str, str]
    ) -> web.Response:
        route = request.match_info.route.resource
        which = TIMELINE_PATHS[route.canonical] if route is not None else "public"
        query = request.query
        local = _truthy(query.get("local"))
        if which == "public":
            remote = _truthy(query.get("remote"))
            kind, arg = ("public:local" if local else "public:remote" if remote else "public"), ""
            if local and remote:
                kind = "none"  # both: Mastodon applies both scopes, which nothing passes
        elif which == "tag":
            kind, arg = ("hashtag:local" if local else "hashtag"), normalize_tag(
                request.match_info["tag"]
            )
        elif which == "list":
            kind, arg = "list", request.match_info["list"]
            if arg not in self._host.settings.mastodon_lists:
                return self._answer(request, record, 404, {"error": "Record not found"}, headers)
        else:
            kind, arg = "user", ""
        try:
            bounds = {k: _status_id(query, k) for k in ("max_id", "since_id", "min_id")}
        except ValueError as e:
            return self._answer(request, record, 400, {"error": str(e)}, headers)
        limit = DEFAULT_LIMIT
        if "limit" in query:
            try:
                limit = min(abs(int(query["limit"])), MAX_LIMIT)
            except ValueError:
                limit = 0  # Ruby's "abc".to_i
        page = self.store.page(lambda s: s.belongs(kind, arg), limit=limit, **bounds)
        if page:
            kept = {k: v for k, v in query.items() if k in _LINK_PARAMS[which]}
            base = request.url.with_query(None)
            next_url = base.with_query({**kept, "max_id": str(page[-1].id)})
            prev_url = base.with_query({**kept, "min_id": str(page[0].id)})
            headers["Link"] = f'<{next_url}>; rel="next", <{prev_url}>; rel="prev"'
        return self._answer(
            request, record, 200, [self.store.render(s) for s in page], headers
        )

    # ---- streaming

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _serve_streaming(
        self, request: web.Request, stream: StreamHandle
    ) -> web.StreamResponse:
        record = stream.record
        fault = self._host.take_fault(MASTODON_STREAMING)
        record.fault = fault
        if not await self._delay(stream, fault):
            return self._refuse(record, 503, "Service Unavailable")
        if fault and "status" in fault:
            headers = dict(fault.get("headers") or {})
            if "retry_after" in fault:
                headers["Retry-After"] = str(round(fault["retry_after"]))
            return self._refuse(
                record, fault["status"], fault.get("body") or reason_phrase(fault["status"]),
                headers,
            )
        token, from_protocol = self._token(request, protocol=True)
        owner = self._owner(token)
        record.credential = owner
        record.auth_ok = owner is not None
        if owner is None:
            return self._refuse(
                record, 401, "Invalid access token" if token else "Missing access token"
            )
        ws = web.WebSocketResponse(
            autoping=False, protocols=(token,) if from_protocol else (), timeout=1.0
        )
        if not ws.can_prepare(request).ok:
            return self._refuse(record, 400, "This endpoint needs a WebSocket upgrade")
        await ws.prepare(request)
        record.status = 101
        record.first_byte = time.monotonic()
        record.summary = {"pings": 0, "pongs": 0, "errors": 0}
        conn = _Connection(request, stream, ws)
        self._conns[record.conn] = conn
        self._subscriptions.setdefault(record.conn, [])
        if "stream" in request.query:
            self._command(conn, {"type": "subscribe", **{
                k: request.query[k] for k in ("stream", "tag", "list") if k in request.query
            }})
        self._host.notify()
        return await serve_socket(
            request, ws, stream, self._read(conn), self._pump(conn),
            forget=lambda: self._conns.pop(record.conn),
        )

    def _refuse(
        self,
        record: ConnectionRecord,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """A refusal before the upgrade, as the streaming server writes it: an empty body,
        the reason in X-Error-Message."""
        record.status = status
        record.first_byte = time.monotonic()
        response = web.Response(
            status=status,
            content_type="text/plain",
            headers={"X-Error-Message": message, **(headers or {})},
        )
        response.force_close()
        return response

    async def _read(self, conn: _Connection) -> None:
        """Take subscribe/unsubscribe messages and pongs until the client goes."""
        ws, summary = conn.ws, conn.stream.record.summary or {}
        while True:
            message = await ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                                WSMsgType.ERROR):
                conn.stream.request_stop("client_closed")
                return
            if message.type == WSMsgType.PONG:
                conn.alive = True
                summary["pongs"] += 1
                continue
            if message.type == WSMsgType.PING:
                if conn.stalled:
                    conn.unanswered.append(message.data)
                else:
                    with contextlib.suppress(ConnectionError):
                        await ws.pong(message.data)
                continue
            if message.type != WSMsgType.TEXT:
                continue
            try:
                command = json.loads(message.data)
            except ValueError:
                continue  # the real server logs and ignores what it cannot parse
            if isinstance(command, dict):
                self._command(conn, command)

    def _command(self, conn: _Connection, command: dict[str, Any]) -> None:
        kind = command.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            return
        entry: dict[str, Any] = {"type": kind, "at": time.monotonic()}
        entry.update({k: command[k] for k in ("stream", "tag", "list") if k in command})
        try:
            key, array = self._resolve(command)
        except _StreamError as e:
            if kind == "subscribe":
                error: dict[str, Any] = {"error": str(e), "status": e.status}
            else:
                error = {"error": "Error unsubscribing from channel"}
            entry["error"] = error["error"]
            self._queue_error(conn, error)
        else:
            if kind == "subscribe":
                entry["result"] = "already" if key in conn.subs else "subscribed"
                conn.subs.setdefault(key, array)
            else:
                entry["result"] = "unsubscribed" if conn.subs.pop(key, None) else "not_subscribed"
        self._subscriptions[conn.stream.record.conn].append(entry)
        self._host.notify()

    def _resolve(self, command: dict[str, Any]) -> tuple[tuple[str, str], list[Any]]:
        """The timeline a command names and the stream array its frames carry."""
        kind = command.get("stream")
        if kind not in KINDS:
            raise _StreamError("Unknown stream type", 400)
        if kind in ("hashtag", "hashtag:local"):
            tag = command.get("tag")
            if not tag or not isinstance(tag, str) or not normalize_tag(tag):
                raise _StreamError("Missing tag name parameter", 400)
            return (kind, normalize_tag(tag)), [kind, tag]
        if kind == "list":
            wanted = command.get("list")
            if wanted is None or wanted == "":
                raise _StreamError("Missing list name parameter", 400)
            if str(wanted) not in self._host.settings.mastodon_lists:
                raise _StreamError("Not authorized to stream this list", 401)
            return (kind, str(wanted)), [kind, wanted]
        return (kind, ""), [kind]

    def _queue_error(self, conn: _Connection, error: dict[str, Any]) -> None:
        summary = conn.stream.record.summary or {}
        summary["errors"] += 1
        conn.outbox.append((dumps(error), False))
        conn.stream.wake.set()

    async def _pump(self, conn: _Connection) -> None:
        """Send frames, pings and the scripted fault until the connection must end."""
        loop = asyncio.get_running_loop()
        stream, record, ws = conn.stream, conn.stream.record, conn.ws
        summary: dict[str, Any] = record.summary or {}
        fault = record.fault or {}
        trigger = next((k for k in ("close_after", "stall_after") if k in fault), None)
        trigger_at: int | None = fault[trigger] if trigger else None
        interval = self._host.settings.mastodon_ping_interval
        ping_at = loop.time() + interval
        while not stream.stop_reason:
            if trigger_at is not None and record.sent_count >= trigger_at:
                trigger_at = None
                if trigger == "close_after":
                    record.close_reason = "closed"
                    if "code" in fault:
                        await ws.close(code=fault["code"], message=b"")
                    else:
                        await abort_when_flushed(conn.request, stream)
                    return
                duration = fault.get("duration")
                until = None if duration is None else loop.time() + duration
                conn.stalled = True
                summary["stalled"] = True
                self._host.notify()
                while not stream.stop_reason and (until is None or loop.time() < until):
                    await stream.sleep_until(until)
                conn.stalled = False
                conn.alive = True
                for data in conn.unanswered:
                    await ws.pong(data)
                conn.unanswered.clear()
                ping_at = loop.time() + self._host.settings.mastodon_ping_interval
                continue
            now = loop.time()
            if now >= ping_at:
                if not conn.alive:  # no pong since the last ping: terminate, no close frame
                    record.close_reason = "ping_timeout"
                    stream.request_stop("ping_timeout")
                    if conn.request.transport is not None:
                        conn.request.transport.abort()
                    self._host.notify()
                    return
                conn.alive = False
                await ws.ping()
                summary["pings"] += 1
                ping_at = now + self._host.settings.mastodon_ping_interval
                self._host.notify()
                continue
            if conn.outbox:
                text, is_event = conn.outbox.popleft()
                await ws.send_str(text)
                if is_event:
                    record.sent_count += 1
                if self._host.settings.record_bytes:
                    self._host.record_sent(record.conn, [text.encode()])
                self._host.notify()
                continue
            await stream.sleep_until(ping_at)

    # ---- control routes

    async def _control_post(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
            if not isinstance(body, dict):
                raise FakeAPIError("the body must be a JSON object")
            allowed = {"tags", "local", "lists", "home", "older_than_ms", "stream"}
            if unknown := sorted(set(body) - allowed):
                raise FakeAPIError(f"unknown key(s) {', '.join(unknown)}")
            return web.json_response(self.post(**body))
        except (ValueError, FakeAPIError) as e:
            return web.json_response({"error": str(e)}, status=400)

    async def _control_edit(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.edit(request.match_info["id"]))
        except FakeAPIError as e:
            return web.json_response({"error": str(e)}, status=404)

    async def _control_delete(self, request: web.Request) -> web.Response:
        try:
            self.delete(request.match_info["id"])
        except FakeAPIError as e:
            return web.json_response({"error": str(e)}, status=404)
        return web.json_response({"deleted": request.match_info["id"]})

    async def _control_posted(self, request: web.Request) -> web.Response:
        return web.json_response(self.posted())

    async def _control_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests())

    async def _control_subscriptions(self, request: web.Request) -> web.Response:
        try:
            conn = int(request.match_info["conn"])
        except ValueError:
            return web.json_response({"error": "conn must be a number"}, status=400)
        return web.json_response(self.subscriptions(conn))


def iso_us(wall: float) -> str:
    """Ruby's `Time#iso8601(6)` in UTC, as Mastodon writes X-RateLimit-Reset."""
    seconds = int(wall)
    micros = round((wall - seconds) * 1_000_000)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _truthy(value: str | None) -> bool:
    return bool(value) and value not in _FALSE


def _status_id(query: Any, key: str) -> int | None:
    raw = query.get(key)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ValueError(f"{key} must be a status id (digits), not {raw!r}")
    return int(raw)
