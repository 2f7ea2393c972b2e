"""The simulated Mastodon instance, seen from real aiohttp clients on loopback sockets: the
REST port and the streaming port.

What a client receives is checked against the instance's post log (`mastodon_posted`) and the
server's record of what it sent (`sent_messages`), so other tests can trust both.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from sfmd.credentials import Credential
from sfmd.fake import FakeAPI, FakeAPIError, check_fault
from sfmd.fake.timelines import StatusMaker, TimelineStore, dumps
from tests.helpers.waits import wait_until

WS = aiohttp.WSMsgType
TOKEN = "tok-research-0123456789"
OTHER_TOKEN = "tok-other-9876543210"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def credentials() -> dict[str, Credential]:
    return {
        "research": Credential(
            "research", mastodon_instance="http://127.0.0.1", mastodon_token=TOKEN
        ),
        "other": Credential("other", mastodon_instance="http://127.0.0.1",
                            mastodon_token=OTHER_TOKEN),
        "twitter": Credential("twitter", bearer_token="not-a-mastodon-token"),
    }


@pytest.fixture
async def fake() -> AsyncIterator[FakeAPI]:
    """An instance that posts only when told to (`mastodon_post`), records, and checks tokens."""
    api = FakeAPI(credentials(), record_bytes=True, mastodon_rate=0)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


class Socket:
    """A streaming client: frames as parsed JSON, pings answered unless told not to."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, answer_pings: bool = True) -> None:
        self.ws = ws
        self.answer_pings = answer_pings
        self.frames: list[dict[str, Any]] = []
        self.texts: list[str] = []
        self.pings = 0
        self.pongs = 0
        self.end: aiohttp.WSMessage | None = None

    async def send(self, **command: Any) -> None:
        await self.ws.send_str(json.dumps(command))

    async def take(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        want = len(self.frames) + count
        deadline = time.monotonic() + timeout
        while len(self.frames) < want:
            if not await self.step(deadline - time.monotonic()):
                raise AssertionError(f"socket ended after {len(self.frames)} of {want} frames")
        return self.frames[want - count:]

    async def step(self, timeout: float) -> bool:
        if timeout <= 0:
            raise AssertionError(f"timed out with {len(self.frames)} frames")
        message = await self.ws.receive(timeout=timeout)
        if message.type == WS.PING:
            self.pings += 1
            if self.answer_pings:
                await self.ws.pong(message.data)
            return True
        if message.type == WS.PONG:
            self.pongs += 1
            return True
        if message.type == WS.TEXT:
            self.texts.append(message.data)
            self.frames.append(json.loads(message.data))
            return True
        self.end = message
        return False

    async def to_end(self, timeout: float = 10.0) -> aiohttp.WSMessage:
        deadline = time.monotonic() + timeout
        while await self.step(deadline - time.monotonic()):
            pass
        assert self.end is not None
        return self.end

    async def quiet_for(self, seconds: float) -> None:
        """Read for `seconds` (a deadline, not a sleep: any frame in it fails)."""
        deadline = time.monotonic() + seconds
        before = len(self.frames)
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await self.ws.receive(timeout=left)
            except TimeoutError:
                break
            if message.type == WS.TEXT:
                self.frames.append(json.loads(message.data))
            elif message.type == WS.PING:
                self.pings += 1
                if self.answer_pings:
                    await self.ws.pong(message.data)
            elif message.type == WS.PONG:
                self.pongs += 1
            else:
                self.end = message
                break
        assert self.frames[before:] == [], "frames arrived while the socket had to be quiet"


def streaming(session: aiohttp.ClientSession, api: FakeAPI, token: str | None = TOKEN,
              **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return session.ws_connect(
        api.mastodon_streaming_url + "/api/v1/streaming", headers=headers, autoping=False, **kw
    )


async def subscribed(api: FakeAPI, conn: int, count: int) -> None:
    await wait_until(lambda: len(api.mastodon_subscriptions(conn)) >= count,
                     what=f"{count} subscription messages on connection {conn}")


def payload(frame: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(frame["payload"], str)
    result: dict[str, Any] = json.loads(frame["payload"])
    return result


async def get_json(session: aiohttp.ClientSession, api: FakeAPI, path: str,
                   params: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None) -> tuple[Any, Any]:
    async with session.get(api.mastodon_url + path, params=params,
                           headers=AUTH if headers is None else headers) as r:
        return r, await r.json()


# --------------------------------------------------------------------------- statuses


def test_statuses_are_realistic_and_follow_the_seed() -> None:
    store = TimelineStore(3)
    statuses = [
        store.add(local=i % 2 == 0, tags=["archives", "Python"][: i % 3], lists=[],
                  home=False, older_than_ms=None, streamed=True)
        for i in range(3000)
    ]
    rendered = [store.render(s) for s in statuses]
    sizes = [len(dumps(r).encode()) for r in rendered]
    assert 2000 < sum(sizes) / len(sizes) < 2900  # a real 4.x instance: ~2.4 KB
    for s in statuses[:20]:
        assert StatusMaker(3).render(s) == rendered[s.index]
    assert StatusMaker(4).render(statuses[0]) != rendered[0]
    ids = [int(r["id"]) for r in rendered]
    assert ids == sorted(set(ids)) and all(isinstance(r["id"], str) for r in rendered)
    now_ms = int(time.time() * 1000)
    assert now_ms - 60_000 < ids[0] >> 16 <= ids[-1] >> 16 <= now_ms  # (unix_ms << 16) | seq
    for status, r in zip(statuses[:300], rendered, strict=False):
        for key in ("created_at", "uri", "url", "content", "account", "media_attachments",
                    "mentions", "tags", "emojis", "visibility", "language", "edited_at"):
            assert key in r
        created = datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))
        assert r["created_at"].endswith("Z")
        assert round(created.timestamp() * 1000) == int(r["id"]) >> 16
        assert ("@" not in r["account"]["acct"]) == status.local
        assert [t["name"] for t in r["tags"]] == list(status.tags)
        for tag in status.tags:
            assert f"#<span>{tag}</span>" in r["content"]
    assert any(r["media_attachments"] for r in rendered)
    assert any(r["mentions"] for r in rendered)


def test_live_ids_rise_and_a_late_post_gets_an_older_id() -> None:
    store = TimelineStore(0)
    first = store.add(local=True, tags=[], lists=[], home=False, older_than_ms=None,
                      streamed=True)
    second = store.add(local=True, tags=[], lists=[], home=False, older_than_ms=None,
                       streamed=True)
    late = store.add(local=False, tags=[], lists=[], home=False, older_than_ms=60_000,
                     streamed=True)
    assert first.id < second.id and late.id < first.id
    assert abs((second.id >> 16) - (late.id >> 16) - 60_000) < 1000
    # newest first, the late one in its place by id
    assert [s.id for s in store.page(lambda s: True, limit=40)] == [second.id, first.id, late.id]


# --------------------------------------------------------------------------- discovery


async def test_discovery_names_the_streaming_server_on_another_port(fake: FakeAPI,
                                                                   session) -> None:
    assert fake.mastodon_url == fake.url and fake.mastodon_url.startswith("http://127.0.0.1:")
    assert fake.mastodon_streaming_url.startswith("ws://127.0.0.1:")
    assert fake.mastodon_streaming_url.rsplit(":", 1)[1] != fake.mastodon_url.rsplit(":", 1)[1]
    r, doc = await get_json(session, fake, "/api/v2/instance", headers={})
    assert r.status == 200 and r.headers["X-RateLimit-Limit"] == "300"
    assert doc["configuration"]["urls"]["streaming"] == fake.mastodon_streaming_url
    assert doc["version"].startswith("4.") and doc["domain"]
    http_streaming = "http" + fake.mastodon_streaming_url.removeprefix("ws")
    async with session.get(http_streaming + "/api/v1/streaming/health") as r:
        assert r.status == 200 and await r.text() == "OK"
    async with session.get(http_streaming + "/api/v2/instance") as r:
        assert r.status == 404  # the streaming port serves only streaming
    for path in ("/api/v1/streaming/health", "/api/v1/streaming"):
        async with session.get(fake.mastodon_url + path, headers=AUTH) as r:
            assert r.status == 404  # and the REST port none of it
    async with session.get(http_streaming + "/api/v1/streaming", headers=AUTH) as r:
        assert r.status == 400 and "WebSocket" in r.headers["X-Error-Message"]  # no upgrade


# --------------------------------------------------------------------------- tokens


async def test_a_bad_or_missing_token_is_a_plain_401_before_the_upgrade(fake: FakeAPI,
                                                                       session) -> None:
    for token, message in ((None, "Missing access token"), ("wrong", "Invalid access token"),
                           ("not-a-mastodon-token", "Invalid access token")):
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            async with streaming(session, fake, token):
                pass
        assert caught.value.status == 401
        assert caught.value.headers is not None
        assert caught.value.headers["X-Error-Message"] == message
    records = [r for r in fake.log if r.endpoint == "mastodon/streaming"]
    assert [r.status for r in records] == [401, 401, 401] and not any(r.auth_ok for r in records)
    # no token reaches a log, a record or a header we answer
    assert "wrong" not in json.dumps([r.to_dict() for r in fake.log])


async def test_every_way_to_give_a_token_works(fake: FakeAPI, session) -> None:
    url = fake.mastodon_streaming_url + "/api/v1/streaming"
    async with session.ws_connect(url, params={"access_token": OTHER_TOKEN}) as ws:
        assert not ws.closed
    async with session.ws_connect(url, protocols=(TOKEN,)) as ws:
        assert ws.protocol == TOKEN  # echoed, as the real server does
    await wait_until(lambda: len(fake.log) == 2 and all(r.closed for r in fake.log),
                     what="both connections closed")
    assert [(r.status, r.credential) for r in fake.log] == [(101, "other"), (101, "research")]
    assert "access_token" not in fake.log[0].params
    assert OTHER_TOKEN not in json.dumps([r.to_dict() for r in fake.log])


async def test_without_credentials_any_token_is_valid() -> None:
    async with FakeAPI(mastodon_rate=0) as api, aiohttp.ClientSession() as session:
        for token in ("a", "b", "a"):
            async with streaming(session, api, token):
                pass
            async with session.get(api.mastodon_url + "/api/v1/timelines/home",
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with streaming(session, api, None):
                pass
    assert [r["credential"] for r in api.mastodon_requests()] == ["token-1", "token-2", "token-1"]


# --------------------------------------------------------------------------- streaming


ALL_KINDS = [
    {"stream": "public"},
    {"stream": "public:local"},
    {"stream": "public:remote"},
    {"stream": "hashtag", "tag": "Archives"},
    {"stream": "hashtag:local", "tag": "python"},
    {"stream": "list", "list": "1"},
    {"stream": "user"},
]


async def test_one_socket_routes_every_kind_of_stream(fake: FakeAPI, session) -> None:
    async with streaming(session, fake) as ws:
        sock = Socket(ws)
        for command in ALL_KINDS:
            await sock.send(type="subscribe", **command)
        await subscribed(fake, 0, len(ALL_KINDS))
        assert all(s["result"] == "subscribed" for s in fake.mastodon_subscriptions(0))
        posts = [
            fake.mastodon_post(tags=["archives"], local=True),
            fake.mastodon_post(tags=["ARCHIVES", "python"], local=False),
            fake.mastodon_post(tags=["python"], local=True, lists=["1"]),
            fake.mastodon_post(local=False, lists=["2"], home=True),
            fake.mastodon_post(tags=["#Python"], local=True, home=True),
        ]
        posted = fake.mastodon_posted()
        expected = []
        for post, entry in zip(posts, posted, strict=True):
            assert entry["id"] == post["id"]
            arrays = [json.dumps(a) for a in entry["timelines"]]
            for command in ALL_KINDS:
                array = [command["stream"]] + [command[k] for k in ("tag", "list")
                                               if k in command]
                wanted = [array[0]] + [a.lower() for a in array[1:]]
                if json.dumps(wanted) in arrays:
                    expected.append((array, post["id"]))
        frames = await sock.take(len(expected))
        await sock.quiet_for(0.2)
    got = [(f["stream"], payload(f)["id"]) for f in frames]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))
    assert all(f["event"] == "update" and list(f) == ["stream", "event", "payload"]
               for f in frames)
    # each status's frames carry exactly the status that was posted
    by_id = {p["id"]: p for p in posts}
    assert all(payload(f) == by_id[payload(f)["id"]] for f in frames)
    assert fake.log[0].sent_count == len(frames)
    assert [m.decode() for m in fake.sent_messages(0)] == sock.texts


