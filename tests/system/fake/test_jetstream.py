"""The simulated Jetstream instance, seen from a real WebSocket client on a loopback socket.

What a client receives is checked against the instance's store (`jetstream_events`) and the
server's record of what it sent (`sent_messages`), so other tests can trust both.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sfmd.fake import FakeAPI, FakeAPIError, check_fault
from sfmd.fake.jetstream import EventMaker, JetstreamEvent
from sfmd.sources.bluesky import zstd
from tests.helpers.waits import wait_until

WS = aiohttp.WSMsgType


@pytest.fixture
async def fake() -> AsyncIterator[FakeAPI]:
    """An instance that produces only when told to (`jetstream_produce`), and records."""
    api = FakeAPI(record_bytes=True, jetstream_rate=0)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


class Frames:
    """Event frames as a client gets them, inflated when compressed; pings counted apart."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, compressed: bool = False) -> None:
        self.ws = ws
        self.compressed = compressed
        self.texts: list[bytes] = []
        self.pings: list[float] = []
        self.arrivals: list[float] = []
        self.end: aiohttp.WSMessage | None = None
        self._inflater = zstd.decompressor()

    async def take(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """Read until `count` more event frames have come; fail at the deadline."""
        want = len(self.texts) + count
        deadline = time.monotonic() + timeout
        while len(self.texts) < want:
            if not await self.step(deadline - time.monotonic()):
                raise AssertionError(f"stream ended after {len(self.texts)} of {want} frames")
        return self.texts[want - count :]

    async def step(self, timeout: float) -> bool:
        """One frame; False once the connection has ended."""
        if timeout <= 0:
            raise AssertionError(f"timed out with {len(self.texts)} frames")
        message = await self.ws.receive(timeout=timeout)
        if message.type == WS.PING:
            self.pings.append(time.monotonic())
            await self.ws.pong(message.data)
            return True
        if message.type == WS.BINARY:
            assert self.compressed, "a binary frame on an uncompressed connection"
            self.texts.append(zstd.inflate(message.data, self._inflater))
        elif message.type == WS.TEXT:
            assert not self.compressed, "a text frame on a compressed connection"
            self.texts.append(message.data.encode())
        else:
            self.end = message
            return False
        self.arrivals.append(time.monotonic())
        return True

    async def to_end(self, timeout: float = 10.0) -> aiohttp.WSMessage:
        deadline = time.monotonic() + timeout
        while await self.step(deadline - time.monotonic()):
            pass
        assert self.end is not None
        return self.end


def texts(events: list[JetstreamEvent]) -> list[bytes]:
    return [e.text for e in events]


def connect(session: aiohttp.ClientSession, api: FakeAPI, params: Any = (), **kw: Any) -> Any:
    return session.ws_connect(api.jetstream_url, params=params or None, autoping=False, **kw)


# --------------------------------------------------------------------------- events


def test_events_are_realistic_and_follow_the_seed() -> None:
    maker = EventMaker(7)
    events = [maker.render(i, 1_725_000_000_000_000 + i) for i in range(20_000)]
    assert [e.text for e in events[:50]] == [
        EventMaker(7).render(i, 1_725_000_000_000_000 + i).text for i in range(50)
    ]
    assert events[0].text != EventMaker(8).render(0, 1_725_000_000_000_000).text
    sizes = [len(e.text) for e in events]
    assert 450 < sum(sizes) / len(sizes) < 700
    assert any(s > 10_000 for s in sizes)
    kinds = {(e.kind, e.collection, e.operation) for e in events}
    assert ("identity", "", "") in kinds and ("account", "", "") in kinds
    for collection in ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow"):
        assert ("commit", collection, "create") in kinds
        assert ("commit", collection, "delete") in kinds
    assert ("commit", "app.bsky.actor.profile", "update") in kinds
    assert len({e.did for e in events}) == 200
    for event in events[:500]:
        obj = json.loads(event.text)
        assert list(obj)[:3] == ["did", "time_us", "kind"] and obj["did"].startswith("did:plc:")
        if obj["kind"] == "commit":
            commit = obj["commit"]
            assert commit["collection"] == event.collection and len(commit["rev"]) == 13
            if commit["operation"] == "delete":
                assert "record" not in commit and "cid" not in commit
            else:
                assert commit["record"]["$type"] == event.collection
                assert commit["cid"].startswith("bafyrei")
        else:
            assert obj[obj["kind"]]["did"] == obj["did"]


async def test_the_instance_produces_on_its_own_clock() -> None:
    async with FakeAPI(jetstream_rate=400, jetstream_burst=40) as api:
        await wait_until(lambda: len(api.jetstream_events()) >= 200, what="200 events")
        times = [e.time_us for e in api.jetstream_events()]
        assert times == sorted(set(times))  # rising and unique
        now_us = time.time_ns() // 1000
        assert now_us - 5_000_000 < times[0] <= times[-1] <= now_us
        # in bursts of 40: a few µs apart inside a burst, 0.1 s between bursts
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert sum(g > 50_000 for g in gaps) <= len(times) // 40 + 1
        api.configure(jetstream_rate=0)
        held = len(api.jetstream_events())
        api.jetstream_produce(3)
        assert len(api.jetstream_events()) == held + 3


# --------------------------------------------------------------------------- subscribing


async def test_filters_on_collections_prefixes_and_dids(fake: FakeAPI, session) -> None:
    events = fake.jetstream_produce(4000)
    dids = sorted({e.did for e in events if e.kind != "commit"})[:6]
    dids += sorted({e.did for e in events})[:4]
    params = [
        ("cursor", str(events[0].time_us)),
        ("wantedCollections", "app.bsky.feed.post"),
        ("wantedCollections", "app.bsky.graph.*"),
        *(("wantedDids", d) for d in dids),
    ]
    expected = [
        e.text
        for e in events
        if e.did in dids
        and (e.kind != "commit" or e.collection == "app.bsky.feed.post"
             or e.collection.startswith("app.bsky.graph."))
    ]
    assert any(b'"kind":"identity"' in t or b'"kind":"account"' in t for t in expected)
    async with connect(session, fake, params) as ws:
        frames = Frames(ws)
        assert await frames.take(len(expected)) == expected
    record = fake.log[0]
    assert record.endpoint == "jetstream" and record.status == 101
    assert record.params["wantedCollections"] == "app.bsky.feed.post,app.bsky.graph.*"
    assert fake.sent_messages(0) == frames.texts


async def test_identity_and_account_events_pass_any_collection_filter(
    fake: FakeAPI, session
) -> None:
    events = fake.jetstream_produce(3000)
    params = {"cursor": events[0].time_us, "wantedCollections": "app.bsky.feed.like"}
    expected = [e.text for e in events if e.kind != "commit" or e.collection == params[
        "wantedCollections"]]
    async with connect(session, fake, params) as ws:
        got = await Frames(ws).take(len(expected))
    assert got == expected
    assert {json.loads(t)["kind"] for t in got} == {"commit", "identity", "account"}


async def test_replay_then_live_loses_and_doubles_nothing(session) -> None:
    async with FakeAPI(record_bytes=True, jetstream_rate=300) as api:
        await wait_until(lambda: len(api.jetstream_events()) >= 150, what="150 events held")
        cursor = api.jetstream_events()[40].time_us
        async with connect(session, api, {"cursor": cursor}) as ws:
            frames = Frames(ws)
            await frames.take(1)
            live_from = time.time_ns() // 1000
            # read on until well past the moment the replay caught up with the tip
            while json.loads(frames.texts[-1])["time_us"] < live_from + 300_000:
                await frames.take(1)
        last = json.loads(frames.texts[-1])["time_us"]
        assert frames.texts == texts(api.jetstream_events(since_us=cursor, until_us=last))
        assert json.loads(frames.texts[0])["time_us"] == cursor  # the cursor is inclusive
        await api.wait_for(lambda a: a.log[0].closed is not None, 5)
        # What the client read is what the record says was sent, in order; the server may
        # have sent a few more before it saw the close.
        assert frames.texts == api.sent_messages(0)[: len(frames.texts)]


async def test_no_cursor_and_a_future_cursor_mean_the_live_tail(fake: FakeAPI, session) -> None:
    fake.jetstream_produce(20)
    future = time.time_ns() // 1000 + 3_600_000_000
    for params in ({}, {"cursor": future}, {"cursor": ""}):
        async with connect(session, fake, params) as ws:
            conn = len(fake.log) - 1
            await fake.wait_for(lambda a, c=conn: a.log[c].status == 101, 5)
            new = fake.jetstream_produce(3)
            assert await Frames(ws).take(3) == texts(new)


async def test_an_old_cursor_is_clamped_to_the_oldest_held(session) -> None:
    async with FakeAPI(record_bytes=True, jetstream_rate=400, jetstream_window=0.25) as api:
        started = time.time_ns() // 1000
        def trimmed() -> bool:
            held = api.jetstream_events()
            return bool(held) and held[0].time_us > started + 100_000

        await wait_until(trimmed, what="the oldest events dropped")
        async with connect(session, api, {"cursor": 1}) as ws:
            first = (await Frames(ws).take(1))[0]
        summary = api.log[0].summary
        assert summary is not None and summary["clamped"] is True
        assert json.loads(first)["time_us"] == summary["start_us"] > started + 100_000
        assert time.time_ns() // 1000 - summary["start_us"] < 2_000_000


async def test_compressed_frames_inflate_to_the_logged_text(fake: FakeAPI, session) -> None:
    events = fake.jetstream_produce(300)
    for kw in ({"params": {"cursor": events[0].time_us, "compress": "true"}},
               {"params": {"cursor": events[0].time_us},
                "headers": {"Socket-Encoding": "zstd"}}):
        conn = len(fake.log)
        async with session.ws_connect(fake.jetstream_url, autoping=False, **kw) as ws:
            frames = Frames(ws, compressed=True)
            assert await frames.take(300) == texts(events)
        assert fake.sent_messages(conn) == texts(events)
        assert fake.log[conn].summary["compress"] is True  # type: ignore[index]


async def test_max_message_size_skips_larger_events(fake: FakeAPI, session) -> None:
    events = fake.jetstream_produce(500)
    params = {"cursor": events[0].time_us, "maxMessageSizeBytes": 450}
    expected = [e.text for e in events if len(e.text) <= 450]
    assert 0 < len(expected) < len(events)
    async with connect(session, fake, params) as ws:
        assert await Frames(ws).take(len(expected)) == expected


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"cursor": "yesterday"}, "invalid cursor"),
        ({"cursor": "-5"}, "invalid cursor"),
        ({"wantedCollections": "not a collection"}, "invalid collection"),
        ({"wantedDids": "alice"}, "invalid DID"),
        ([("wantedCollections", f"app.bsky.c{i}.x") for i in range(101)], "too many"),
    ],
)
async def test_bad_parameters_are_refused_before_the_upgrade(
    fake: FakeAPI, session, params: Any, words: str
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with connect(session, fake, params):
            pass
    assert caught.value.status == 400
    async with session.get(fake.url + "/subscribe", params=params) as response:
        assert response.status == 400 and words in await response.text()


# --------------------------------------------------------------------------- options_update


async def test_options_update_changes_filters_on_the_open_connection(
    fake: FakeAPI, session
) -> None:
    async with connect(session, fake) as ws:
        await fake.wait_for(lambda a: a.log and a.log[0].status == 101, 5)
        frames = Frames(ws)
        before = fake.jetstream_produce(30)
        assert await frames.take(30) == texts(before)
        update = {"wantedCollections": ["app.bsky.feed.like"], "wantedDids": [],
                  "maxMessageSizeBytes": 0}
        await ws.send_json({"type": "options_update", "payload": update})
        await fake.wait_for(lambda a: len(a.jetstream_options(0)) == 1, 5)
        after = fake.jetstream_produce(400)
        expected = [e.text for e in after if e.kind != "commit"
                    or e.collection == "app.bsky.feed.like"]
        assert await frames.take(len(expected)) == expected
    logged = fake.jetstream_options(0)[0]
    assert logged["wantedCollections"] == ["app.bsky.feed.like"]
    assert before[-1].time_us < logged["from_us"] <= after[0].time_us
    assert len(fake.log) == 1  # no reconnection


async def test_options_update_takes_hold_from_the_next_event(fake: FakeAPI, session) -> None:
    """Sent mid-replay: every event before `from_us` was judged by the old filter, every one
    from it by the new, and nothing was skipped or doubled."""
    events = fake.jetstream_produce(3000)
    did = events[0].did
    async with connect(session, fake, {"cursor": events[0].time_us}) as ws:
        frames = Frames(ws)
        await frames.take(10)
        await ws.send_json({"type": "options_update", "payload": {"wantedDids": [did]}})
        await fake.wait_for(lambda a: len(a.jetstream_options(0)) == 1, 5)
        from_us = fake.jetstream_options(0)[0]["from_us"]
        expected = [e.text for e in events
                    if e.time_us < from_us or e.did == did]
        await frames.take(len(expected) - 10)
    assert frames.texts == expected


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ('{"type": "options_update", "payload": {"wantedDids": ["nobody"]}}', 1008),
        ('{"type": "options_update", "payload": {"wantedCollections": ["a b"]}}', 1008),
        ('{"type": "options_update", "payload": {"wantedCollections": "app.bsky.feed.post"}}',
         1007),
        ('{"type": "options_update", "payload": {"maxMessageSizeBytes": 1.5}}', 1007),
        ("this is not JSON", 1007),
    ],
)
async def test_an_invalid_options_update_closes_the_connection(
    fake: FakeAPI, session, message: str, code: int
) -> None:
    async with connect(session, fake) as ws:
        await ws.send_str('{"type": "something_else", "payload": {}}')  # ignored
        await ws.send_bytes(b"\x00\x01")  # ignored
        await ws.send_str(message)
        end = await Frames(ws).to_end()
    assert end.type == WS.CLOSE and end.data == code
    assert fake.jetstream_options(0)[-1]["close_code"] == code
    await fake.wait_for(lambda a: a.log[0].closed is not None, 5)
    assert fake.log[0].close_reason == "invalid_options"


