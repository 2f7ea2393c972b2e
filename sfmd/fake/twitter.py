"""The simulated Twitter API v1.1, mounted on the fake server (`sfmd.fake.server`).

It speaks the real wire protocol (OAuth 1.0a, chunked bodies, `\\r\\n` framing or
`delimited=length`, keep-alives, notices, the one-connection-per-credential rule) so the
collector is exercised exactly as in production, and it misbehaves on request: each connection
attempt may take one scripted fault (an HTTP status, a cut mid-message, a stall, a disconnect
message, an oversized or malformed line).

Speed matters because benchmarks must measure the client, not this server: tweets come from a
precomputed template in which only the id digits change, and are written in blocks of about
256 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from sfmd.fake.faults import TRIGGERS
from sfmd.fake.mount import (
    FIRST_SEQ,
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
from sfmd.fake.settings import Settings

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


#: At most this many tweet templates per filter connection, each matching one of its track
#: phrases, follow ids or boxes; a longer filter has its items taken in turn, second by second.
MAX_VARIANTS = 16
_TEXT = "Fake tweet from sfmd fakeapi \u2014 caf\u00e9 \u2615 #fakeapi"
_USER_ID = 2244994945


@dataclass(frozen=True)
class Match:
    """What a filter connection asked for, so that its tweets match it as Twitter's would.

    Twitter's rules: a track phrase matches a tweet whose text holds each of its words (a space
    means AND), in any case; a follow id one the user posted; a box one whose coordinates lie
    in it; `language` keeps tweets in those languages. Each template tweet matches one item."""

    track: tuple[str, ...] = ()
    follow: tuple[str, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    language: tuple[str, ...] = ()

    @classmethod
    def of(cls, endpoint: str, params: dict[str, str]) -> Match | None:
        """The filter's parameters as sent (already checked); None for a sample."""
        if endpoint != "filter":
            return None

        def items(key: str) -> tuple[str, ...]:
            return tuple(i.strip() for i in params.get(key, "").split(",") if i.strip())

        numbers = [float(c) for c in items("locations")]
        boxes = tuple(
            (numbers[i], numbers[i + 1], numbers[i + 2], numbers[i + 3])
            for i in range(0, len(numbers) - 3, 4)
        )
        return cls(items("track"), items("follow"), boxes, items("language"))

    @property
    def rotating(self) -> bool:
        """More items than templates: each second's templates take other items."""
        return len(self.track) + len(self.follow) + len(self.boxes) > MAX_VARIANTS

    def variants(self, second: int) -> list[dict[str, Any]]:
        """What each template changes in a tweet: one filter item each, and a language."""
        wanted: list[dict[str, Any]] = [
            *({"track": phrase} for phrase in self.track),
            *({"follow": user} for user in self.follow),
            *({"box": box} for box in self.boxes),
        ]
        if len(wanted) > MAX_VARIANTS:
            start = second * MAX_VARIANTS % len(wanted)
            wanted = (wanted[start:] + wanted[:start])[:MAX_VARIANTS]
        for i, variant in enumerate(wanted):
            if self.language:
                variant["lang"] = self.language[i % len(self.language)]
        return wanted or [{}]


def _matching(obj: dict[str, Any], variant: dict[str, Any]) -> None:
    """Make a tweet match one filter item (`Match.variants`)."""
    if "track" in variant:
        obj["text"] = f"{variant['track']}: {_TEXT}"
        start = len(obj["text"]) - len("#fakeapi")
        obj["entities"]["hashtags"][0]["indices"] = [start, start + len("#fakeapi")]
    if "follow" in variant:
        user = variant["follow"]
        obj["user"].update(id=int(user), id_str=user, screen_name=f"fake_{user}"[:15])
    if "box" in variant:
        west, south, east, north = variant["box"]
        lon, lat = round((west + east) / 2, 6), round((south + north) / 2, 6)
        obj["coordinates"] = {"type": "Point", "coordinates": [lon, lat]}
        obj["geo"] = {"type": "Point", "coordinates": [lat, lon]}
        obj["place"] = {
            "id": "0123456789abcdef", "url": "https://example.org/place", "place_type": "city",
            "name": "Fake place", "full_name": "Fake place", "country_code": "", "country": "",
            "bounding_box": {"type": "Polygon", "coordinates": [
                [[west, south], [west, north], [east, north], [east, south]]
            ]},
            "attributes": {},
        }
    if "lang" in variant:
        obj["lang"] = variant["lang"]


def _stamps(now: float) -> tuple[bytes, bytes]:
    """A tweet's `created_at` and `timestamp_ms` fields at `now`, as `_tweet_json` writes them;
    the same width at every moment since 2001."""
    created = time.strftime("%a %b %d %H:%M:%S +0000 %Y", time.gmtime(now))
    return (b'"created_at":"%s"' % created.encode(),
            b'"timestamp_ms":"%d"' % int(now * 1000))


