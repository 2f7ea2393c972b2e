"""A simulated Bluesky Jetstream instance (the v1 `/subscribe` WebSocket), mounted on the
fake server (`sfmd.fake.server`).

The instance produces events on its own clock whether or not anyone is subscribed (commits
across posts, likes, reposts, follows and profiles, plus identity and account events), stamps
each with a rising, unique `time_us` from the wall clock and keeps `jetstream_window` seconds
of them for cursor replay. What an event holds follows from `jetstream_seed` and its position,
so the store keeps only timestamps and renders an event's JSON again when it is needed: the
same bytes every time, and a day of events costs megabytes, not gigabytes.

Subscribing follows bluesky-social/jetstream's v1 `/subscribe` (the legacy server's
pkg/server, and the v1-compatible handler of its rewrite, internal/subscribe):

- `wantedCollections` (repeatable, at most 100; an NSID or `prefix.*`), `wantedDids`
  (repeatable, at most 10,000); malformed or too many: HTTP 400 before the upgrade. The
  collection filter applies to commits only: identity and account events reach every
  subscriber whose DID filter they pass.
- `cursor` (unix µs): absent, empty or in the future means the live tail; otherwise replay
  from the first held event with `time_us >= cursor` (inclusive), clamped to the oldest held;
  not a number, or negative: HTTP 400. Every subscriber reads one store through one pointer,
  so the switch from replay to live loses and doubles nothing.
- `compress=true` or a `Socket-Encoding` header holding `zstd`: each event is one binary frame
  holding one zstd frame made with the shipped dictionary; otherwise one text frame. Asking
  for zstd while offering permessage-deflate is refused with 400, as the rewrite does.
- `maxMessageSizeBytes`: events whose JSON is longer are skipped silently; garbage, negative
  or overflowing values mean no cap.
- `requireHello=true`: nothing is sent until the first valid options_update.
- An `options_update` text message replaces the filters from the next event on; an
  undecodable one closes the connection with 1007, an invalid one with 1008 (the reason
  says why); an unknown message type or a binary message is ignored.
- A ping every `jetstream_ping_interval` s; a live subscriber `jetstream_outbox` events
  behind the tip is dropped without a close frame, as the legacy server drops a full outbox.

Faults (endpoint "jetstream", see `sfmd.fake.faults`) take effect on the next connection.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import random
import re
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zstandard
from aiohttp import WSMsgType, web

from sfmd.fake.faults import JETSTREAM_TRIGGERS
from sfmd.fake.mount import (
    Handler,
    Host,
    StreamHandle,
    abort_when_flushed,
    dumps,
    reason_phrase,
    serve_socket,
)
from sfmd.fake.settings import Settings
from sfmd.sources.bluesky import zstd

PATH = "/subscribe"
ENDPOINT = "jetstream"

MAX_WANTED_COLLECTIONS = 100
MAX_WANTED_DIDS = 10_000
#: The largest message a subscriber may send (decimal, as Jetstream documents it).
MAX_CLIENT_MESSAGE = 10_000_000
#: WebSocket close codes the real server uses on a bad options_update.
CLOSE_BAD_MESSAGE = 1007
CLOSE_INVALID_OPTIONS = 1008
#: Default inflated size of the `oversize_after` frame: twice sfmd's cap on an event.
OVERSIZE_DEFAULT = 2 * 1024 * 1024

COLLECTIONS = (
    "app.bsky.feed.like",
    "app.bsky.graph.follow",
    "app.bsky.feed.post",
    "app.bsky.feed.repost",
    "app.bsky.actor.profile",
)
_COLLECTION_WEIGHTS = (42, 13, 30, 12, 3)
DID_POOL = 200
_IDENTITY_SHARE = 0.006
_ACCOUNT_SHARE = 0.006
#: Events of an instance kept rendered for the subscribers at the tip.
_CACHE = 4096
#: A production step never makes more than this; further behind, the schedule restarts.
_MAX_CATCH_UP = 50_000

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_S32 = "234567abcdefghijklmnopqrstuvwxyz"
_NSID = re.compile(
    r"^[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}$"
)
_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
_WORDS = (
    "the a of to and in is it you that was for on are with as I his they be at one have this "
    "from or had by hot word but what some we can out other were all there when up use your "
    "how said an each she which do their time if will way about many then them write would "
    "like so these her long make thing see him two has look more day could go come did number "
    "sound no most people my over know water than call first who may down side been now find "
    "bluesky skeet feed post thread morning coffee weekend photo art music garden cat dog "
    "café naïve 🦋 ✨ 😂 🎉 🌻"
).split()


class InvalidOptions(ValueError):
    """A subscriber's filters are malformed or too many; the message says which."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class JetstreamEvent:
    """One event the instance produced: its JSON text exactly as sent, and what filters see."""

    time_us: int
    did: str
    kind: str
    #: The commit's collection and operation; "" for identity and account events.
    collection: str
    operation: str
    text: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.text)