async def test_require_hello_holds_events_until_the_first_update(fake: FakeAPI, session) -> None:
    events = fake.jetstream_produce(50)
    params = {"cursor": events[0].time_us, "requireHello": "true"}
    async with connect(session, fake, params) as ws:
        frames = Frames(ws)
        with pytest.raises(TimeoutError):
            await frames.take(1, timeout=0.3)
        await ws.send_json({"type": "options_update", "payload": {}})
        assert await frames.take(50) == texts(events)


# --------------------------------------------------------------------------- pings, faults


async def test_pings_arrive_at_the_configured_interval(fake: FakeAPI, session) -> None:
    fake.configure(jetstream_ping_interval=0.05)
    async with connect(session, fake) as ws:
        frames = Frames(ws)
        deadline = time.monotonic() + 5
        while len(frames.pings) < 4:
            await frames.step(deadline - time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(frames.pings)]
    assert all(g > 0.03 for g in gaps)
    await fake.wait_for(lambda a: a.log[0].summary["pings"] >= 4, 5)  # type: ignore[index]


@pytest.mark.parametrize("fault", ["close_after", "slow_consumer_after"])
async def test_a_drop_sends_no_close_frame(fake: FakeAPI, session, fault: str) -> None:
    events = fake.jetstream_produce(20)
    fake.script({"endpoint": "jetstream", fault: 5})
    async with connect(session, fake, {"cursor": events[0].time_us}) as ws:
        frames = Frames(ws)
        end = await frames.to_end()
    assert frames.texts == texts(events[:5])
    assert end.type in (WS.CLOSED, WS.ERROR)  # no CLOSE: the socket just went
    await fake.wait_for(lambda a: a.log[0].closed is not None, 5)
    assert fake.log[0].close_reason == {"close_after": "closed"}.get(fault, "slow_consumer")
    assert fake.sent_messages(0) == texts(events[:5])