#: The moment templates are made at, and its stamps, replaced by the current ones.
_REF_SECOND = 1_000_000_000
_REF_STAMPS = _stamps(_REF_SECOND)


def _tweet_json(
    id_value: int, size: int, now: float, variant: dict[str, Any] | None = None,
    at_least: int = 0,
) -> bytes:
    """A realistic v1.1 tweet of `size` bytes (or its minimum size if that is larger, or
    `at_least`), changed to match `variant` (`Match.variants`) if given."""
    text = _TEXT
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
            "id": _USER_ID,
            "id_str": str(_USER_ID),
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
    if variant:
        _matching(obj, variant)
    pad = max(size, at_least) - len(dumps(obj))
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
    """Builds framed blocks of messages; only the id digits change between tweets.

    A filter connection's tweets come from a few templates, each matching one of its items
    (`Match`), taken in turn by sequence number; the templates are padded to one size, so a
    filter's messages are as long as a sample's and every block is evenly spaced."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[int, bool, Match | None], tuple[int, list[_TweetShape]]] = {}
        #: Each filter's templates, stamped with `_REF_SECOND`: a new second only replaces
        #: the two timestamps, so a thousand filters do not build a thousand tweets a second.
        self._templates: dict[tuple[int, Match | None, int], list[bytes]] = {}

    def _template(self, size: int, match: Match | None, second: int) -> list[bytes]:
        # A filter with more items than templates takes other items each second.
        turn = second if match is not None and match.rotating else 0
        key = (size, match, turn)
        templates = self._templates.get(key)
        if templates is None:
            variants = match.variants(second) if match is not None else [{}]
            longest = 0 if len(variants) == 1 else max(  # several: pad all to the longest
                len(_tweet_json(_ID_MARK, 0, _REF_SECOND, v)) for v in variants)
            templates = [_tweet_json(_ID_MARK, size, _REF_SECOND, v, at_least=longest)
                         for v in variants]
            if len(self._templates) > 4096:
                self._templates.clear()
            self._templates[key] = templates
        return templates

    def shapes(
        self, size: int, delimited: bool, match: Match | None = None
    ) -> list[_TweetShape]:
        second = int(time.time())
        key = (size, delimited, match)
        cached = self._shapes.get(key)
        if cached is not None and cached[0] == second:
            return cached[1]
        stamps = _stamps(second)
        shapes = []
        for template in self._template(size, match, second):
            raw = template.replace(_REF_STAMPS[0], stamps[0], 1).replace(
                _REF_STAMPS[1], stamps[1], 1)
            head, mid, tail = raw.split(str(_ID_MARK).encode())
            length = len(head) + len(mid) + len(tail) + 2 * _ID_DIGITS
            prefix = b"%d\r\n" % (length + 2) if delimited else b""
            shapes.append(_TweetShape(head, mid, tail, prefix + head, tail + b"\r\n"))
        if len(self._shapes) > 1024:  # one per filter; forget the ones from other seconds
            self._shapes = {k: v for k, v in self._shapes.items() if v[0] == second}
        self._shapes[key] = (second, shapes)
        return shapes

    def shape(self, size: int, delimited: bool, match: Match | None = None) -> _TweetShape:
        return self.shapes(size, delimited, match)[0]

    def tweet(self, seq: int, size: int, match: Match | None = None) -> bytes:
        shapes = self.shapes(size, False, match)
        shape = shapes[seq % len(shapes)]
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
        self, first_seq: int, index: int, count: int, delimited: bool, settings: Settings,
        match: Match | None = None,
    ) -> tuple[bytes, list[bytes] | None]:
        """`count` framed messages from `first_seq`, and the bare messages when recording.

        `index` messages went before on this connection: notices are placed by position."""
        shapes = self.shapes(settings.message_size, delimited, match)
        shape = shapes[0]
        every_delete, every_limit = settings.delete_every, settings.limit_every
        if not every_delete and not every_limit:
            # The hot path: one join over shared pieces, no per-message objects.
            pieces: list[bytes] = []
            extend = pieces.extend
            if len(shapes) == 1:
                head, mid, tail = shape.framed_head, shape.mid, shape.framed_tail
                for seq in range(first_seq, first_seq + count):
                    digits = b"%d" % seq
                    extend((head, digits, mid, digits, tail))
            else:
                parts = [(s.framed_head, s.mid, s.framed_tail) for s in shapes]
                n = len(parts)
                for seq in range(first_seq, first_seq + count):
                    digits = b"%d" % seq
                    head, mid, tail = parts[seq % n]
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
                one = shapes[seq % len(shapes)]
                messages.append(one.head + digits + one.mid + digits + one.tail)
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


# --------------------------------------------------------------------------- the v1.1 API


class V1API:
    """The v1.1 routes of a FakeAPI: OAuth 1.0a, the filter and sample streams, users/lookup."""

    def __init__(self, host: Host, credentials: dict[str, Credential] | None) -> None:
        self._host = host
        self._credentials = None
        if credentials is not None:
            self._credentials = {
                (c.consumer_key, c.access_token): c for c in credentials.values() if c.has_oauth1
            }
        #: Access token -> its open stream: one connection per credential.
        self._holders: dict[str, StreamHandle] = {}
        self._factory = MessageFactory()

    def add_routes(self, app: web.Application, handler: Callable[[str], Handler]) -> None:
        """Mount the v1.1 paths, GET and POST alike."""
        for path, endpoint in (*STREAM_PATHS.items(), (LOOKUP_PATH, "users/lookup")):
            handle = handler(endpoint)
            app.router.add_route("GET", path, handle)
            app.router.add_route("POST", path, handle)

    def reset(self) -> None:
        """Nothing outlives a reset here: a credential's hold ends with its stream."""

    # ---- requests

    async def serve(self, request: web.Request, stream: StreamHandle) -> web.StreamResponse:
        """Answer one v1.1 request whose record `FakeAPI` has opened."""
        record = stream.record
        raw = await request.read()
        is_form = request.content_type == "application/x-www-form-urlencoded"
        body = raw.decode("utf-8", "replace") if is_form else ""
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        record.params = {k: v for k, v in params.items() if not k.startswith("oauth_")}
        fault = self._host.take_fault(record.endpoint)
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
        headers = {
            "Content-Type": "application/json",
            "X-Connection-Hash": hashlib.sha1(b"%d" % record.conn).hexdigest(),
        }
        try:
            return await stream_body(
                request, stream, self._host, headers,
                lambda response: self._pump(request, stream, response, delimited),
            )
        finally:
            if auth.token is not None and self._holders.get(auth.token) is stream:
                del self._holders[auth.token]

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
            if self._host.settings.record_bytes:
                self._host.record_sent(record.conn, [message])
        self._host.notify()

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
        match = Match.of(record.endpoint, record.params)
        last_write = loop.time()
        pacer = Pacer()

        while True:
            if stream.stop_reason:
                if stream.stop_reason == "replaced":
                    message = self._factory.disconnect(self._host.allocate(1), 7, stream_name)
                    await self._send(stream, response, [message], delimited)
                    response.force_close()
                return
            settings = self._host.settings
            sent = record.sent_count
            if trigger_at is not None and sent == trigger_at:
                trigger_at = None
                if trigger == "cut_after":
                    await self._cut(request, stream, response, delimited, match)
                    return
                if trigger == "stall_after":
                    while not stream.stop_reason:
                        await stream.sleep_until(None)
                    return
                if trigger == "disconnect_after":
                    code = fault.get("code", 10)
                    message = self._factory.disconnect(self._host.allocate(1), code, stream_name)
                    await self._send(stream, response, [message], delimited)
                    record.close_reason = f"disconnect_{code}"
                    response.force_close()
                    return
                if trigger == "oversized_after":
                    seq = self._host.allocate(1)
                    message = _tweet_json(seq, fault.get("size", 600_000), time.time())
                else:
                    message = self._factory.malformed(self._host.allocate(1))
                await self._send(stream, response, [message], delimited)
                last_write = loop.time()
                continue

            count, last_write = await next_batch(
                stream, response, pacer, settings, want=block_count(settings.message_size),
                sent=sent, trigger_at=trigger_at, last_write=last_write,
            )
            if count <= 0:
                continue

            first = self._host.allocate(count)
            data, messages = self._factory.block(first, sent, count, delimited, settings, match)
            await response.write(data)
            record.sent_count += count
            record.add_seqs(first, first + count - 1)
            if messages is not None:
                self._host.record_sent(record.conn, messages)
            self._host.notify()
            last_write = loop.time()
            await asyncio.sleep(0)  # a fast reader never blocks the write: let others run

    async def _cut(
        self,
        request: web.Request,
        stream: StreamHandle,
        response: web.StreamResponse,
        delimited: bool,
        match: Match | None,
    ) -> None:
        """Half a message, then a dropped connection: what a network failure looks like."""
        record = stream.record
        seq = self._host.allocate(1)
        message = self._factory.tweet(seq, self._host.settings.message_size, match)
        framed = _frame(message, delimited)
        await response.write(framed[: len(framed) // 2])
        record.partial_seq = seq
        record.close_reason = "cut"
        await abort_when_flushed(request, stream)


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