def tid(us: int, clock: int) -> str:
    """An atproto TID (13 characters, sortable base32) for a time in µs and a clock id."""
    n = ((us & ((1 << 53) - 1)) << 10) | (clock & 0x3FF)
    out = []
    for _ in range(13):
        out.append(_S32[n & 31])
        n >>= 5
    return "".join(reversed(out))


def _b32(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_B32) for _ in range(n))


def _iso(us: int) -> str:
    """A firehose timestamp: UTC, milliseconds, Z."""
    seconds, micros = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros // 1000:03d}Z"


def _sorted(obj: Any) -> Any:
    """Keys in order, as Jetstream's Go encoder writes a record's map."""
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted(v) for v in obj]
    return obj


class EventMaker:
    """Renders event number `index` of a seed at `time_us`: the same bytes every time."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = random.Random(seed)
        self.dids = [f"did:plc:{_b32(rng, 24)}" for _ in range(DID_POOL)]
        self.handles = [f"{_b32(rng, rng.randint(4, 12))}.bsky.social" for _ in range(DID_POOL)]

    def render(self, index: int, time_us: int) -> JetstreamEvent:
        rng = random.Random((self.seed << 40) ^ index)
        who = rng.randrange(DID_POOL)
        did = self.dids[who]
        roll = rng.random()
        firehose_seq = 4_000_000_000 + index * 3 + rng.randrange(3)
        if roll < _IDENTITY_SHARE:
            body: dict[str, Any] = {
                "did": did,
                "handle": self.handles[who],
                "seq": firehose_seq,
                "time": _iso(time_us - rng.randrange(50_000, 900_000)),
            }
            return self._event(did, time_us, "identity", "", "", {"identity": body})
        if roll < _IDENTITY_SHARE + _ACCOUNT_SHARE:
            active = rng.random() < 0.7
            account: dict[str, Any] = {"active": active, "did": did, "seq": firehose_seq}
            if not active:
                account["status"] = rng.choice(("deactivated", "takendown", "deleted"))
            account["time"] = _iso(time_us - rng.randrange(50_000, 900_000))
            return self._event(did, time_us, "account", "", "", {"account": account})
        collection = rng.choices(COLLECTIONS, _COLLECTION_WEIGHTS)[0]
        if collection == "app.bsky.actor.profile":
            operation = "update" if rng.random() < 0.85 else "create"
            rkey = "self"
        else:
            operation = "delete" if rng.random() < 0.1 else "create"
            back = rng.randrange(0, 2_000_000) if operation == "create" else rng.randrange(
                10**6, 3 * 10**13
            )
            rkey = tid(time_us - back, rng.randrange(1024))
        commit: dict[str, Any] = {
            "rev": tid(time_us - rng.randrange(20_000, 400_000), rng.randrange(1024)),
            "operation": operation,
            "collection": collection,
            "rkey": rkey,
        }
        if operation != "delete":
            created = _iso(time_us - rng.randrange(100_000, 3_000_000))
            commit["record"] = _sorted(self._record(rng, collection, created))
            commit["cid"] = "bafyrei" + _b32(rng, 52)
        return self._event(did, time_us, "commit", collection, operation, {"commit": commit})

    @staticmethod
    def _event(
        did: str, time_us: int, kind: str, collection: str, operation: str, body: dict[str, Any]
    ) -> JetstreamEvent:
        text = dumps({"did": did, "time_us": time_us, "kind": kind, **body})
        return JetstreamEvent(time_us, did, kind, collection, operation, text)

    def _uri(self, rng: random.Random, collection: str) -> dict[str, str]:
        did = self.dids[rng.randrange(DID_POOL)]
        rkey = tid(rng.randrange(1_690_000_000_000_000, 1_760_000_000_000_000), rng.randrange(1024))
        return {"cid": "bafyrei" + _b32(rng, 52), "uri": f"at://{did}/{collection}/{rkey}"}

    def _text(self, rng: random.Random, words: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(words))

    def _blob(self, rng: random.Random, mime: str = "image/jpeg") -> dict[str, Any]:
        return {
            "$type": "blob",
            "mimeType": mime,
            "ref": {"$link": "bafkrei" + _b32(rng, 52)},
            "size": rng.randrange(20_000, 1_000_000),
        }

    def _record(self, rng: random.Random, collection: str, created: str) -> dict[str, Any]:
        record: dict[str, Any] = {"$type": collection, "createdAt": created}
        if collection in ("app.bsky.feed.like", "app.bsky.feed.repost"):
            record["subject"] = self._uri(rng, "app.bsky.feed.post")
        elif collection == "app.bsky.graph.follow":
            record["subject"] = self.dids[rng.randrange(DID_POOL)]
        elif collection == "app.bsky.actor.profile":
            del record["createdAt"]
            record["avatar"] = self._blob(rng)
            record["banner"] = self._blob(rng)
            record["description"] = self._text(rng, rng.randrange(0, 60))
            record["displayName"] = self._text(rng, rng.randrange(1, 4))
        else:
            self._post(rng, record)
        return record

    def _post(self, rng: random.Random, record: dict[str, Any]) -> None:
        record["langs"] = [rng.choice(("en", "en", "en", "ja", "pt", "de", "es"))]
        record["text"] = self._text(rng, rng.choice((rng.randrange(4, 30), rng.randrange(20, 70))))
        if rng.random() < 0.35:
            record["reply"] = {
                "parent": self._uri(rng, "app.bsky.feed.post"),
                "root": self._uri(rng, "app.bsky.feed.post"),
            }
        if rng.random() < 0.12:
            record["facets"] = [
                {
                    "features": [
                        {
                            "$type": "app.bsky.richtext.facet#link",
                            "uri": "https://example.org/" + _b32(rng, 12),
                        }
                    ],
                    "index": {"byteEnd": 30, "byteStart": 0},
                }
            ]
        if rng.random() < 0.2:
            images = rng.randrange(1, 5)
            if rng.random() < 0.02:  # the rare giant: long alt texts on many images
                images = 4
                alt_words = rng.randrange(600, 2500)
            else:
                alt_words = rng.choice((0, 0, 5, 20))
            record["embed"] = {
                "$type": "app.bsky.embed.images",
                "images": [
                    {
                        "alt": self._text(rng, alt_words),
                        "aspectRatio": {"height": rng.randrange(300, 2000), "width": 1000},
                        "image": self._blob(rng),
                    }
                    for _ in range(images)
                ],
            }


# --------------------------------------------------------------------------- store


class EventStore:
    """Every event the instance holds: timestamps only; events are rendered on demand.

    An event's absolute index never changes while it is held, so a subscriber's place in the
    stream is one number that replay and the live tail share."""

    def __init__(self, seed: int) -> None:
        self._times = array("q")
        self._base = 0  # the absolute index of _times[0]
        self._lo = 0  # the position in _times of the oldest event held
        self._seeds: list[tuple[int, EventMaker]] = [(0, EventMaker(seed))]
        self._cache: OrderedDict[int, tuple[JetstreamEvent, bytes | None]] = OrderedDict()
        self._compressor = zstd.compressor()

    @property
    def first(self) -> int:
        """The absolute index of the oldest event held."""
        return self._base + self._lo

    @property
    def end(self) -> int:
        """One past the absolute index of the newest event."""
        return self._base + len(self._times)

    @property
    def last_us(self) -> int:
        return self._times[-1] if len(self._times) > self._lo else 0

    def dids(self) -> list[str]:
        """The DID pool of the current seed."""
        return self._seeds[-1][1].dids

    def set_seed(self, seed: int) -> None:
        if self._seeds[-1][1].seed != seed:
            self._seeds.append((self.end, EventMaker(seed)))

    def append(self, time_us: int) -> int:
        """Hold a new event stamped `time_us` (at least one past the newest); its time_us."""
        stamp = max(time_us, self.last_us + 1)
        self._times.append(stamp)
        return stamp

    def trim(self, before_us: int) -> None:
        """Drop every event older than `before_us`."""
        pos = bisect.bisect_left(self._times, before_us, self._lo)
        self._lo = min(pos, len(self._times))
        if self._lo > 65_536 and self._lo * 2 > len(self._times):
            del self._times[: self._lo]
            self._base += self._lo
            self._lo = 0
        while len(self._seeds) > 1 and self._seeds[1][0] <= self.first:
            self._seeds.pop(0)

    def index_at(self, time_us: int) -> int:
        """The first held event with `time_us` at or after the given one (or `end`)."""
        return self._base + bisect.bisect_left(self._times, time_us, self._lo)

    def time_of(self, index: int) -> int:
        return self._times[index - self._base]

    def event(self, index: int) -> JetstreamEvent:
        return self._entry(index)[0]

    def frame(self, index: int) -> bytes:
        """The event as the compressed subscribers get it: one zstd frame with the dictionary."""
        event, frame = self._entry(index)
        if frame is None:
            frame = self._compressor.compress(event.text)
            self._cache[index] = (event, frame)
        return frame

    def events(self, since_us: int | None, until_us: int | None) -> list[JetstreamEvent]:
        start = self.first if since_us is None else max(self.first, self.index_at(since_us))
        stop = self.end if until_us is None else self.index_at(until_us + 1)
        return [self.event(i) for i in range(start, stop)]

    def _entry(self, index: int) -> tuple[JetstreamEvent, bytes | None]:
        entry = self._cache.get(index)
        if entry is not None:
            return entry
        maker = self._seeds[0][1]
        for first, candidate in self._seeds:
            if first <= index:
                maker = candidate
        entry = (maker.render(index, self.time_of(index)), None)
        self._cache[index] = entry
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return entry


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class JetstreamFilter:
    """A subscriber's filters, as the real server parses and applies them."""

    collections: frozenset[str] | None = None
    prefixes: tuple[str, ...] = ()
    dids: frozenset[str] | None = None
    max_message_size: int = 0

    @classmethod
    def parse(
        cls, collections: Iterable[str], dids: Iterable[str], max_message_size: int = 0
    ) -> JetstreamFilter:
        """Check and build; `InvalidOptions` names the first problem."""
        full: set[str] = set()
        prefixes: list[str] = []
        wanted = list(collections)
        for raw in wanted:
            if raw.endswith(".*"):
                head = raw[:-1]
                if head not in prefixes:
                    prefixes.append(head)
            elif len(raw) <= 317 and _NSID.match(raw):
                full.add(raw)
            else:
                raise InvalidOptions(f"invalid subscriber options: invalid collection: {raw}")
            if len(full) + len(prefixes) > MAX_WANTED_COLLECTIONS:
                raise InvalidOptions(
                    "invalid subscriber options: too many wanted collections: "
                    f"> {MAX_WANTED_COLLECTIONS}"
                )
        wanted_dids: set[str] = set()
        for raw in dids:
            if len(raw) > 2048 or not _DID.match(raw):
                raise InvalidOptions(f"invalid subscriber options: invalid DID: {raw}")
            wanted_dids.add(raw)
        if len(wanted_dids) > MAX_WANTED_DIDS:
            raise InvalidOptions(
                "invalid subscriber options: too many wanted DIDs: "
                f"{len(wanted_dids)} > {MAX_WANTED_DIDS}"
            )
        return cls(
            frozenset(full) if wanted else None,
            tuple(prefixes),
            frozenset(wanted_dids) if wanted_dids else None,
            max_message_size,
        )

    def wants(self, event: JetstreamEvent) -> bool:
        """Whether the event passes (the size cap aside: see `fits`)."""
        if self.dids is not None and event.did not in self.dids:
            return False
        if self.collections is None or event.kind != "commit" or not event.collection:
            return True  # identity and account events pass any collection filter
        return event.collection in self.collections or any(
            event.collection.startswith(p) for p in self.prefixes
        )

    def fits(self, event: JetstreamEvent) -> bool:
        return not self.max_message_size or len(event.text) <= self.max_message_size

    def to_dict(self) -> dict[str, Any]:
        collections = sorted(self.collections or ()) + [p + "*" for p in self.prefixes]
        return {
            "wantedCollections": collections,
            "wantedDids": sorted(self.dids or ()),
            "maxMessageSizeBytes": self.max_message_size,
        }