async def test_a_live_subscriber_that_falls_behind_is_dropped(fake: FakeAPI, session) -> None:
    fake.configure(jetstream_outbox=50)
    async with connect(session, fake) as ws:  # reads nothing: the socket's buffers fill
        await fake.wait_for(lambda a: a.log and a.log[0].status == 101, 5)
        fake.jetstream_produce(1)
        await Frames(ws).take(1)  # it has reached the live tail

        def dropped() -> bool:
            fake.jetstream_produce(400)  # each step stays within what one burst may bring
            return fake.log[0].closed is not None

        await wait_until(dropped, timeout=30, what="the drop")
        assert fake.log[0].close_reason == "slow_consumer"
        frames = Frames(ws)
        end = await frames.to_end(timeout=30)
    assert end.type in (WS.CLOSED, WS.ERROR)
    assert frames.texts == fake.sent_messages(0)[1 : 1 + len(frames.texts)]


async def test_stall_sends_nothing_then_resumes(fake: FakeAPI, session) -> None:
    fake.configure(jetstream_ping_interval=0.05)
    events = fake.jetstream_produce(10)
    fake.script({"endpoint": "jetstream", "stall_after": 3, "duration": 0.6})
    async with connect(session, fake, {"cursor": events[0].time_us}) as ws:
        frames = Frames(ws)
        await frames.take(4)
        stalled_from = frames.arrivals[2]
        assert frames.arrivals[3] - stalled_from >= 0.55
        assert not [p for p in frames.pings if stalled_from < p < frames.arrivals[3] - 0.1]
        await frames.take(6)
    assert frames.texts == texts(events)