async def test_subscribe_twice_unsubscribe_and_errors(fake: FakeAPI, session) -> None:
    async with streaming(session, fake) as ws:
        sock = Socket(ws)
        await sock.send(type="subscribe", stream="hashtag", tag="Fediverse")
        await sock.send(type="subscribe", stream="hashtag", tag="fediverse")  # the same one
        await sock.send(type="subscribe", stream="direct")
        await sock.send(type="subscribe", stream="hashtag")
        await sock.send(type="subscribe", stream="list")
        await sock.send(type="subscribe", stream="list", list="999")
        await sock.send(type="unsubscribe", stream="hashtag")
        await sock.send(type="unsubscribe", stream="user")  # not subscribed: nothing happens
        await sock.send(type="ping")  # unknown types are ignored
        await ws.send_str("not json")
        errors = await sock.take(5)
        assert errors == [
            {"error": "Unknown stream type", "status": 400},
            {"error": "Missing tag name parameter", "status": 400},
            {"error": "Missing list name parameter", "status": 400},
            {"error": "Not authorized to stream this list", "status": 401},
            {"error": "Error unsubscribing from channel"},
        ]
        await subscribed(fake, 0, 8)
        first = fake.mastodon_post(tags=["fediverse"])
        [frame] = await sock.take(1)
        assert frame["stream"] == ["hashtag", "Fediverse"] and payload(frame)["id"] == first["id"]
        await sock.send(type="unsubscribe", stream="hashtag", tag="FEDIVERSE")
        await subscribed(fake, 0, 9)
        fake.mastodon_post(tags=["fediverse"])
        await sock.quiet_for(0.2)
    results = [(s["type"], s.get("result") or s["error"]) for s in fake.mastodon_subscriptions(0)]
    assert results == [
        ("subscribe", "subscribed"),
        ("subscribe", "already"),
        ("subscribe", "Unknown stream type"),
        ("subscribe", "Missing tag name parameter"),
        ("subscribe", "Missing list name parameter"),
        ("subscribe", "Not authorized to stream this list"),
        ("unsubscribe", "Error unsubscribing from channel"),
        ("unsubscribe", "not_subscribed"),
        ("unsubscribe", "unsubscribed"),
    ]
    assert fake.log[0].summary is not None and fake.log[0].summary["errors"] == 5
    assert fake.log[0].sent_count == 1  # errors are frames, not events


