"""A simulated Twitter streaming API on loopback, for tests, demos and benchmarks.

This module is the server and its v1.1 half; `fakeapi_v2` mounts the API v2 paths (bearer
auth, filtered-stream rules, the filtered and sample streams) on the same server, with the
same settings, sequence numbers, fault script and log.

It speaks the real wire protocol (OAuth 1.0a, chunked bodies, `\\r\\n` framing or
`delimited=length`, keep-alives, notices, the one-connection-per-credential rule) so the
collector is exercised exactly as in production, and it misbehaves on request: each connection
attempt may take one scripted fault (an HTTP status, a cut mid-message, a stall, a disconnect
message, an oversized or malformed line).

Every message carries a server-wide sequence number (a tweet's `id`, a notice's `seq`) and
every connection attempt leaves a `ConnectionRecord`, so a test can prove that what reached
the archive is exactly what was fully sent, in order, with nothing lost or duplicated.

Speed matters because benchmarks must measure the client, not this server: tweets come from a
precomputed template in which only the id digits change, and are written in blocks of about
256 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from oauthlib.common import safe_string_equals
from oauthlib.oauth1.rfc5849 import signature as oauth_signature

from sfmd.credentials import Credential
from sfmd.fake.faults import TRIGGERS, FaultScript
from sfmd.fake.mount import (
    ConnectionRecord,
    StreamHandle,
    abort_when_flushed,
    dumps,
    reason_phrase,
)
from sfmd.fake.pacing import Pacer, block_count, next_batch
from sfmd.fake.settings import FakeAPIError, Settings
from sfmd.fake.v2 import API_PATHS, V2API

#: The first sequence number: ids above 2^53 catch clients that parse ids as floats.
FIRST_SEQ = 1_500_000_000_000_000_000
#: Hosts a client may have signed for instead of ours (twarc signs for the real host).
TWITTER_HOSTS = ("stream.twitter.com", "api.twitter.com")

MAX_TRACK = 400
MAX_TRACK_BYTES = 60
MAX_FOLLOW = 5000
MAX_BOXES = 25

DISCONNECT_REASONS = {
    1: "shutdown",
    2: "duplicate stream",
    3: "control request",
    4: "stall",
    5: "normal",
    6: "token revoked",
    7: "admin logout",
    8: "max message limit",
    9: "max message limit",
    10: "stream exception",
    11: "broker stall",
    12: "shed load",
}

STREAM_PATHS = {
    "/1.1/statuses/filter.json": "filter",
    "/1.1/statuses/sample.json": "sample",
}
LOOKUP_PATH = "/1.1/users/lookup.json"

_UNAUTHORIZED_HTML = (
    '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8"/>\n'
    "<title>Error 401 Unauthorized</title>\n</head>\n<body>\n<h2>HTTP ERROR: 401</h2>\n"
    "<p>Problem accessing '{path}'. Reason:\n<pre>    Unauthorized</pre>\n</body>\n</html>\n"
)


# --------------------------------------------------------------------------- messages


def seq_of(message: bytes) -> int:
    """The sequence number of a message this server sent: a notice's `seq`, else the tweet id.

    A v2 tweet's id is a string (`"data":{"id":"..."`); the first `"id":` is still its id."""
    for key in (b'"seq":', b'"id":'):
        start = message.find(key)
        if start >= 0:
            start += len(key)
            if message[start : start + 1] == b'"':
                start += 1
            end = start
            while end < len(message) and message[end : end + 1].isdigit():
                end += 1
            return int(message[start:end])
    raise ValueError("no sequence number in message")


_ID_MARK = 9_999_999_999_999_999_901  # 19 digits like every real id we hand out
_ID_DIGITS = len(str(_ID_MARK))
assert len(str(FIRST_SEQ)) == _ID_DIGITS  # ids stay 19 digits for the life of a run
_FILLER = (
    "Simulated tweet text for load and fault testing; every byte here is padding so that "
    "messages reach a realistic size. "
)


