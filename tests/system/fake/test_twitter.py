"""The simulated API, seen from a raw HTTP client on a real loopback socket.

Other tests trust this server to tell the truth about what it sent, so these check its wire
format and its log against each other, and each scripted fault as a client experiences it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from oauthlib.oauth1 import Client

from sfmd.credentials import Credential
from sfmd.fake import FIRST_SEQ, FakeAPI, seq_of, user_id_for
from tests.helpers.bodies import BodyReader

ALICE = Credential("alice", "ck-alice", "cs-alice", "at-alice", "ats-alice")
BOB = Credential("bob", "ck-bob", "cs-bob", "at-bob", "ats-bob")
FORM = "application/x-www-form-urlencoded"
SAMPLE = "/1.1/statuses/sample.json"

# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def fake() -> AsyncIterator[FakeAPI]:
    """A FakeAPI that checks signatures for ALICE and BOB and records what it sends."""
    api = FakeAPI({"alice": ALICE, "bob": BOB}, keepalive_interval=0.05, record_bytes=True)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def signed(
    cred: Credential,
    method: str,
    url: str,
    params: dict[str, str] | None = None,
    *,
    sign_as: str | None = None,
    consumer_secret: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for session.request(): OAuth 1.0a as a real client signs it.

    `sign_as` signs for another scheme and host (as twarc does for stream.twitter.com)."""
    client = Client(
        cred.consumer_key,
        client_secret=consumer_secret or cred.consumer_secret,
        resource_owner_key=cred.access_token,
        resource_owner_secret=cred.access_token_secret,
    )
    path = url.split("/", 3)[3]
    target = f"{sign_as}/{path}" if sign_as else url
    encoded = urlencode(params or {})
    if method == "GET":
        query = f"?{encoded}" if encoded else ""
        _, headers, _ = client.sign(target + query, http_method="GET")
        return {"method": "GET", "url": url + query, "headers": headers}
    _, headers, body = client.sign(
        target, http_method="POST", body=encoded, headers={"Content-Type": FORM}
    )
    return {"method": "POST", "url": url, "headers": headers, "data": body}


def split_body(buffer: bytes, delimited: bool) -> tuple[list[bytes], int, bytes]:
    """Strictly parse v1.1 framing: (messages, keep-alive count, unparsed tail)."""
    messages: list[bytes] = []
    keepalives = 0
    pos = 0
    while True:
        if buffer.startswith(b"\r\n", pos):
            keepalives += 1
            pos += 2
            continue
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            return messages, keepalives, buffer[pos:]
        if not delimited:
            messages.append(buffer[pos:end])
            pos = end + 2
            continue
        length = int(buffer[pos:end])  # a non-number here fails the test, as it should
        if len(buffer) < end + 2 + length:
            return messages, keepalives, buffer[pos:]
        framed = buffer[end + 2 : end + 2 + length]
        assert framed.endswith(b"\r\n") and b"\r\n" not in framed[:-2]
        messages.append(framed[:-2])
        pos = end + 2 + length


class Reader(BodyReader):
    """A v1.1 body: CRLF-separated lines, or length-prefixed with `delimited=length`."""

    def __init__(self, response: aiohttp.ClientResponse, delimited: bool = False) -> None:
        super().__init__(response)
        self.delimited = delimited

    def split(self, buffer: bytes) -> tuple[list[bytes], int, bytes]:
        return split_body(buffer, self.delimited)


def filter_url(api: FakeAPI) -> str:
    return api.stream_url + "/statuses/filter.json"


# --------------------------------------------------------------------------- OAuth


async def test_signature_for_our_url_is_accepted(fake: FakeAPI, session) -> None:
    request = signed(ALICE, "POST", filter_url(fake), {"track": "café,sfm", "follow": "12"})
    async with session.request(**request) as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        await Reader(response).until(messages=1)
    record = fake.log[0]
    assert (record.auth_ok, record.credential) == (True, "alice")
    assert record.signed_host == fake.url.removeprefix("http://")
    assert record.params == {"track": "café,sfm", "follow": "12"}


async def test_signature_for_twitter_host_is_accepted(fake: FakeAPI, session) -> None:
    request = signed(
        BOB,
        "GET",
        fake.stream_url + "/statuses/sample.json",
        {"stall_warnings": "true"},
        sign_as="https://stream.twitter.com",
    )
    async with session.request(**request) as response:
        assert response.status == 200
    assert (fake.log[0].credential, fake.log[0].signed_host) == ("bob", "stream.twitter.com")