async def test_the_query_form_subscribes_at_connect(fake: FakeAPI, session) -> None:
    async with streaming(session, fake, params={"stream": "hashtag", "tag": "history"}) as ws:
        sock = Socket(ws)
        await subscribed(fake, 0, 1)
        fake.mastodon_post(tags=["python"])
        post = fake.mastodon_post(tags=["History"])
        [frame] = await sock.take(1)
    assert frame["stream"] == ["hashtag", "history"] and payload(frame)["id"] == post["id"]


async def test_edits_and_deletes_are_streamed_and_shown_by_rest(fake: FakeAPI, session) -> None:
    async with streaming(session, fake) as ws:
        sock = Socket(ws)
        await sock.send(type="subscribe", stream="public:local")
        await sock.send(type="subscribe", stream="hashtag", tag="archives")
        await subscribed(fake, 0, 2)
        post = fake.mastodon_post(tags=["archives"])
        other = fake.mastodon_post()
        edited = fake.mastodon_edit(post["id"])
        fake.mastodon_delete(other["id"])
        frames = await sock.take(6)
    events = [(f["event"], f["stream"][0]) for f in frames]
    assert events == [
        ("update", "public:local"), ("update", "hashtag"), ("update", "public:local"),
        ("status.update", "public:local"), ("status.update", "hashtag"),
        ("delete", "public:local"),
    ]
    assert frames[5]["payload"] == other["id"]  # the id itself, a string
    assert payload(frames[3]) == edited and edited["edited_at"] is not None
    assert edited["id"] == post["id"] and edited["content"] != post["content"]
    _, timeline = await get_json(session, fake, "/api/v1/timelines/public", {"local": "true"})
    assert [s["id"] for s in timeline] == [post["id"]] and timeline[0] == edited
    log = {e["id"]: e for e in fake.mastodon_posted()}
    assert log[post["id"]]["edits"] == 1 and log[other["id"]]["deleted_at"] is not None
    with pytest.raises(FakeAPIError, match="no status"):
        fake.mastodon_delete(other["id"])