def _tweet_json(id_value: int, size: int, now: float) -> bytes:
    """A realistic v1.1 tweet of `size` bytes (or its minimum size if that is larger)."""
    text = "Fake tweet from sfmd fakeapi \u2014 caf\u00e9 \u2615 #fakeapi"
    created = time.strftime("%a %b %d %H:%M:%S +0000 %Y", time.gmtime(now))
    obj: dict[str, Any] = {
        "created_at": created,
        "id": id_value,
        "id_str": str(id_value),
        "text": text,
        "source": '<a href="https://example.org" rel="nofollow">sfmd fakeapi</a>',
        "truncated": True,
        "in_reply_to_status_id": None,
        "in_reply_to_status_id_str": None,
        "in_reply_to_user_id": None,
        "in_reply_to_user_id_str": None,
        "in_reply_to_screen_name": None,
        "user": {
            "id": 2244994945,
            "id_str": "2244994945",
            "name": "Fake API",
            "screen_name": "sfmd_fakeapi",
            "location": "Loopback",
            "url": None,
            "description": "A simulated account.\nIt never sleeps.",
            "protected": False,
            "verified": False,
            "followers_count": 1234,
            "friends_count": 56,
            "listed_count": 7,
            "favourites_count": 89,
            "statuses_count": 4321,
            "created_at": "Mon Jan 01 00:00:00 +0000 2018",
            "geo_enabled": False,
            "lang": None,
            "profile_image_url_https": "https://example.org/profile_normal.png",
            "default_profile": True,
        },
        "geo": None,
        "coordinates": None,
        "place": None,
        "contributors": None,
        "is_quote_status": False,
        "extended_tweet": {"full_text": "", "display_text_range": [0, 140]},
        "quote_count": 0,
        "reply_count": 0,
        "retweet_count": 0,
        "favorite_count": 0,
        "entities": {
            "hashtags": [{"text": "fakeapi", "indices": [38, 46]}],
            "urls": [],
            "user_mentions": [],
            "symbols": [],
        },
        "favorited": False,
        "retweeted": False,
        "filter_level": "low",
        "lang": "en",
        "timestamp_ms": str(int(now * 1000)),
    }
    pad = size - len(dumps(obj))
    if pad > 0:
        obj["extended_tweet"]["full_text"] = (_FILLER * (pad // len(_FILLER) + 1))[:pad]
    return dumps(obj)


def _frame(message: bytes, delimited: bool) -> bytes:
    if delimited:
        return b"%d\r\n%s\r\n" % (len(message) + 2, message)
    return message + b"\r\n"


@dataclass(frozen=True)
class _TweetShape:
    """A tweet cut around its two id fields: a message is head + id + mid + id + tail."""

    head: bytes
    mid: bytes
    tail: bytes
    framed_head: bytes
    framed_tail: bytes

    @property
    def size(self) -> int:
        """Bytes in one tweet, framing aside (ids all have the same number of digits)."""
        return len(self.head) + len(self.mid) + len(self.tail) + 2 * _ID_DIGITS

    @property
    def prefix_size(self) -> int:
        return len(self.framed_head) - len(self.head)

    @property
    def framed_size(self) -> int:
        return self.prefix_size + self.size + 2


class MessageFactory:
    """Builds framed blocks of messages; only the id digits change between tweets."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[int, bool], tuple[int, _TweetShape]] = {}

    def shape(self, size: int, delimited: bool) -> _TweetShape:
        second = int(time.time())
        cached = self._shapes.get((size, delimited))
        if cached is not None and cached[0] == second:
            return cached[1]
        head, mid, tail = _tweet_json(_ID_MARK, size, second).split(str(_ID_MARK).encode())
        length = len(head) + len(mid) + len(tail) + 2 * _ID_DIGITS
        prefix = b"%d\r\n" % (length + 2) if delimited else b""
        shape = _TweetShape(head, mid, tail, prefix + head, tail + b"\r\n")
        self._shapes[(size, delimited)] = (second, shape)
        return shape

    def tweet(self, seq: int, size: int) -> bytes:
        shape = self.shape(size, False)
        digits = b"%d" % seq
        return shape.head + digits + shape.mid + digits + shape.tail

    @staticmethod
    def delete(seq: int) -> bytes:
        ms = int(time.time() * 1000)
        return (
            b'{"delete":{"status":{"id":%d,"id_str":"%d","user_id":2244994945,'
            b'"user_id_str":"2244994945"},"timestamp_ms":"%d"},"seq":%d}'
            % (seq - 1, seq - 1, ms, seq)
        )

    @staticmethod
    def limit(seq: int, undelivered: int) -> bytes:
        ms = int(time.time() * 1000)
        return b'{"limit":{"track":%d,"timestamp_ms":"%d"},"seq":%d}' % (undelivered, ms, seq)

    @staticmethod
    def disconnect(seq: int, code: int, stream_name: str) -> bytes:
        body = {
            "disconnect": {
                "code": code,
                "stream_name": stream_name,
                "reason": DISCONNECT_REASONS.get(code, "unknown"),
            },
            "seq": seq,
        }
        return dumps(body)

    @staticmethod
    def malformed(seq: int) -> bytes:
        return b'{"created_at":"broken","id":%d,"id_str":"%d","text":"this object never ends' % (
            seq,
            seq,
        )

    def block(
        self, first_seq: int, index: int, count: int, delimited: bool, settings: Settings
    ) -> tuple[bytes, list[bytes] | None]:
        """`count` framed messages from `first_seq`, and the bare messages when recording.

        `index` messages went before on this connection: notices are placed by position."""
        shape = self.shape(settings.message_size, delimited)
        every_delete, every_limit = settings.delete_every, settings.limit_every
        if not every_delete and not every_limit:
            # The hot path: one join over shared pieces, no per-message objects.
            head, mid, tail = shape.framed_head, shape.mid, shape.framed_tail
            pieces: list[bytes] = []
            extend = pieces.extend
            for seq in range(first_seq, first_seq + count):
                digits = b"%d" % seq
                extend((head, digits, mid, digits, tail))
            data = b"".join(pieces)
            if not settings.record_bytes:
                return data, None
            step, skip, size = shape.framed_size, shape.prefix_size, shape.size
            return data, [data[i * step + skip : i * step + skip + size] for i in range(count)]
        messages = []
        for offset in range(count):
            seq = first_seq + offset
            position = index + offset + 1
            if every_delete and position % every_delete == 0:
                messages.append(self.delete(seq))
            elif every_limit and position % every_limit == 0:
                messages.append(self.limit(seq, position // every_limit * 3))
            else:
                digits = b"%d" % seq
                messages.append(shape.head + digits + shape.mid + digits + shape.tail)
        data = b"".join(_frame(m, delimited) for m in messages)
        return data, messages if settings.record_bytes else None


# --------------------------------------------------------------------------- OAuth


@dataclass(frozen=True)
class _SigningSecrets:
    """The two attributes oauthlib's signing helpers read from a client."""

    client_secret: str = field(repr=False)
    resource_owner_secret: str = field(repr=False)


@dataclass
class AuthResult:
    ok: bool
    credential: str | None = None
    signed_host: str | None = None
    token: str | None = None


def verify_oauth(
    method: str,
    url_host: str,
    scheme: str,
    path: str,
    query_string: str,
    body: str,
    authorization: str,
    credentials: dict[tuple[str, str], Credential],
) -> AuthResult:
    """Check an OAuth 1.0a HMAC-SHA1 signature made for our URL or for Twitter's host."""
    try:
        params = oauth_signature.collect_parameters(
            uri_query=query_string,
            body=body,
            headers={"Authorization": authorization} if authorization else None,
            exclude_oauth_signature=False,
        )
    except ValueError:
        return AuthResult(False)
    oauth = dict(p for p in params if p[0].startswith("oauth_"))
    key = (oauth.get("oauth_consumer_key", ""), oauth.get("oauth_token", ""))
    cred = credentials.get(key)
    if cred is None or oauth.get("oauth_signature_method") != "HMAC-SHA1":
        return AuthResult(False, token=key[1] or None)
    # verify_hmac_sha1() would log the base string (with the access token) on a mismatch,
    # so the same steps are taken here through oauthlib's quiet helpers.
    normalized = oauth_signature.normalize_parameters(
        [p for p in params if p[0] != "oauth_signature"]
    )
    given = oauth.get("oauth_signature", "")
    secrets = _SigningSecrets(cred.consumer_secret, cred.access_token_secret)
    for host, uri_scheme in ((url_host, scheme), *((h, "https") for h in TWITTER_HOSTS)):
        base_uri = oauth_signature.base_string_uri(f"{uri_scheme}://{host}{path}")
        base = oauth_signature.signature_base_string(method.upper(), base_uri, normalized)
        expected = oauth_signature.sign_hmac_sha1_with_client(base, secrets)
        if safe_string_equals(expected, given):
            return AuthResult(True, cred.name, host, cred.access_token)
    return AuthResult(False, cred.name, token=cred.access_token)


def user_id_for(screen_name: str) -> int:
    """A stable fake user id per screen name, so lookups agree across runs."""
    digest = hashlib.sha256(screen_name.lower().encode()).digest()
    return int.from_bytes(digest[:6], "big") + 1


# --------------------------------------------------------------------------- the server


class FakeAPI:
    """The simulated API. `start()` binds; `log`, `sent_messages` and `wait_for` observe it."""

    def __init__(
        self,
        credentials: dict[str, Credential] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        message_size: int = 4800,
        rate: float = 0.0,
        total: int | None = None,
        keepalive_interval: float = 30.0,
        delete_every: int = 0,
        limit_every: int = 0,
        record_bytes: bool = False,
    ) -> None:
        self._credentials = None
        if credentials is not None:
            self._credentials = {
                (c.consumer_key, c.access_token): c for c in credentials.values() if c.has_oauth1
            }
        self._host = host
        self._port = port
        self._initial = Settings().updated(
            {
                "message_size": message_size,
                "rate": rate,
                "total": total,
                "keepalive_interval": keepalive_interval,
                "delete_every": delete_every,
                "limit_every": limit_every,
                "record_bytes": record_bytes,
            }
        )
        self.settings = self._initial
        self.log: list[ConnectionRecord] = []
        self._faults = FaultScript()
        self._recorded: dict[int, list[bytes]] = {}
        self._streams: set[StreamHandle] = set()
        self._holders: dict[str, StreamHandle] = {}
        self._next_seq = FIRST_SEQ
        self._factory = MessageFactory()
        self._changed: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.v2 = V2API(self, credentials)

    # ---- lifecycle

    @property
    def stream_url(self) -> str:
        """What `[twitter] stream_url` (and `rest_url`) point at: the v1.1 API."""
        return self.url + "/1.1"

    @property
    def api_url(self) -> str:
        """What `[twitter] api_url` points at: the v2 paths start with /2/ under it."""
        return self.url

    async def start(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        for path in (*STREAM_PATHS, LOOKUP_PATH):
            app.router.add_route("GET", path, self._handle)
            app.router.add_route("POST", path, self._handle)
        self.v2.add_routes(app, self._handle)
        app.router.add_post("/_fake/script", self._control_script)
        app.router.add_post("/_fake/configure", self._control_configure)
        app.router.add_get("/_fake/log", self._control_log)
        app.router.add_get("/_fake/sent/{conn}", self._control_sent)
        app.router.add_post("/_fake/reset", self._control_reset)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Close every stream (no disconnect message), then the listening socket."""
        await self._close_streams("server_stop")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _close_streams(self, reason: str, grace: float = 1.0) -> None:
        streams = list(self._streams)
        for stream in streams:
            stream.request_stop(reason)
        waits = [asyncio.ensure_future(s.done.wait()) for s in streams]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for fut in pending:
                fut.cancel()
        for stream in streams:
            # A client that reads nothing keeps its writer blocked: cut it loose.
            if not stream.done.is_set() and stream.task is not None:
                stream.task.cancel()
        for stream in streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await stream.done.wait()

    # ---- the test-facing API

    def script(self, *faults: dict[str, Any]) -> None:
        """Queue behaviours; each connection attempt on a matching endpoint takes the first.

        A fault's optional "endpoint" ("stream" by default, meaning filter or sample; or
        "filter", "sample", "users/lookup"; for v2 "v2/stream", meaning v2/filter or
        v2/sample, or "v2/filter", "v2/sample", "v2/rules") says which attempts may take it.
        """
        self._faults.add(*faults)

    def configure(self, **settings: Any) -> None:
        """Change settings now; open streams see them on their next step."""
        self.settings = self.settings.updated(settings)
        for stream in self._streams:
            stream.wake.set()

    @property
    def pending_faults(self) -> list[dict[str, Any]]:
        return self._faults.pending()

    def sent_messages(self, conn: int) -> list[bytes]:
        """The messages fully sent on connection `conn`, without framing, if recording was on."""
        if conn in self._recorded:
            return list(self._recorded[conn])
        return [message for message, _ in self.v2.sent(conn)]

    def v2_sent(self, conn: int) -> list[tuple[bytes, list[str]]]:
        """Each message fully sent on v2 connection `conn` with the rule ids it matched."""
        return self.v2.sent(conn)

    def rules(self, credential: str) -> list[dict[str, str]]:
        """The v2 rules of a credential's app (`app-N` when serving without credentials)."""
        return self.v2.rules(credential)

    async def reset(self) -> None:
        """Close every stream; forget the log, script, recordings and rules; restore settings."""
        await self._close_streams("reset")
        self._faults.clear()
        self.log.clear()
        self._recorded.clear()
        self.v2.reset()
        self.settings = self._initial
        self.notify()

    async def wait_for(
        self,
        predicate: Callable[[FakeAPI], bool],
        timeout: float,  # noqa: ASYNC109 - the deadline is the point of this helper
    ) -> None:
        """Wait until `predicate(self)` holds, re-checking whenever the log changes."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()

    def notify(self) -> None:
        """Wake `wait_for` callers: the log, a recording or the rules changed."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # ---- request handling

    def take_fault(self, endpoint: str) -> dict[str, Any] | None:
        """The first scripted fault for an attempt on `endpoint`, removed from the script."""
        return self._faults.take(endpoint)

    def _authenticate(self, request: web.Request, body: str) -> AuthResult:
        authorization = request.headers.get("Authorization", "")
        if self._credentials is None:
            token = None
            with contextlib.suppress(ValueError):
                header = (
                    oauth_signature.collect_parameters(headers={"Authorization": authorization})
                    if authorization
                    else []
                )
                token = dict(header).get("oauth_token")
            return AuthResult(True, token=token)
        return verify_oauth(
            request.method,
            request.host,
            request.scheme,
            request.path,
            request.query_string,
            body,
            authorization,
            self._credentials,
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = STREAM_PATHS.get(request.path) or API_PATHS.get(request.path, "users/lookup")
        record = ConnectionRecord(
            conn=len(self.log),
            method=request.method,
            path=request.path,
            endpoint=endpoint,
            opened=time.monotonic(),
        )
        self.log.append(record)
        self.notify()
        stream = StreamHandle(record)
        self._streams.add(stream)
        try:
            return await self._serve(request, stream)
        except asyncio.CancelledError:
            # Cancelled by aiohttp when the client went away, or by stop() after its grace.
            record.close_reason = record.close_reason or stream.stop_reason or "client_closed"
            raise
        finally:
            record.closed = time.monotonic()
            if record.close_reason is None:
                answered = record.status is not None and 200 <= record.status < 300
                record.close_reason = stream.stop_reason or (
                    "answered" if answered else f"status_{record.status}"
                )
            self._streams.discard(stream)
            for token, holder in list(self._holders.items()):
                if holder is stream:
                    del self._holders[token]
            stream.done.set()
            self.notify()

    async def _serve(self, request: web.Request, stream: StreamHandle) -> web.StreamResponse:
        record = stream.record
        if record.endpoint.startswith("v2/"):
            return await self.v2.serve(request, stream)
        raw = await request.read()
        is_form = request.content_type == "application/x-www-form-urlencoded"
        body = raw.decode("utf-8", "replace") if is_form else ""
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        record.params = {k: v for k, v in params.items() if not k.startswith("oauth_")}
        fault = self.take_fault(record.endpoint)
        record.fault = fault
        if fault and fault.get("delay"):
            loop = asyncio.get_running_loop()
            await stream.sleep_until(loop.time() + fault["delay"])
            if stream.stop_reason:
                return self._answer(record, 503, "Service Unavailable")
        if fault and "status" in fault:
            status = fault["status"]
            text = fault.get("body", reason_phrase(status))
            return self._answer(record, status, text, fault.get("headers"))

        auth = self._authenticate(request, body)
        record.auth_ok = auth.ok
        record.credential = auth.credential
        record.signed_host = auth.signed_host
        if record.endpoint == "users/lookup":
            if not auth.ok:
                error = {"errors": [{"code": 32, "message": "Could not authenticate you."}]}
                return self._answer_json(record, 401, error)
            return self._lookup(record)
        if not auth.ok:
            html = _UNAUTHORIZED_HTML.format(path=request.path)
            return self._answer(record, 401, html, content_type="text/html")
        refusal = _check_stream_params(record.endpoint, params)
        if refusal is not None:
            return self._answer(record, *refusal)
        return await self._stream(request, stream, params.get("delimited") == "length", auth)

    def _answer(
        self,
        record: ConnectionRecord,
        status: int,
        text: str,
        headers: dict[str, str] | None = None,
        content_type: str = "text/plain",
    ) -> web.Response:
        record.status = status
        record.first_byte = time.monotonic()
        headers = dict(headers or {})
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = f"{content_type}; charset=utf-8"
        response = web.Response(status=status, body=text.encode(), headers=headers)
        response.force_close()
        return response

    def _answer_json(self, record: ConnectionRecord, status: int, body: Any) -> web.Response:
        record.status = status
        record.first_byte = time.monotonic()
        return web.json_response(body, status=status)

    def _lookup(self, record: ConnectionRecord) -> web.Response:
        names = [n.strip() for n in record.params.get("screen_name", "").split(",") if n.strip()]
        users = [
            {
                "id": user_id_for(n),
                "id_str": str(user_id_for(n)),
                "screen_name": n,
                "name": n.title(),
            }
            for n in names
            if not n.lower().startswith("nosuch")
        ]
        if not users:
            error = {"errors": [{"code": 17, "message": "No user matches for specified terms."}]}
            return self._answer_json(record, 404, error)
        return self._answer_json(record, 200, users)

    # ---- streaming

    async def _stream(
        self, request: web.Request, stream: StreamHandle, delimited: bool, auth: AuthResult
    ) -> web.StreamResponse:
        record = stream.record
        if auth.token is not None:
            rival = self._holders.get(auth.token)
            if rival is not None:
                rival.request_stop("replaced")
            self._holders[auth.token] = stream
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "application/json",
                "X-Connection-Hash": hashlib.sha1(b"%d" % record.conn).hexdigest(),
            },
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            record.status = 200
            record.first_byte = time.monotonic()
            self.notify()
            await self._pump(request, stream, response, delimited)
        except ConnectionError:
            # The client went away mid-write. Returning (not raising) keeps aiohttp quiet.
            record.close_reason = record.close_reason or stream.stop_reason or "client_closed"
        return response

    def allocate(self, count: int) -> int:
        """`count` fresh server-wide sequence numbers; the first is returned."""
        first = self._next_seq
        self._next_seq += count
        return first

    async def _send(
        self,
        stream: StreamHandle,
        response: web.StreamResponse,
        messages: list[bytes],
        delimited: bool,
    ) -> None:
        """Send a few special messages one by one (never the hot path)."""
        record = stream.record
        for message in messages:
            await response.write(_frame(message, delimited))
            seq = seq_of(message)
            record.sent_count += 1
            record.add_seqs(seq, seq)
            if self.settings.record_bytes:
                self._recorded.setdefault(record.conn, []).append(message)
        self.notify()

    async def _pump(
        self,
        request: web.Request,
        stream: StreamHandle,
        response: web.StreamResponse,
        delimited: bool,
    ) -> None:
        """Send messages, keep-alives and the scripted fault until the stream must end."""
        loop = asyncio.get_running_loop()
        record = stream.record
        fault = record.fault or {}
        trigger = next((k for k in TRIGGERS if k in fault), None)
        trigger_at: int | None = fault[trigger] if trigger else None
        stream_name = f"{record.credential or 'anonymous'}-statuses{record.conn}"
        last_write = loop.time()
        pacer = Pacer()

        while True:
            if stream.stop_reason:
                if stream.stop_reason == "replaced":
                    message = self._factory.disconnect(self.allocate(1), 7, stream_name)
                    await self._send(stream, response, [message], delimited)
                    response.force_close()
                return
            settings = self.settings
            sent = record.sent_count
            if trigger_at is not None and sent == trigger_at:
                trigger_at = None
                if trigger == "cut_after":
                    await self._cut(request, stream, response, delimited)
                    return
                if trigger == "stall_after":
                    while not stream.stop_reason:
                        await stream.sleep_until(None)
                    return
                if trigger == "disconnect_after":
                    code = fault.get("code", 10)
                    message = self._factory.disconnect(self.allocate(1), code, stream_name)
                    await self._send(stream, response, [message], delimited)
                    record.close_reason = f"disconnect_{code}"
                    response.force_close()
                    return
                if trigger == "oversized_after":
                    seq = self.allocate(1)
                    message = _tweet_json(seq, fault.get("size", 600_000), time.time())
                else:
                    message = self._factory.malformed(self.allocate(1))
                await self._send(stream, response, [message], delimited)
                last_write = loop.time()
                continue

            count, last_write = await next_batch(
                stream, response, pacer, settings, want=block_count(settings.message_size),
                sent=sent, trigger_at=trigger_at, last_write=last_write,
            )
            if count <= 0:
                continue

            first = self.allocate(count)
            data, messages = self._factory.block(first, sent, count, delimited, settings)
            await response.write(data)
            record.sent_count += count
            record.add_seqs(first, first + count - 1)
            if messages is not None:
                self._recorded.setdefault(record.conn, []).extend(messages)
            self.notify()
            last_write = loop.time()
            await asyncio.sleep(0)  # a fast reader never blocks the write: let others run

    async def _cut(
        self,
        request: web.Request,
        stream: StreamHandle,
        response: web.StreamResponse,
        delimited: bool,
    ) -> None:
        """Half a message, then a dropped connection: what a network failure looks like."""
        record = stream.record
        seq = self.allocate(1)
        framed = _frame(self._factory.tweet(seq, self.settings.message_size), delimited)
        await response.write(framed[: len(framed) // 2])
        record.partial_seq = seq
        record.close_reason = "cut"
        await abort_when_flushed(request, stream)

    # ---- control endpoints

    async def _control_script(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            faults = body if isinstance(body, list) else [body]
            self.script(*faults)
        except (ValueError, FakeAPIError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"queued": len(self._faults)})

    async def _control_configure(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise FakeAPIError("settings must be a JSON object")
            self.configure(**body)
        except (ValueError, FakeAPIError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(dataclasses.asdict(self.settings))

    async def _control_log(self, request: web.Request) -> web.Response:
        return web.json_response([r.to_dict() for r in self.log])

    async def _control_sent(self, request: web.Request) -> web.Response:
        try:
            conn = int(request.match_info["conn"])
        except ValueError:
            return web.json_response({"error": "conn must be a number"}, status=400)
        if conn not in self._recorded and not 0 <= conn < len(self.log):
            return web.json_response({"error": f"no connection {conn}"}, status=404)
        return web.json_response([m.decode() for m in self.sent_messages(conn)])

    async def _control_reset(self, request: web.Request) -> web.Response:
        await self.reset()
        return web.json_response({"reset": True})


def _check_stream_params(endpoint: str, params: dict[str, str]) -> tuple[int, str] | None:
    """Twitter's parameter rules: a (status, body) refusal, or None when acceptable."""
    delimited = params.get("delimited")
    if delimited is not None and delimited != "length":
        return 406, "Parameter delimited must be 'length'\r\n"
    if endpoint != "filter":
        return None
    track = [t for t in params.get("track", "").split(",") if t.strip()]
    follow = [f for f in params.get("follow", "").split(",") if f.strip()]
    locations = [c for c in params.get("locations", "").split(",") if c.strip()]
    if not (track or follow or locations):
        return 406, (
            "No filter parameters found. Expect at least one parameter: follow track locations\r\n"
        )
    if len(track) > MAX_TRACK:
        return 413, f"Parameter track item count {len(track)} exceeds {MAX_TRACK}\r\n"
    for i, phrase in enumerate(track):
        if len(phrase.strip().encode()) > MAX_TRACK_BYTES:
            return 406, f"Parameter track item index {i} too long: {phrase[:20]}...\r\n"
    if len(follow) > MAX_FOLLOW:
        return 413, f"Parameter follow item count {len(follow)} exceeds {MAX_FOLLOW}\r\n"
    for i, user in enumerate(follow):
        if not user.strip().isdigit():
            return 406, f"Parameter follow item index {i} is not a user id\r\n"
    if len(locations) % 4:
        return 406, "Parameter locations must hold groups of four coordinates\r\n"
    if len(locations) // 4 > MAX_BOXES:
        boxes = len(locations) // 4
        return 413, f"Parameter locations holds {boxes} boxes; at most {MAX_BOXES}\r\n"
    try:
        [float(c) for c in locations]
    except ValueError:
        return 406, "Parameter locations must be numbers\r\n"
    return None