@pytest.mark.parametrize("case", ["wrong_secret", "unknown_key", "unsigned"])
async def test_bad_signature_is_refused(fake: FakeAPI, session, case: str) -> None:
    if case == "wrong_secret":
        request = signed(ALICE, "POST", filter_url(fake), {"track": "a"}, consumer_secret="x")
    elif case == "unknown_key":
        stranger = Credential("eve", "ck-eve", "cs", "at", "ats")
        request = signed(stranger, "POST", filter_url(fake), {"track": "a"})
    else:
        request = {"method": "POST", "url": filter_url(fake), "data": {"track": "a"}}
    async with session.request(**request) as response:
        assert response.status == 401
        assert "<html>" in await response.text()
    assert fake.log[0].auth_ok is False and fake.log[0].status == 401


async def test_without_credentials_anything_goes(session) -> None:
    async with FakeAPI(total=1) as api:
        url = filter_url(api) + "?track=a"
        async with session.get(url) as response:
            assert response.status == 200
            await Reader(response).until(messages=1)
        assert api.log[0].credential is None and api.log[0].auth_ok


# --------------------------------------------------------------------------- framing, log


@pytest.mark.parametrize("delimited", [False, True])
async def test_messages_match_the_log(fake: FakeAPI, session, delimited: bool) -> None:
    fake.configure(total=40, delete_every=7, limit_every=11, message_size=3000)
    params = {"track": "x"} | ({"delimited": "length"} if delimited else {})
    async with session.request(**signed(ALICE, "POST", filter_url(fake), params)) as response:
        reader = Reader(response, delimited)
        await reader.until(messages=40, keepalives=2)  # after `total`, only keep-alives
        assert reader.buffer == b""
    await fake.wait_for(lambda api: api.log[0].closed is not None, 5)

    record = fake.log[0]
    assert reader.messages == fake.sent_messages(0)
    seqs = [seq_of(m) for m in reader.messages]
    assert seqs == list(range(FIRST_SEQ, FIRST_SEQ + 40))
    assert record.sent_seqs == [[seqs[0], seqs[-1]]] and record.sent_count == 40
    kinds = [next(iter(json.loads(m))) for m in reader.messages]
    assert kinds[6] == kinds[13] == "delete" and kinds[10] == kinds[21] == "limit"
    tweets = [
        json.loads(m)
        for m, k in zip(reader.messages, kinds, strict=True)
        if k != "delete" and k != "limit"
    ]
    assert len(tweets) == 40 - 5 - 3
    for tweet, raw in zip(
        tweets, [m for m in reader.messages if m.startswith(b'{"created')], strict=True
    ):
        assert tweet["id"] > 2**53 and tweet["id_str"] == str(tweet["id"])
        assert len(raw) == 3000 and b"\n" not in raw
    assert record.close_reason == "client_closed"


@pytest.mark.parametrize("delimited", [False, True])
async def test_flat_out_blocks_match_the_log(fake: FakeAPI, session, delimited: bool) -> None:
    fake.configure(total=150)  # three blocks of 4.8 KB tweets
    params = {"track": "x"} | ({"delimited": "length"} if delimited else {})
    async with session.request(**signed(ALICE, "POST", filter_url(fake), params)) as response:
        reader = Reader(response, delimited)
        await reader.until(messages=150)
    assert reader.messages == fake.sent_messages(0)
    assert {len(m) for m in reader.messages} == {4800}
    assert [json.loads(m)["id"] for m in reader.messages] == list(range(FIRST_SEQ, FIRST_SEQ + 150))


async def test_cut_under_load_loses_nothing_already_written(session) -> None:
    async with FakeAPI() as api:  # not recording: the fastest writer, the slowest client
        api.script({"cut_after": 3000})
        async with session.get(api.url + SAMPLE) as response:
            reader = Reader(response)
            with pytest.raises(aiohttp.ClientPayloadError):
                await reader.to_end()
        assert [seq_of(m) for m in reader.messages] == list(range(FIRST_SEQ, FIRST_SEQ + 3000))
        assert str(api.log[0].partial_seq).encode() in reader.buffer


async def test_rate_paces_messages(fake: FakeAPI, session) -> None:
    fake.configure(rate=100)
    async with session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"})) as r:
        start = time.monotonic()
        await Reader(r).until(messages=21)
        assert time.monotonic() - start >= 0.15  # 20 intervals at 100/s: 0.2 s


async def test_ids_stay_unique_across_connections(fake: FakeAPI, session) -> None:
    fake.configure(total=5)
    seen: list[int] = []
    for cred in (ALICE, BOB, ALICE):
        async with session.request(**signed(cred, "GET", filter_url(fake), {"track": "a"})) as r:
            reader = Reader(r)
            await reader.until(messages=5)
            seen += [seq_of(m) for m in reader.messages]
    assert len(set(seen)) == 15