async def test_a_post_that_is_not_streamed_is_only_in_rest(fake: FakeAPI, session) -> None:
    async with streaming(session, fake) as ws:
        sock = Socket(ws)
        await sock.send(type="subscribe", stream="public")
        await subscribed(fake, 0, 1)
        hidden = fake.mastodon_post(stream=False)
        shown = fake.mastodon_post()
        [frame] = await sock.take(1)
    assert payload(frame)["id"] == shown["id"]
    _, timeline = await get_json(session, fake, "/api/v1/timelines/public")
    assert [s["id"] for s in timeline] == [shown["id"], hidden["id"]]
    assert [e["streamed"] for e in fake.mastodon_posted()] == [False, True]


async def test_pings_and_a_socket_that_does_not_answer_is_dropped(session) -> None:
    async with FakeAPI(credentials(), mastodon_rate=0, mastodon_ping_interval=0.2) as api:
        async with streaming(session, api) as ws:
            sock = Socket(ws)
            await sock.quiet_for(1.0)  # pongs answered: it stays
            assert sock.pings >= 3 and not ws.closed
        await wait_until(lambda: api.log[0].closed is not None, what="first socket closed")
        assert api.log[0].close_reason == "client_closed"
        async with streaming(session, api) as ws:
            sock = Socket(ws, answer_pings=False)
            started = time.monotonic()
            end = await sock.to_end(timeout=10)
            took = time.monotonic() - started
        assert end.type in (WS.CLOSED, WS.ERROR, WS.CLOSE)
        assert sock.pings == 1 and took > 0.3  # dropped at the second tick, not the first
        await wait_until(lambda: api.log[1].closed is not None, what="second socket closed")
        assert api.log[1].close_reason == "ping_timeout"
        summary = api.log[0].summary or {}
        assert summary["pings"] >= 3 and summary["pongs"] >= 3