def max_size_from_query(raw: str) -> int:
    """v1's rule: empty, malformed, negative or overflowing values mean no cap."""
    try:
        value = int(raw)
    except ValueError:
        return 0
    return value if 0 <= value <= 0xFFFFFFFF else 0


def filter_from_update(message: str) -> JetstreamFilter | None:
    """The filter an options_update text message asks for; None for another message type.

    `ValueError` (close 1007) when it cannot be decoded; `InvalidOptions` (close 1008) when
    it decodes but names bad filters."""
    try:
        envelope = json.loads(message)
    except ValueError:
        raise ValueError("bad SubscriberSourcedMessage envelope") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("type", ""), str):
        raise ValueError("bad SubscriberSourcedMessage envelope")
    if envelope.get("type") != "options_update":
        return None
    payload = envelope.get("payload", ...)
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ValueError("bad options_update payload")
    lists: list[list[str]] = []
    for key in ("wantedCollections", "wantedDids"):
        value = payload.get(key)
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("bad options_update payload")
        lists.append(value)
    size = payload.get("maxMessageSizeBytes")
    if size is None:
        size = 0
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError("bad options_update payload")
    return JetstreamFilter.parse(lists[0], lists[1], max(0, size) & 0xFFFFFFFF)


# --------------------------------------------------------------------------- the instance