@pytest.mark.parametrize("status", [400, 429, 503])
async def test_status_refuses_the_upgrade_with_a_json_body(
    fake: FakeAPI, session, status: int
) -> None:
    fake.script({"endpoint": "jetstream", "status": status},
                {"endpoint": "jetstream", "status": status, "body": "go away"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with connect(session, fake):
            pass
    assert caught.value.status == status
    async with session.get(fake.url + "/subscribe") as response:
        body = await response.json()
    assert response.status == status and body["message"] == "go away" and body["error"]
    fake.jetstream_produce(1)
    async with connect(session, fake) as ws:  # the script is used up: a normal connection
        await fake.wait_for(lambda a: a.log[-1].status == 101, 5)
        new = fake.jetstream_produce(1)
        assert await Frames(ws).take(1) == texts(new)


async def test_oversize_compressed_is_a_bomb(fake: FakeAPI, session) -> None:
    events = fake.jetstream_produce(5)
    fake.script({"endpoint": "jetstream", "oversize_after": 2, "size": 3_000_000})
    params = {"cursor": events[0].time_us, "compress": "true"}
    async with connect(session, fake, params) as ws:
        frames = Frames(ws, compressed=True)
        await frames.take(2)
        bomb = await ws.receive(timeout=5)
        assert bomb.type == WS.BINARY and len(bomb.data) < 10_000
        assert zstandard_content_size(bomb.data) == 3_000_000
        with pytest.raises(zstd.Refused):
            zstd.inflate(bomb.data, zstd.decompressor())
        assert await frames.take(3) == texts(events[2:])  # then the stream goes on
    sent = fake.sent_messages(0)
    assert len(sent[2]) == 3_000_000 and json.loads(sent[2])["kind"] == "commit"


async def test_oversize_and_not_json_uncompressed(fake: FakeAPI, session) -> None:
    events = fake.jetstream_produce(4)
    fake.script({"endpoint": "jetstream", "oversize_after": 1, "size": 1_500_000},
                {"endpoint": "jetstream", "not_json_after": 2})
    async with connect(session, fake, {"cursor": events[0].time_us}) as ws:
        got = await Frames(ws).take(5)
    assert len(got[1]) == 1_500_000 and got[:1] + got[2:] == texts(events)
    async with connect(session, fake, {"cursor": events[0].time_us}) as ws:
        got = await Frames(ws).take(5)
    with pytest.raises(ValueError):
        json.loads(got[2])
    assert got[:2] + got[3:] == texts(events)
    assert fake.sent_messages(1) == got


def test_jetstream_faults_are_checked() -> None:
    assert check_fault({"endpoint": "jetstream", "stall_after": 1, "duration": 2})
    for bad, words in [
        ({"endpoint": "jetstream", "cut_after": 1}, "not a Jetstream fault"),
        ({"close_after": 1}, "Jetstream fault"),
        ({"endpoint": "jetstream", "duration": 1}, "goes with stall_after"),
        ({"endpoint": "jetstream", "size": 1}, "goes with oversize_after"),
        ({"endpoint": "jetstream", "close_after": 1, "not_json_after": 2}, "at most one"),
        ({"endpoint": "jetstream", "close_after": -1}, "whole number"),
    ]:
        with pytest.raises(FakeAPIError, match=words):
            check_fault(bad)


# --------------------------------------------------------------------------- control, cli


async def test_control_routes_and_settings(fake: FakeAPI, session) -> None:
    events = fake.jetstream_produce(5)
    async with session.get(
        fake.url + "/_fake/jetstream/events", params={"since_us": events[2].time_us}
    ) as r:
        assert [json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode()
                for e in await r.json()] == texts(events[2:])
    async with session.post(fake.url + "/_fake/configure", json={"jetstream_window": 0}) as r:
        assert r.status == 400 and "jetstream_window" in (await r.json())["error"]
    async with session.post(
        fake.url + "/_fake/script", json=[{"endpoint": "jetstream", "stall_after": 1}]
    ) as r:
        assert r.status == 200
    await fake.reset()
    assert fake.jetstream_events() == [] and fake.pending_faults == []


def test_command_line_lists_the_jetstream_settings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sfmd", "fakeapi", "--help"],
        capture_output=True, text=True, check=True,
    )
    for option in ("--jetstream-rate", "--jetstream-burst", "--jetstream-window",
                   "--jetstream-ping-interval", "--jetstream-seed", "--jetstream-outbox"):
        assert option in done.stdout
    assert "86400" in done.stdout


def zstandard_content_size(frame: bytes) -> int:
    import zstandard

    return zstandard.frame_content_size(frame)