async def test_the_producer_posts_on_its_own(session) -> None:
    async with FakeAPI(mastodon_rate=100, mastodon_seed=5, mastodon_tags=["a", "b"],
                       mastodon_lists=["7"]) as api:
        await wait_until(lambda: len(api.mastodon_posted()) >= 200, what="200 posts")
        api.configure(mastodon_rate=0)
        posted = api.mastodon_posted()
    ids = [int(p["id"]) for p in posted]
    assert ids == sorted(set(ids))
    assert {t for p in posted for t in p["tags"]} == {"a", "b"}
    assert {p["local"] for p in posted} == {True, False}
    assert any(p["home"] for p in posted) and any(p["lists"] == ["7"] for p in posted)
    assert any(not p["tags"] for p in posted)


# --------------------------------------------------------------------------- REST


async def test_rest_needs_a_valid_token(fake: FakeAPI, session) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r, body = await get_json(session, fake, "/api/v1/timelines/home", headers=headers)
        assert r.status == 401 and body == {"error": "The access token is invalid"}
        assert "X-RateLimit-Remaining" in r.headers
    r, _ = await get_json(session, fake, "/api/v1/timelines/home", {"access_token": TOKEN},
                          headers={})
    assert r.status == 200
    assert [(q["credential"], q["status"]) for q in fake.mastodon_requests()] == [
        (None, 401), (None, 401), ("research", 200)
    ]
    assert "access_token" not in fake.mastodon_requests()[2]["query"]


async def test_each_timeline_holds_what_it_should(fake: FakeAPI, session) -> None:
    posts = [
        fake.mastodon_post(tags=["archives"], local=True, lists=["1"]),
        fake.mastodon_post(tags=["Archives"], local=False, home=True),
        fake.mastodon_post(tags=["python"], local=True, lists=["2"], home=True),
    ]
    a, b, c = (p["id"] for p in posts)
    cases = [
        ("/api/v1/timelines/public", {}, [c, b, a]),
        ("/api/v1/timelines/public", {"local": "true"}, [c, a]),
        ("/api/v1/timelines/public", {"remote": "1"}, [b]),
        ("/api/v1/timelines/public", {"local": "false", "only_media": "true"}, [c, b, a]),
        ("/api/v1/timelines/tag/ARCHIVES", {}, [b, a]),
        ("/api/v1/timelines/tag/archives", {"local": "true"}, [a]),
        ("/api/v1/timelines/tag/nothing", {}, []),
        ("/api/v1/timelines/list/1", {}, [a]),
        ("/api/v1/timelines/list/2", {}, [c]),
        ("/api/v1/timelines/home", {}, [c, b]),
    ]
    for path, params, ids in cases:
        r, body = await get_json(session, fake, path, params)
        assert r.status == 200, path
        assert [s["id"] for s in body] == ids, (path, params)
        assert ("Link" in r.headers) == bool(ids)
    r, body = await get_json(session, fake, "/api/v1/timelines/list/3")
    assert r.status == 404 and body == {"error": "Record not found"}
    r, body = await get_json(session, fake, "/api/v1/timelines/public", {"max_id": "x1"})
    assert r.status == 400 and "max_id" in body["error"]
    async with session.get(fake.mastodon_url + "/api/v1/timelines/public", headers=AUTH) as r:
        raw = await r.text()
    assert "\\u003cp\\u003e" in raw and "<p>" not in raw  # JSON as Rails writes it


def link(headers: Any, rel: str) -> dict[str, str]:
    """The query of the Link header's `rel` URL."""
    from urllib.parse import parse_qsl, urlsplit

    for part in headers["Link"].split(", "):
        url, _, kind = part.partition("; ")
        if kind == f'rel="{rel}"':
            return dict(parse_qsl(urlsplit(url.strip("<>")).query))
    raise AssertionError(f"no {rel} link in {headers['Link']}")