# --------------------------------------------------------------------------- faults


async def test_status_fault_then_normal(fake: FakeAPI, session) -> None:
    fake.script(
        {
            "status": 420,
            "body": "Exceeded connection limit for user",
            "headers": {"Retry-After": "60"},
        }
    )
    request = signed(ALICE, "POST", filter_url(fake), {"track": "a"})
    async with session.request(**request) as response:
        assert response.status == 420
        assert response.headers["Retry-After"] == "60"
        assert await response.text() == "Exceeded connection limit for user"
    async with session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"})) as r:
        assert r.status == 200
    assert [rec.status for rec in fake.log] == [420, 200]
    assert fake.log[0].fault == {
        "status": 420,
        "body": "Exceeded connection limit for user",
        "headers": {"Retry-After": "60"},
    }


@pytest.mark.parametrize("delimited", [False, True])
async def test_cut_after_sends_half_a_message_then_drops(
    fake: FakeAPI, session, delimited: bool
) -> None:
    fake.script({"cut_after": 3})
    params = {"track": "a"} | ({"delimited": "length"} if delimited else {})
    async with session.request(**signed(ALICE, "POST", filter_url(fake), params)) as response:
        reader = Reader(response, delimited)
        with pytest.raises(aiohttp.ClientPayloadError):
            await reader.to_end()
    record = fake.log[0]
    assert len(reader.messages) == 3 == record.sent_count
    assert reader.messages == fake.sent_messages(0)
    assert record.close_reason == "cut" and record.partial_seq == seq_of(reader.messages[-1]) + 1
    assert 1000 < len(reader.buffer) < 4000  # half of a 4.8 KB message, no more
    assert str(record.partial_seq).encode() in reader.buffer


async def test_stall_after_sends_nothing_at_all(fake: FakeAPI, session) -> None:
    fake.script({"stall_after": 2})
    timeout = aiohttp.ClientTimeout(total=None, sock_read=0.4)  # 8 keep-alive intervals
    request = signed(ALICE, "POST", filter_url(fake), {"track": "a"})
    async with session.request(**request, timeout=timeout) as response:
        reader = Reader(response)
        with pytest.raises(asyncio.TimeoutError):
            await reader.to_end()
    assert (len(reader.messages), reader.keepalives, reader.buffer) == (2, 0, b"")
    await fake.wait_for(lambda api: api.log[0].closed is not None, 5)
    assert fake.log[0].close_reason == "client_closed" and fake.log[0].sent_count == 2


async def test_disconnect_after_sends_the_code_then_ends(fake: FakeAPI, session) -> None:
    fake.script({"disconnect_after": 2, "code": 12})
    async with session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"})) as r:
        reader = Reader(r)
        await reader.to_end()
    assert len(reader.messages) == 3
    notice = json.loads(reader.messages[2])
    assert notice["disconnect"]["code"] == 12 and notice["seq"] == seq_of(reader.messages[1]) + 1
    assert fake.log[0].close_reason == "disconnect_12" and fake.log[0].sent_count == 3


async def test_oversized_and_malformed_lines_then_normal(fake: FakeAPI, session) -> None:
    fake.configure(total=4)
    fake.script({"oversized_after": 1, "size": 600_000}, {"malformed_after": 2})
    async with session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"})) as r:
        reader = Reader(r)
        await reader.until(messages=4)
    big = reader.messages[1]
    assert len(big) == 600_000 and json.loads(big)["id"] == seq_of(big)
    async with session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"})) as r:
        reader = Reader(r)
        await reader.until(messages=4)
    bad = reader.messages[2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    assert b"\n" not in bad and seq_of(bad) == seq_of(reader.messages[1]) + 1
    json.loads(reader.messages[3])


async def test_delay_holds_the_headers(fake: FakeAPI, session) -> None:
    fake.script({"delay": 0.3, "status": 503})
    start = time.monotonic()
    async with session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"})) as r:
        assert r.status == 503
    assert time.monotonic() - start >= 0.3
    record = fake.log[0]
    assert record.first_byte is not None and record.first_byte - record.opened >= 0.3


async def test_a_second_connection_cuts_the_first_with_code_7(fake: FakeAPI, session) -> None:
    fake.configure(total=3)
    first = await session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"}))
    other = await session.request(**signed(BOB, "POST", filter_url(fake), {"track": "b"}))
    old = Reader(first)
    await old.until(messages=3)
    second = await session.request(**signed(ALICE, "GET", filter_url(fake), {"track": "c"}))
    assert second.status == 200
    await old.to_end()
    assert json.loads(old.messages[-1])["disconnect"]["code"] == 7
    assert len(old.messages) == 4
    assert fake.log[0].close_reason == "replaced"
    assert fake.log[1].closed is None and fake.log[2].closed is None  # bob's is another token
    for response in (first, other, second):
        response.close()


# --------------------------------------------------------------------------- refusals, lookup


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"language": "en"}, 406),
        ({"track": "x" * 61}, 406),
        ({"follow": "12,abc"}, 406),
        ({"track": ",".join(f"t{i}" for i in range(401))}, 413),
        ({"follow": ",".join(str(i) for i in range(5001))}, 413),
        ({"locations": ",".join(["-1,-1,1,1"] * 26)}, 413),
        ({"track": ",".join(f"t{i}" for i in range(400)), "locations": "-1,-1,1,1"}, 200),
    ],
)
async def test_filter_parameter_rules(fake: FakeAPI, session, params, status) -> None:
    async with session.request(**signed(ALICE, "POST", filter_url(fake), params)) as response:
        assert response.status == status