@dataclass
class _Subscriber:
    request: web.Request
    stream: StreamHandle
    filter: JetstreamFilter
    compress: bool
    #: The absolute index of the next event to judge; None until the start is resolved.
    next: int | None = None
    #: The time_us of the last event judged under the filter in force.
    judged_us: int = 0
    live: bool = False
    hello: asyncio.Event = field(default_factory=asyncio.Event)


class JetstreamAPI:
    """The Jetstream instance of a FakeAPI: its event store, its producer and `/subscribe`."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.store = EventStore(host.settings.jetstream_seed)
        self._subscribers: dict[int, _Subscriber] = {}
        self._options: dict[int, list[dict[str, Any]]] = {}
        self._producer: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._anchor: tuple[float, float, int] | None = None  # (start, rate, burst)
        self._made = 0
        #: Events the last production step made at once: a subscriber is not behind for those.
        self._last_step = 0

    # ---- the producer

    def start(self) -> None:
        """Begin producing (called once the server listens)."""
        if self._producer is None:
            self._producer = asyncio.ensure_future(self._produce_forever())

    async def stop(self) -> None:
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
            self._producer = None

    def settings_changed(self) -> None:
        """Settings changed: the producer re-reads them now."""
        self.store.set_seed(self._host.settings.jetstream_seed)
        self._kick.set()

    def produce(self, count: int) -> list[JetstreamEvent]:
        """Produce `count` events now, whatever the rate (tests use it with the rate at 0)."""
        now_us = time.time_ns() // 1000
        first = self.store.end
        for _ in range(count):
            self.store.append(now_us)
        self._last_step = count
        self._produced()
        return [self.store.event(i) for i in range(max(first, self.store.first), self.store.end)]

    async def _produce_forever(self) -> None:
        while True:
            wake_at = self._produce_due(time.time(), self._host.settings)
            self._kick.clear()
            timeout = None if wake_at is None else max(0.0, wake_at - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._kick.wait()

    def _produce_due(self, now: float, settings: Settings) -> float | None:
        """Produce what the schedule holds up to `now`; when the next is due (None: never)."""
        rate = settings.jetstream_rate
        burst = max(1, settings.jetstream_burst or 1)
        self.store.trim(int((now - settings.jetstream_window) * 1_000_000))
        if rate <= 0:
            self._anchor = None
            return None
        if self._anchor is None or self._anchor[1:] != (rate, burst):
            self._anchor, self._made = (now, rate, burst), 0
        start = self._anchor[0]
        due = burst * int((now - start) * rate / burst)
        if due - self._made > _MAX_CATCH_UP:  # the loop was held up: start again from now
            self._anchor, self._made = (now, rate, burst), 0
            return now + burst / rate
        if due > self._made:
            for k in range(self._made, due):
                at = start + (k // burst + 1) * burst / rate
                self.store.append(int(at * 1_000_000))
            self._last_step = due - self._made
            self._made = due
            self._produced()
        return start + (due // burst + 1) * burst / rate

    def _produced(self) -> None:
        for sub in list(self._subscribers.values()):
            if not self._behind(sub):
                sub.stream.wake.set()
        self._host.notify()

    def _behind(self, sub: _Subscriber) -> bool:
        """Drop a live subscriber that is `jetstream_outbox` events behind the tip (beyond what
        one production step brought), as the real server drops one whose outbox is full: it
        closes the socket and sends no close frame. True when dropped."""
        outbox = self._host.settings.jetstream_outbox
        if not (sub.live and outbox and sub.next is not None):
            return False
        if self.store.end - sub.next <= outbox + self._last_step or sub.stream.stop_reason:
            return False
        self._drop(sub)
        return True

    # ---- what tests read

    def events(self, since_us: int | None = None, until_us: int | None = None) -> list[
        JetstreamEvent
    ]:
        """The held events with since_us <= time_us <= until_us, oldest first."""
        return self.store.events(since_us, until_us)

    def options_updates(self, conn: int) -> list[dict[str, Any]]:
        """Connection `conn`'s options_update messages: each applied one with `from_us` (the
        new filter judged every event with time_us >= from_us, the old one every earlier
        event) and the filters; each refused one with `error` and `close_code`."""
        return [dict(u) for u in self._options.get(conn, [])]

    # ---- Mount

    def add_routes(self, app: web.Application, handler: Callable[[str], Handler]) -> None:
        app.router.add_get(PATH, handler(ENDPOINT))
        app.router.add_get("/_fake/jetstream/events", self._control_events)
        app.router.add_get("/_fake/jetstream/options/{conn}", self._control_options)

    def reset(self) -> None:
        """Forget the held events, the options log and the schedule; settings are restored."""
        self._options.clear()
        self.store = EventStore(self._host.settings.jetstream_seed)
        self._anchor, self._made = None, 0
        self._kick.set()

    async def serve(self, request: web.Request, stream: StreamHandle) -> web.StreamResponse:
        record = stream.record
        query = request.query
        record.params = {k: ",".join(query.getall(k)) for k in query}
        fault = self._host.take_fault(ENDPOINT)
        record.fault = fault
        if fault and fault.get("delay"):
            await stream.sleep_until(asyncio.get_running_loop().time() + fault["delay"])
            if stream.stop_reason:
                return self._refuse(record, 503, "service not ready")
        if fault and "status" in fault:
            status = fault["status"]
            error = _ERROR_NAMES.get(status, reason_phrase(status).replace(" ", ""))
            body = {"error": error, "message": fault.get("body", reason_phrase(status))}
            record.status = status
            record.first_byte = time.monotonic()
            return web.json_response(body, status=status, headers=fault.get("headers"))

        compress = query.get("compress") == "true" or "zstd" in request.headers.get(
            "Socket-Encoding", ""
        )
        if compress and "permessage-deflate" in request.headers.get("Sec-WebSocket-Extensions", ""):
            return self._refuse(
                record, 400, "choose one compression scheme: custom zstd or permessage-deflate"
            )
        cursor: int | None = None
        raw_cursor = query.get("cursor", "")
        if raw_cursor:
            try:
                cursor = int(raw_cursor)
            except ValueError:
                return self._refuse(record, 400, f"invalid cursor: {raw_cursor}")
            if cursor < 0:
                return self._refuse(record, 400, f"invalid cursor: {raw_cursor}")
            if cursor > time.time_ns() // 1000:
                cursor = None  # a future cursor: the live tail
        try:
            wanted = JetstreamFilter.parse(
                query.getall("wantedCollections", []),
                query.getall("wantedDids", []),
                max_size_from_query(query.get("maxMessageSizeBytes", "")),
            )
        except InvalidOptions as e:
            return self._refuse(record, 400, str(e))

        ws = web.WebSocketResponse(
            compress=not compress, max_msg_size=MAX_CLIENT_MESSAGE, timeout=1.0
        )
        await ws.prepare(request)
        record.status = 101
        record.first_byte = time.monotonic()
        record.summary = {"compress": compress, "cursor": cursor, "start_us": None,
                          "clamped": False, "last_time_us": None, "pings": 0, "skipped": 0}
        sub = _Subscriber(request, stream, wanted, compress)
        if cursor is not None:
            sub.next = self._resolve_cursor(sub, cursor)
        if query.get("requireHello") != "true":
            sub.hello.set()
        self._subscribers[record.conn] = sub
        self._host.notify()
        return await serve_socket(
            request, ws, stream, self._read(ws, sub), self._pump(request, ws, sub),
            forget=lambda: self._subscribers.pop(record.conn),
        )

    def _refuse(self, record: Any, status: int, text: str) -> web.Response:
        """A refusal before the upgrade: plain text, as the v1 endpoint answers."""
        record.status = status
        record.first_byte = time.monotonic()
        return web.Response(status=status, text=text + "\n")

    def _resolve_cursor(self, sub: _Subscriber, cursor: int) -> int:
        """Where replay from `cursor` starts: inclusive, clamped to the oldest held."""
        start = self.store.index_at(cursor)
        summary = sub.stream.record.summary or {}
        held = self.store.end > self.store.first
        summary["clamped"] = held and cursor < self.store.time_of(self.store.first)
        if start < self.store.end:
            summary["start_us"] = self.store.time_of(start)
        sub.judged_us = cursor - 1
        return start

    # ---- the connection

    async def _read(self, ws: web.WebSocketResponse, sub: _Subscriber) -> None:
        """Take options_update messages until the subscriber goes or is closed."""
        record = sub.stream.record
        log = self._options.setdefault(record.conn, [])
        while True:
            message = await ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                                WSMsgType.ERROR):
                if message.type == WSMsgType.ERROR and ws.close_code == 1009:
                    log.append({"error": "message too big", "close_code": 1009})
                sub.stream.request_stop("client_closed")
                return
            if message.type != WSMsgType.TEXT:
                continue  # binary messages are ignored, as the real server ignores them
            try:
                new = filter_from_update(message.data)
            except InvalidOptions as e:
                await self._close_for(ws, sub, CLOSE_INVALID_OPTIONS, str(e), log)
                return
            except ValueError as e:
                await self._close_for(ws, sub, CLOSE_BAD_MESSAGE, str(e), log)
                return
            if new is None:
                continue  # an unknown message type: logged and ignored upstream
            sub.filter = new
            log.append({"from_us": sub.judged_us + 1, **new.to_dict()})
            sub.hello.set()
            sub.stream.wake.set()
            self._host.notify()

    async def _close_for(
        self, ws: web.WebSocketResponse, sub: _Subscriber, code: int, reason: str,
        log: list[dict[str, Any]],
    ) -> None:
        log.append({"error": reason, "close_code": code})
        sub.stream.record.close_reason = "invalid_options"
        sub.stream.request_stop("invalid_options")
        self._host.notify()
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await ws.close(code=code, message=_close_reason(reason).encode())

    async def _pump(
        self, request: web.Request, ws: web.WebSocketResponse, sub: _Subscriber
    ) -> None:
        """Send events, pings and the scripted fault until the connection must end."""
        loop = asyncio.get_running_loop()
        stream, record, store = sub.stream, sub.stream.record, self.store
        summary: dict[str, Any] = record.summary or {}
        fault = record.fault or {}
        trigger = next((k for k in (*JETSTREAM_TRIGGERS, "stall_after") if k in fault), None)
        trigger_at: int | None = fault[trigger] if trigger else None

        while not sub.hello.is_set():
            if stream.stop_reason:
                return
            await stream.sleep_until(None)
        if sub.next is None:
            sub.next = store.end  # the live tail starts at the next event produced
            sub.judged_us = store.last_us
        ping_at = loop.time() + self._host.settings.jetstream_ping_interval

        while not stream.stop_reason:
            if trigger_at is not None and record.sent_count >= trigger_at:
                trigger_at = None
                if trigger == "close_after":
                    record.close_reason = "closed"
                    await abort_when_flushed(request, stream)
                    return
                if trigger == "slow_consumer_after":
                    self._drop(sub)
                    return
                if trigger == "stall_after":
                    duration = fault.get("duration")
                    until = None if duration is None else loop.time() + duration
                    while not stream.stop_reason and (until is None or loop.time() < until):
                        await stream.sleep_until(until)
                    ping_at = loop.time() + self._host.settings.jetstream_ping_interval
                    continue
                await self._send_fault_frame(ws, sub, trigger, fault)
                continue
            now = loop.time()
            if now >= ping_at:
                await ws.ping()
                summary["pings"] += 1
                ping_at = now + self._host.settings.jetstream_ping_interval
                self._host.notify()
            if self._behind(sub):
                return
            if sub.next < store.first:  # held up past the window: those events are gone
                summary["skipped"] += store.first - sub.next
                sub.next = store.first
            if sub.next >= store.end:
                sub.live = True
                await stream.sleep_until(ping_at)
                continue
            await self._send_next(ws, sub, summary)

    async def _send_next(
        self, ws: web.WebSocketResponse, sub: _Subscriber, summary: dict[str, Any]
    ) -> None:
        """Judge the next event under the filter in force and send it if it passes."""
        index = sub.next
        assert index is not None
        sub.next = index + 1
        event = self.store.event(index)
        sub.judged_us = event.time_us
        wanted = sub.filter
        if not (wanted.wants(event) and wanted.fits(event)):
            if index % 256 == 0:
                await asyncio.sleep(0)  # a long filtered-out run must not starve the others
            return
        if sub.compress:
            await ws.send_frame(self.store.frame(index), WSMsgType.BINARY)
        else:
            await ws.send_frame(event.text, WSMsgType.TEXT)
        self._sent(sub, event.text)
        summary["last_time_us"] = event.time_us

    def _sent(self, sub: _Subscriber, text: bytes) -> None:
        record = sub.stream.record
        record.sent_count += 1
        if self._host.settings.record_bytes:
            self._host.record_sent(record.conn, [text])
        self._host.notify()

    async def _send_fault_frame(
        self, ws: web.WebSocketResponse, sub: _Subscriber, trigger: str | None,
        fault: dict[str, Any],
    ) -> None:
        """One frame that is not an event of the store: too big, or not JSON."""
        did = self.store.dids()[0]
        stamp = time.time_ns() // 1000
        if trigger == "oversize_after":
            size = fault.get("size", OVERSIZE_DEFAULT)
            text = _oversized(did, stamp, size)
        else:
            text = b'{"did":"%s","time_us":%d,"kind":"commit","commit":{"rev":"' % (
                did.encode(),
                stamp,
            )
        if sub.compress:
            frame = zstandard.ZstdCompressor(level=3, dict_data=zstd.dictionary()).compress(text)
            await ws.send_frame(frame, WSMsgType.BINARY)
        else:
            await ws.send_frame(text, WSMsgType.TEXT)
        summary = sub.stream.record.summary or {}
        summary["fault_frames"] = summary.get("fault_frames", 0) + 1
        self._sent(sub, text)

    def _drop(self, sub: _Subscriber) -> None:
        """What the real server does with a full outbox: close the socket, no close frame."""
        sub.stream.record.close_reason = "slow_consumer"
        sub.stream.request_stop("slow_consumer")
        if sub.request.transport is not None:
            sub.request.transport.abort()

    # ---- control routes

    async def _control_events(self, request: web.Request) -> web.Response:
        try:
            since = request.query.get("since_us")
            until = request.query.get("until_us")
            events = self.events(
                None if since is None else int(since), None if until is None else int(until)
            )
        except ValueError:
            return web.json_response({"error": "since_us and until_us are numbers"}, status=400)
        body = b"[" + b",".join(e.text for e in events) + b"]"
        return web.Response(body=body, content_type="application/json")

    async def _control_options(self, request: web.Request) -> web.Response:
        try:
            conn = int(request.match_info["conn"])
        except ValueError:
            return web.json_response({"error": "conn must be a number"}, status=400)
        return web.json_response(self.options_updates(conn))


_ERROR_NAMES = {
    400: "InvalidRequest",
    401: "AuthenticationRequired",
    429: "RateLimitExceeded",
    500: "InternalServerError",
    502: "UpstreamFailure",
    503: "ServiceUnavailable",
}


def _oversized(did: str, stamp: int, size: int) -> bytes:
    """A well-formed commit event whose JSON text is `size` bytes (or its minimum)."""
    head = (
        f'{{"did":"{did}","time_us":{stamp},"kind":"commit","commit":{{"rev":"{tid(stamp, 1)}",'
        f'"operation":"create","collection":"app.bsky.feed.post","rkey":"{tid(stamp, 2)}",'
        f'"record":{{"$type":"app.bsky.feed.post","createdAt":"{_iso(stamp)}","langs":["en"],'
        '"text":"'
    ).encode()
    tail = b'"},"cid":"bafyrei' + b"a" * 52 + b'"}}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def _close_reason(reason: str) -> str:
    """A close reason fits 123 bytes, cut on a character boundary."""
    data = reason.encode()
    if len(data) <= 123:
        return reason
    return data[:120].decode(errors="ignore") + "..."