async def test_paging_follows_mastodon(fake: FakeAPI, session) -> None:
    posts = [fake.mastodon_post(tags=["archives"] if i % 2 else []) for i in range(100)]
    tagged = [p["id"] for p in posts if p["tags"]]  # 50, oldest first
    newest_first = list(reversed(tagged))
    path = "/api/v1/timelines/tag/archives"

    r, page = await get_json(session, fake, path)
    assert [s["id"] for s in page] == newest_first[:20]  # default limit 20
    r, page = await get_json(session, fake, path, {"limit": "100"})
    assert [s["id"] for s in page] == newest_first[:40]  # at most 40
    # backwards with max_id, following rel="next"
    seen: list[str] = []
    params = {"limit": "15"}
    while True:
        r, page = await get_json(session, fake, path, params)
        if not page:
            assert "Link" not in r.headers
            break
        seen += [s["id"] for s in page]
        params = link(r.headers, "next")
        assert params["limit"] == "15" and params["max_id"] == page[-1]["id"]
    assert seen == newest_first
    # forwards with min_id, following rel="prev": each page is the 15 just after, newest first
    seen, params = [], {"limit": "15", "min_id": tagged[4]}
    while True:
        r, page = await get_json(session, fake, path, params)
        if not page:
            break
        ids = [s["id"] for s in page]
        assert ids == sorted(ids, key=int, reverse=True)
        seen = ids + seen
        params = link(r.headers, "prev")
        assert params["min_id"] == ids[0]
    assert seen == newest_first[: len(tagged) - 5]
    # since_id: the newest ones above it; min_id: the oldest ones above it
    _, page = await get_json(session, fake, path, {"since_id": tagged[10], "limit": "5"})
    assert [s["id"] for s in page] == newest_first[:5]
    _, page = await get_json(session, fake, path, {"min_id": tagged[10], "limit": "5"})
    assert [s["id"] for s in page] == list(reversed(tagged[11:16]))
    _, page = await get_json(session, fake, path,
                             {"min_id": tagged[10], "max_id": tagged[13], "limit": "40"})
    assert [s["id"] for s in page] == [tagged[12], tagged[11]]
    _, page = await get_json(session, fake, path, {"limit": "0"})
    assert page == []


async def test_a_late_post_lands_below_ids_already_served(fake: FakeAPI, session) -> None:
    early = [fake.mastodon_post(tags=["archives"]) for _ in range(3)]
    served_up_to = early[-1]["id"]
    late = fake.mastodon_post(tags=["archives"], local=False, older_than_ms=10_000)
    assert int(late["id"]) < int(early[0]["id"])
    _, after = await get_json(session, fake, "/api/v1/timelines/tag/archives",
                              {"min_id": served_up_to})
    assert after == []  # paging on from the newest id served misses it
    overlap = str(int(served_up_to) - (20_000 << 16))  # 20 s of id time below the resume point
    _, page = await get_json(session, fake, "/api/v1/timelines/tag/archives",
                             {"min_id": overlap})
    assert [s["id"] for s in page] == [e["id"] for e in reversed(early)] + [late["id"]]
    assert fake.mastodon_posted()[-1]["id"] == late["id"]


async def test_rate_limit_headers_and_429_until_the_reset(session) -> None:
    async with FakeAPI(credentials(), mastodon_rate=0, mastodon_rate_limit=3,
                       mastodon_rate_window=2.0) as api:
        # start just after a window boundary so the counts below fall in one window
        await wait_until(lambda: time.time() % 2.0 < 1.0, timeout=3, what="a fresh window")
        answers = []
        for _ in range(5):
            async with session.get(api.mastodon_url + "/api/v1/timelines/home",
                                   headers=AUTH) as r:
                answers.append((r.status, r.headers["X-RateLimit-Remaining"],
                                r.headers["X-RateLimit-Reset"], await r.json()))
        other = await get_json(session, api, "/api/v1/timelines/home",
                               headers={"Authorization": f"Bearer {OTHER_TOKEN}"})
        assert [a[:2] for a in answers] == [
            (200, "2"), (200, "1"), (200, "0"), (429, "0"), (429, "0")
        ]
        assert answers[3][3] == {"error": "Too many requests"}
        assert other[0].status == 200  # per token
        reset = datetime.fromisoformat(answers[0][2].replace("Z", "+00:00")).timestamp()
        assert answers[0][2].endswith("Z") and reset % 2.0 == 0 and reset > time.time()
        await wait_until(lambda: time.time() >= reset, timeout=3, what="the reset")
        r, _ = await get_json(session, api, "/api/v1/timelines/home")
        assert r.status == 200 and r.headers["X-RateLimit-Remaining"] == "2"


# --------------------------------------------------------------------------- faults