async def test_users_lookup(fake: FakeAPI, session) -> None:
    url = fake.stream_url + "/users/lookup.json"
    request = signed(
        ALICE,
        "GET",
        url,
        {"screen_name": "Alice,nosuchperson,bob"},
        sign_as="https://api.twitter.com",
    )
    async with session.request(**request) as response:
        assert response.status == 200
        users = await response.json()
    assert [u["screen_name"] for u in users] == ["Alice", "bob"]
    assert users[0]["id"] == user_id_for("alice") and users[0]["id_str"] == str(users[0]["id"])
    async with session.request(**signed(ALICE, "POST", url, {"screen_name": "nosuch1"})) as r:
        assert r.status == 404
        assert (await r.json())["errors"][0]["code"] == 17
    assert [r.endpoint for r in fake.log] == ["users/lookup", "users/lookup"]


# --------------------------------------------------------------------------- control


async def test_control_endpoints(fake: FakeAPI, session) -> None:
    control = fake.url + "/_fake"
    async with session.post(control + "/script", json=[{"status": 503}]) as r:
        assert r.status == 200
    async with session.post(control + "/script", json=[{"stall_for": 1}]) as r:
        assert r.status == 400 and "stall_for" in (await r.json())["error"]
    async with session.post(control + "/configure", json={"total": 2}) as r:
        assert (await r.json())["total"] == 2
    async with session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"})) as r:
        assert r.status == 503
    async with session.request(**signed(ALICE, "POST", filter_url(fake), {"track": "a"})) as r:
        reader = Reader(r)
        await reader.until(messages=2, keepalives=1)
    await fake.wait_for(lambda api: api.log[-1].closed is not None, 5)
    async with session.get(control + "/log") as r:
        assert await r.json() == [record.to_dict() for record in fake.log]
    async with session.get(control + "/sent/1") as r:
        assert [m.encode() for m in await r.json()] == reader.messages
    async with session.post(control + "/reset") as r:
        assert r.status == 200
    assert fake.log == [] and fake.settings.total is None


async def test_stop_closes_every_stream_promptly(session) -> None:
    api = FakeAPI(keepalive_interval=60)
    await api.start()
    busy = await session.get(filter_url(api) + "?track=a")  # never read: its writes block
    idle_api_total = await session.get(filter_url(api) + "?track=b&delimited=length")
    await api.wait_for(lambda a: len(a.log) == 2 and a.log[1].sent_count > 0, 5)
    api.configure(total=0)
    start = time.monotonic()
    await api.stop()
    assert time.monotonic() - start < 3
    assert [r.close_reason for r in api.log] == ["server_stop", "server_stop"]
    busy.close()
    idle_api_total.close()


def test_command_line_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "sfmd", "fakeapi", "--port", "0", "--total", "3"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()  # the first line is the base URL
            assert url.startswith("http://127.0.0.1:")

            async def fetch() -> list[bytes]:
                async with aiohttp.ClientSession() as s, s.get(url + SAMPLE) as response:
                    reader = Reader(response)
                    await reader.until(messages=3)
                    return reader.messages

            assert len(asyncio.run(fetch())) == 3
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=10)
            assert proc.returncode == 0, errors
        finally:
            if proc.poll() is None:
                proc.kill()


def test_the_command_line_paces_like_a_real_stream_unless_told_otherwise() -> None:
    """A dry run flat out would fill a disk in hours: the default rate is a real stream's."""
    shown = subprocess.run([sys.executable, "-m", "sfmd", "fakeapi", "--help"],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    flat = " ".join(shown.split())
    assert "--rate RATE messages per second per connection" in flat and "(default: 20.0)" in flat