async def test_streaming_refusals(fake: FakeAPI, session) -> None:
    fake.script({"endpoint": "mastodon/streaming", "status": 503, "retry_after": 7},
                {"endpoint": "mastodon/streaming", "status": 401, "body": "Token revoked"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with streaming(session, fake):
            pass
    assert caught.value.status == 503 and caught.value.headers is not None
    assert caught.value.headers["Retry-After"] == "7"
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with streaming(session, fake):
            pass
    assert caught.value.status == 401 and caught.value.headers is not None
    assert caught.value.headers["X-Error-Message"] == "Token revoked"
    async with streaming(session, fake):
        pass  # the script is used up


async def test_close_after_drops_the_socket_or_closes_it(fake: FakeAPI, session) -> None:
    fake.script({"endpoint": "mastodon/streaming", "close_after": 2},
                {"endpoint": "mastodon/streaming", "close_after": 1, "code": 1001})
    for conn, count, close in ((0, 2, None), (1, 1, 1001)):
        async with streaming(session, fake) as ws:
            sock = Socket(ws)
            await sock.send(type="subscribe", stream="public")
            await subscribed(fake, conn, 1)
            for _ in range(3):
                fake.mastodon_post()
            end = await sock.to_end()
        assert len(sock.frames) == count
        if close is None:
            assert end.type in (WS.CLOSED, WS.ERROR)  # no close frame
        else:
            assert end.type == WS.CLOSE and end.data == close
        await wait_until(lambda c=conn: fake.log[c].closed is not None, what="closed")
        assert fake.log[conn].close_reason == "closed"


async def test_stall_sends_nothing_and_answers_no_pings(session) -> None:
    async with FakeAPI(credentials(), mastodon_rate=0, mastodon_ping_interval=0.15,
                       record_bytes=True) as api:
        api.script({"endpoint": "mastodon/streaming", "stall_after": 1, "duration": 1.5})
        async with streaming(session, api) as ws:
            sock = Socket(ws)
            await sock.send(type="subscribe", stream="public")
            await subscribed(api, 0, 1)
            api.mastodon_post()
            await sock.take(1)
            await wait_until(lambda: (api.log[0].summary or {}).get("stalled"), what="stall")
            pings_before = sock.pings
            await ws.ping(b"hello")
            posts = [api.mastodon_post() for _ in range(2)]
            await sock.quiet_for(0.6)
            assert sock.pongs == 0 and sock.pings == pings_before
            frames = await sock.take(2, timeout=5)  # then it goes on
            deadline = time.monotonic() + 5
            while sock.pings == pings_before:  # and pings again
                assert await sock.step(deadline - time.monotonic())
        assert [payload(f)["id"] for f in frames] == [p["id"] for p in posts]
        assert sock.pongs == 1  # the ping was answered only after the stall


async def test_rest_faults_for_the_next_requests(fake: FakeAPI, session) -> None:
    fake.script(
        {"endpoint": "mastodon/timelines", "status": 503, "times": 2},
        {"endpoint": "mastodon/timelines", "status": 429, "reset_in": 1.0},
    )
    statuses = []
    for _ in range(2):
        r, body = await get_json(session, fake, "/api/v1/timelines/public")
        statuses.append(r.status)
    r, _ = await get_json(session, fake, "/api/v2/instance")  # not a timeline: no fault
    assert r.status == 200
    r, body = await get_json(session, fake, "/api/v1/timelines/public")
    assert statuses == [503, 503] and r.status == 429 and body == {"error": "Too many requests"}
    reset = datetime.fromisoformat(r.headers["X-RateLimit-Reset"].replace("Z", "+00:00"))
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert 0.2 < reset.timestamp() - time.time() <= 1.0
    r, _ = await get_json(session, fake, "/api/v1/timelines/home")  # still held empty
    assert r.status == 429 and r.headers["X-RateLimit-Reset"] == reset.isoformat(
        timespec="microseconds").replace("+00:00", "Z")
    await wait_until(lambda: time.time() >= reset.timestamp(), timeout=3, what="the reset")
    r, _ = await get_json(session, fake, "/api/v1/timelines/home")
    assert r.status == 200
    fake.script({"endpoint": "mastodon/rest", "status": 500, "body": "boom"})
    r, body = await get_json(session, fake, "/api/v2/instance")  # "mastodon/rest": either
    assert r.status == 500 and body == {"error": "boom"}
    log = fake.mastodon_requests()
    assert [q["status"] for q in log] == [503, 503, 200, 429, 429, 200, 500]
    assert all(b["wall"] >= a["wall"] and b["monotonic"] >= a["monotonic"]
               for a, b in itertools.pairwise(log))


def test_mastodon_faults_are_checked() -> None:
    assert check_fault({"endpoint": "mastodon/streaming", "stall_after": 1, "duration": 2})
    assert check_fault({"endpoint": "mastodon/rest", "status": 429, "reset_in": 3, "times": 2})
    for bad, words in [
        ({"endpoint": "mastodon/streaming", "cut_after": 1}, "not a mastodon/streaming fault"),
        ({"endpoint": "mastodon/streaming", "not_json_after": 1}, "not a mastodon/streaming"),
        ({"endpoint": "mastodon/timelines", "close_after": 1}, "not a mastodon/timelines"),
        ({"endpoint": "mastodon/streaming"}, "needs status"),
        ({"endpoint": "mastodon/streaming", "duration": 1, "close_after": 1}, "stall_after"),
        ({"endpoint": "mastodon/streaming", "status": 503, "times": 2}, "not a mastodon/str"),
        ({"endpoint": "mastodon/timelines", "status": 503, "reset_in": 2}, "status 429"),
        ({"endpoint": "mastodon/timelines", "status": 503, "times": 0}, "at least 1"),
        ({"endpoint": "mastodon/streaming", "close_after": 1, "code": 999}, "close code"),
        ({"status": 503, "retry_after": 1}, "Mastodon fault"),
        ({"endpoint": "mastodon/other", "status": 503}, "endpoint must be one of"),
    ]:
        with pytest.raises(FakeAPIError, match=words):
            check_fault(bad)


# --------------------------------------------------------------------------- control, cli


async def test_settings_control_routes_and_reset(fake: FakeAPI, session) -> None:
    with pytest.raises(FakeAPIError, match="no list"):
        fake.mastodon_post(lists=["9"])
    with pytest.raises(FakeAPIError, match="mastodon_tags"):
        fake.configure(mastodon_tags=["#bad"])
    with pytest.raises(FakeAPIError, match="mastodon_ping_interval"):
        fake.configure(mastodon_ping_interval=0)
    fake.configure(mastodon_lists=["1", "9"])
    assert fake.mastodon_post(lists=["9"])["id"]
    async with session.post(fake.url + "/_fake/mastodon/post",
                            json={"tags": ["archives"], "home": True}) as r:
        posted = await r.json()
        assert r.status == 200 and posted["tags"][0]["name"] == "archives"
    async with session.post(fake.url + "/_fake/mastodon/post", json={"tag": "x"}) as r:
        assert r.status == 400 and "tag" in (await r.json())["error"]
    async with session.post(fake.url + f"/_fake/mastodon/edit/{posted['id']}") as r:
        assert (await r.json())["edited_at"] is not None
    async with session.post(fake.url + f"/_fake/mastodon/delete/{posted['id']}") as r:
        assert r.status == 200
    async with session.post(fake.url + f"/_fake/mastodon/delete/{posted['id']}") as r:
        assert r.status == 404
    async with session.get(fake.url + "/_fake/mastodon/posted") as r:
        assert [p["id"] for p in await r.json()] == [
            p["id"] for p in fake.mastodon_posted()
        ]
    await get_json(session, fake, "/api/v1/timelines/home")
    async with session.get(fake.url + "/_fake/mastodon/requests") as r:
        assert len(await r.json()) == 1
    async with session.post(fake.url + "/_fake/configure", json={"mastodon_rate_limit": -1}) as r:
        assert r.status == 400
    async with session.post(fake.url + "/_fake/script",
                            json=[{"endpoint": "mastodon/streaming", "close_after": 1}]) as r:
        assert r.status == 200
    async with streaming(session, fake) as ws:
        await Socket(ws).send(type="subscribe", stream="user")
        await subscribed(fake, len(fake.log) - 1, 1)
        async with session.get(
            fake.url + f"/_fake/mastodon/subscriptions/{len(fake.log) - 1}"
        ) as r:
            assert (await r.json())[0]["stream"] == "user"
        await fake.reset()
    assert fake.mastodon_posted() == [] and fake.mastodon_requests() == []
    assert fake.pending_faults == [] and fake.settings.mastodon_lists == ("1", "2")


def test_command_line_lists_the_mastodon_settings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sfmd", "fakeapi", "--help"],
        capture_output=True, text=True, check=True,
    )
    for option in ("--mastodon-rate", "--mastodon-seed", "--mastodon-ping-interval",
                   "--mastodon-rate-limit", "--mastodon-rate-window", "--mastodon-tags",
                   "--mastodon-lists", "--mastodon-streaming-port"):
        assert option in done.stdout
    assert "archives,fediverse,python" in done.stdout


async def test_the_command_prints_both_mastodon_urls(session) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfmd", "fakeapi", "--mastodon-rate", "0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        async with asyncio.timeout(20):
            base = (await process.stdout.readline()).decode().strip()
            lines = {}
            wanted = ("[CREDENTIAL] mastodon_instance", "mastodon streaming server")
            while not all(key in lines for key in wanted):
                line = (await process.stderr.readline()).decode()
                assert line, "the command ended before printing its URLs"
                key, _, value = line.partition(" = ")
                lines[key.removeprefix("sfmd fakeapi: ")] = value.strip()
        assert lines["[CREDENTIAL] mastodon_instance"] == base
        async with session.get(base + "/api/v2/instance") as r:
            doc = await r.json()
        assert doc["configuration"]["urls"]["streaming"] == lines["mastodon streaming server"]
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            assert await process.wait() == 0


async def test_the_server_can_start_again_after_a_stop(session) -> None:
    api = FakeAPI(mastodon_rate=0)
    for _ in range(2):
        await api.start()
        try:
            http_streaming = "http" + api.mastodon_streaming_url.removeprefix("ws")
            async with session.get(http_streaming + "/api/v1/streaming/health") as r:
                assert await r.text() == "OK"
        finally:
            await api.stop()
