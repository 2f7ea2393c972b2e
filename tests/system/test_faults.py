"""The fault matrix: the real daemon (`sfmd run`) against the fake API, one case per fault.

Each case adds its own filter stream (named after the case) to a running daemon. Its first
connection meets the fault; the stream must then reconnect after the wait Twitter's rules give
(sfmd/sources/backoff.py, Twitter's published reconnect rules) and collect the next
connection's messages. Checked for each:

* nothing lost, nothing twice, no half message: the published lines are exactly the messages
  the API fully sent on the daemon's connections, in order, byte for byte;
* every published file valid: sha256, line and byte counts match its manifest line, the gzip
  is complete, no `.part` is left, every file is in the manifest once;
* the right wait: the gap in the fake API's log between a connection's close and the next
  connection, and the gap in the daemon's log between its `backoff` and `connecting` events;
* the stream's status (`GET /streams/NAME`) and the daemon's log say what happened.

The cases mostly wait (backoffs, stalls), so a module fixture runs them in a few lanes at once
(a daemon and a fake API each, cases one after another) and each parametrized test checks one
case's observations.

Chunk boundaries at every offset of a message are a property of the reader alone, the only
code that sees them: tests/test_protocol.py covers them (`test_every_single_offset_of_one_message`
and the hypothesis tests `test_line_framer_any_chunking` / `test_length_framer_any_chunking`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sfmd.credentials import Credential, load_credentials
from sfmd.fake import ConnectionRecord, FakeAPI
from sfmd.sources.twitter import oauth
from tests.helpers.api import Api
from tests.helpers.checks import check_published
from tests.helpers.config import FAST_TIMING, write_credentials, write_daemon_config
from tests.helpers.daemon import start_daemon
from tests.helpers.files import messages_on_disk, stored_messages
from tests.helpers.logs import log_path, read_log
from tests.helpers.waits import wait_until

TOTAL = 100  # messages each connection sends (then only keep-alives)
AFTER = 40  # a connection's fault strikes after this many messages
# Waits are measured on a loaded 2-core machine: a wait may run late, never early.
LATE = 1.5
EARLY = 0.1  # the fake API notices a client's close a little after the client made it
# Lanes run at once, each a daemon running its cases one after another; most of a case is
# waiting (backoffs, stalls), so three lanes cut the wall time without crowding two cores.
LANES = 3

FIRST_WAIT = {
    "network": FAST_TIMING["tcp_backoff_step"],
    "http": FAST_TIMING["http_backoff_start"],
    "rate_limit": FAST_TIMING["ratelimit_backoff_start"],
}
# Disconnects that mean a person or a rival client must act: waiting at the HTTP rate. Stated
# here rather than imported from sfmd, so that the test says what sfmd must do.
STICKY = (2, 6, 7)


@dataclass(frozen=True)
class Case:
    """One row of the matrix: the fault, and what the stream must make of it."""

    name: str
    fault: dict[str, Any] | None  # scripted for the first connection
    failure: str | None  # the backoff kind the log must name; None: no reconnect at all
    error: str | None = None  # what `last_error` must say once the fault happened
    events: tuple[str, ...] = ()  # log events the fault must leave for the stream
    driver: str = "scripted"  # or "duplicate" (a second real client), "api_down"
    earlier: tuple[str, ...] = ()  # what `last_error` may say before it says `error`

    @property
    def stream(self) -> str:
        """The case's own stream, tracking its own name (stream names are lower case)."""
        return self.name.lower()

    @property
    def wait(self) -> float:
        assert self.failure is not None
        return FIRST_WAIT[self.failure]


def _disconnect(code: int) -> Case:
    return Case(
        f"disconnect_{code}",
        {"disconnect_after": AFTER, "code": code},
        "http" if code in STICKY else "network",
        f"disconnect message code {code}",
        ("disconnect_message",),
    )


CASES = [
    Case("http_503", {"status": 503}, "http", "HTTP 503", ("http_error",)),
    Case("http_401", {"status": 401}, "http", "HTTP 401: unauthorized", ("http_error",)),
    Case("http_406", {"status": 406}, "http", "HTTP 406: not acceptable", ("http_error",)),
    Case(
        "http_420",
        {"status": 420, "body": "Exceeded connection limit for user"},
        "rate_limit",
        "HTTP 420: rate limited (Exceeded connection limit for user)",
        ("rate_limited",),
    ),
    Case("http_429", {"status": 429}, "rate_limit", "HTTP 429: rate limited", ("rate_limited",)),
    Case(
        "cut_mid_message",
        {"cut_after": AFTER},
        "network",
        "connection cut mid-body",
        ("partial_message_dropped",),
    ),
    Case("stall", {"stall_after": AFTER}, "network", "stall: no data for 1 s"),
    *(_disconnect(code) for code in range(1, 13)),
    Case(
        "duplicate_connection_7",
        None,
        "http",
        "disconnect message code 7",
        ("disconnect_message",),
        driver="duplicate",
    ),
    Case("message_600KB", {"oversized_after": AFTER, "size": 600 * 1024}, None),
    Case("malformed_line", {"malformed_after": AFTER}, None),
    Case(
        "api_down_then_back",
        None,
        "network",
        "Cannot connect to host",
        driver="api_down",
        earlier=("the server ended the stream",),
    ),
]


# --------------------------------------------------------------------------- shared checks


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- running the cases


@dataclass
class Lane:
    """One daemon and its fake API, running cases one after another.

    One case at a time per lane, because the fake API hands its scripted faults to whichever
    connection comes next: with a single active stream, that is the case's own stream.
    """

    home: Path
    apis: list[FakeAPI]  # the one serving now is the last (api_down starts a second one)
    ctl: Api

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return log_path(self.home)


@dataclass
class Observed:
    """What one case left: the API's view, the daemon's view, the files."""

    data: Path
    stream: str
    records: list[ConnectionRecord]  # the stream's connections, in order
    sent: list[bytes]  # fully sent on those connections, in order
    status: dict[str, Any]  # GET /streams/NAME once the stream had recovered
    changes: list[tuple[str, str | None]]  # (state, last_error) as polled while it ran
    api_back_at: float | None = None  # api_down: when the API listened again
    rogue_body: bytes = b""  # duplicate: what the second client received
    # Known once the lane's daemon has stopped:
    log: list[dict[str, Any]] = field(default_factory=list)  # the stream's log events
    secrets_seen: bool = True  # "SECRET" in the log or the daemon's stderr
    exit_code: int | None = None  # of the lane's daemon, on SIGTERM


def new_api(credentials: dict[str, Credential], port: int = 0) -> FakeAPI:
    return FakeAPI(
        credentials, port=port, record_bytes=True, keepalive_interval=0.25,
        message_size=600, total=TOTAL,
    )


def stream_records(apis: list[FakeAPI], stream: str) -> list[ConnectionRecord]:
    """A case's connections: its stream tracks its own name."""
    return [
        r for api in apis for r in api.log
        if r.endpoint == "filter" and r.params.get("track") == stream
    ]


def sent_on(apis: list[FakeAPI], records: list[ConnectionRecord]) -> list[bytes]:
    by_api = {id(r): api for api in apis for r in api.log}
    return [m for r in records for m in by_api[id(r)].sent_messages(r.conn)]


def delivered(lane: Lane, stream: str, connections: int) -> Callable[[], bool]:
    """The `connections`-th connection sent everything, and all that was sent is on disk."""

    def check() -> bool:
        records = stream_records(lane.apis, stream)
        return (
            len(records) >= connections
            and records[connections - 1].sent_count >= TOTAL
            and messages_on_disk(lane.data, stream) == len(sent_on(lane.apis, records))
        )

    return check


async def poll_status(ctl: Api, stream: str, changes: list[tuple[str, str | None]]) -> None:
    """Note every change of (state, last_error), so a test can see what a backoff said."""
    while True:
        try:
            code, body = await ctl.call("GET", f"/streams/{stream}")
        except aiohttp.ClientError:
            return
        if code == 200:
            seen = (body["status"]["state"], body["status"]["last_error"])
            if not changes or changes[-1] != seen:
                changes.append(seen)
        await asyncio.sleep(0.01)


async def rogue_client(stream_url: str, credential: Credential) -> bytes:
    """A second client on the daemon's credential: Twitter cuts the older connection (code 7)."""
    url = f"{stream_url}/statuses/filter.json"
    signed_url, headers, body = oauth.sign(credential, "POST", url, {"track": "rogue"})
    async with aiohttp.ClientSession() as session, session.post(
        signed_url, data=body, headers=headers
    ) as resp:
        assert resp.status == 200
        return await resp.read()  # until the daemon's reconnect cuts us in turn


async def drive_scripted(case: Case, lane: Lane, obs: dict[str, Any]) -> None:
    connections = 1 if case.failure is None else 2
    await wait_until(delivered(lane, case.stream, connections), timeout=30,
                     what=f"{case.name}: {connections} connection(s), everything on disk")


async def drive_duplicate(case: Case, lane: Lane, obs: dict[str, Any]) -> None:
    await wait_until(delivered(lane, case.stream, 1), timeout=30,
                     what=f"{case.name}: the first connection's messages")
    credential = load_credentials(lane.home / "credentials.toml")["alpha"]
    rogue = asyncio.create_task(rogue_client(lane.apis[-1].stream_url, credential))
    await wait_until(delivered(lane, case.stream, 2), timeout=30,
                     what=f"{case.name}: the daemon back after code 7")
    async with asyncio.timeout(15):
        obs["rogue_body"] = await rogue


async def drive_api_down(case: Case, lane: Lane, obs: dict[str, Any]) -> None:
    """API up, streaming; then down (server-side close, then connections refused); then back."""
    first = lane.apis[-1]
    await wait_until(delivered(lane, case.stream, 1), timeout=30,
                     what=f"{case.name}: the first connection's messages")
    port = int(first.url.rsplit(":", 1)[1])
    await first.stop()

    def refused() -> int:
        return sum(
            1 for e in read_log(lane.log_file, case.stream, missing_ok=True)
            if e["event"] == "disconnected" and "Cannot connect" in e.get("reason", "")
        )

    await wait_until(lambda: refused() >= 3, timeout=30, what="three refused connection attempts")
    second = new_api(load_credentials(lane.home / "credentials.toml"), port=port)
    await second.start()
    obs["api_back_at"] = time.monotonic()
    lane.apis.append(second)
    await wait_until(delivered(lane, case.stream, 2), timeout=30,
                     what=f"{case.name}: the stream back on the API")


DRIVERS: dict[str, Callable[[Case, Lane, dict[str, Any]], Awaitable[None]]] = {
    "scripted": drive_scripted,
    "duplicate": drive_duplicate,
    "api_down": drive_api_down,
}


async def run_case(case: Case, lane: Lane) -> Observed:
    """Arm the fault, add the case's stream, drive it, then stop it (publishing its file)."""
    if case.fault is not None:
        lane.apis[-1].script(case.fault)
    name = case.stream
    body = {"name": name, "kind": "filter", "track": [name], "credential": "alpha"}
    changes: list[tuple[str, str | None]] = []
    obs: dict[str, Any] = {}
    await lane.ctl.ok("POST", "/streams", body, status=201)
    poller = asyncio.create_task(poll_status(lane.ctl, name, changes))
    try:
        await DRIVERS[case.driver](case, lane, obs)
        status = (await lane.ctl.ok("GET", f"/streams/{name}"))["status"]
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        # Stopped, it connects no more: the next case's fault goes to the next case's stream.
        await lane.ctl.ok("POST", f"/streams/{name}/stop")
    records = stream_records(lane.apis, name)
    return Observed(
        data=lane.data,
        stream=name,
        records=records,
        sent=sent_on(lane.apis, records),
        status=status,
        changes=changes,
        api_back_at=obs.get("api_back_at"),
        rogue_body=obs.get("rogue_body", b""),
    )


async def run_lane(
    home: Path, cases: list[Case], starting: asyncio.Lock
) -> dict[str, Observed | BaseException]:
    home.mkdir()
    apis = [new_api(write_credentials(home))]
    await apis[0].start()
    results: dict[str, Observed | BaseException] = {}
    try:
        async with starting:  # start-up is CPU-bound: one at a time, so none misses its deadline
            # Every failure in full (none folded): the checks time each wait on its own line.
            config = write_daemon_config(home, apis[0], timing={"log_fold_interval": 0.001})
            proc = await start_daemon(home, config)
        try:
            async with Api(home / "sfmd.sock") as ctl:
                lane = Lane(home, apis, ctl)
                for case in cases:
                    try:
                        results[case.name] = await run_case(case, lane)
                    except Exception as e:  # reported by that case's test; the others go on
                        results[case.name] = e
            proc.signal(signal.SIGTERM)
            exit_code = await proc.wait(10)
        finally:
            proc.kill()
    finally:
        for api in apis:
            await api.stop()
    secrets_seen = "SECRET" in lane.log_file.read_text() + proc.stderr
    for seen in results.values():
        if isinstance(seen, Observed):
            seen.log = read_log(lane.log_file, seen.stream, missing_ok=True)
            seen.secrets_seen = secrets_seen
            seen.exit_code = exit_code
    return results


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def observed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Observed | BaseException]]:
    """Run the selected cases in a few lanes at once; a case that failed keeps its exception."""
    selected = {
        item.callspec.params["case"].name
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    cases = [c for c in CASES if c.name in selected]
    # api_down replaces its lane's API: it goes last in its lane.
    lanes = [sorted(cases[i::LANES], key=lambda c: c.driver == "api_down") for i in range(LANES)]
    root = tmp_path_factory.mktemp("faults")
    starting = asyncio.Lock()
    outcomes = await asyncio.gather(
        *(run_lane(root / f"lane{i}", lane, starting) for i, lane in enumerate(lanes) if lane),
        return_exceptions=True,
    )
    results: dict[str, Observed | BaseException] = {}
    for lane, outcome in zip([lane for lane in lanes if lane], outcomes, strict=True):
        for case in lane:
            results[case.name] = (
                outcome if isinstance(outcome, BaseException) else outcome[case.name]
            )
    yield results


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, observed: dict[str, Observed | BaseException]) -> None:
    seen = observed[case.name]
    if isinstance(seen, BaseException):
        raise seen
    connections = 1 if case.failure is None else 2
    assert len(seen.records) == connections, [r.close_reason for r in seen.records]

    # Nothing lost, nothing twice, no half message: each sent message once, in order.
    stored = stored_messages(seen.data, seen.stream)
    assert len(stored) == len(seen.sent) and stored == seen.sent
    assert len(stored) >= TOTAL
    check_published(seen.data, seen.stream)
    assert seen.exit_code == 0
    assert not seen.secrets_seen

    # The status says what happened, and that the stream is well again.
    status = seen.status
    assert status["state"] == "streaming"
    assert status["messages"] == len(stored)
    assert status["bytes"] == sum(len(m) + 1 for m in stored)
    # Every attempt is in the log: told in a `connecting` line, or summed up in the line that
    # folds a repeated failure.
    attempts = len([e for e in seen.log if e["event"] == "connecting"])
    attempts += sum(e.get("attempts", 0) for e in seen.log if e["event"] == "disconnected")
    assert status["reconnects"] == attempts - 1
    assert status["reconnects_planned"] == 0
    assert status["reconnects_after_failure"] == status["reconnects"]
    assert status["down_since"] is None and status["next_attempt"] is None  # well again
    if case.failure is None:
        assert status["reconnects"] == 0 and status["last_error"] is None
        assert not [e for e in seen.log if e["event"] == "disconnected" or e.get("failure")]
    else:
        assert case.error is not None and case.error in (status["last_error"] or "")
        in_backoff = [err for state, err in seen.changes if state == "backoff"]
        if case.wait >= 0.4:  # a 0.2 s backoff may fall between two polls on a busy machine
            assert in_backoff, seen.changes
        explained = (case.error, *case.earlier)
        assert all(any(e in (err or "") for e in explained) for err in in_backoff), in_backoff

    check_waits(case, seen)
    check_log(case, seen, stored)


def check_waits(case: Case, seen: Observed) -> None:
    """The log names Twitter's wait, and the next connection came after that wait.

    A disconnect's line carries its wait (one line per failure; a repeated failure is
    folded, and the line summing it up carries no wait)."""
    backoffs = [e for e in seen.log if e["event"] == "disconnected" and "wait" in e]
    if case.failure is None:
        assert not backoffs
        return
    step, cap = FAST_TIMING["tcp_backoff_step"], FAST_TIMING["tcp_backoff_max"]
    if case.driver == "api_down":
        # One server close (after a healthy connection: from the bottom), then refusals, each
        # waiting one step longer, up to the cap.
        expected = [round(min(step * k, cap), 3) for k in range(1, len(backoffs) + 1)]
    else:
        expected = [case.wait]
    assert [e["wait"] for e in backoffs] == expected
    assert {e["failure"] for e in backoffs} == {case.failure}

    # In the daemon's own clock: each backoff event to the next connection attempt (unless
    # the next failure was the same, so its attempt was folded with it).
    for backoff in backoffs:
        after = [e for e in seen.log if e["event"] in ("connecting", "disconnected")
                 and at(e) >= at(backoff) and e is not backoff]
        assert after, "no connection attempt after a backoff"
        if after[0]["event"] == "disconnected":
            assert "repeated" in after[0], after[0]
            continue
        gap = at(after[0]) - at(backoff)
        assert backoff["wait"] - 0.01 <= gap <= backoff["wait"] + LATE, (gap, backoff["wait"])

    # In the API's clock: from the close of one connection to the opening of the next.
    first, second = seen.records[:2]
    if case.driver == "api_down":
        assert seen.api_back_at is not None
        gap = second.opened - seen.api_back_at  # refused meanwhile: at most one capped wait
        assert 0 <= gap <= cap + LATE, gap
        return
    assert first.closed is not None
    gap = second.opened - first.closed
    assert case.wait - EARLY <= gap <= case.wait + LATE, (gap, case.wait)
    if case.name == "stall":
        # The silence began right after the AFTER messages went out at the first byte.
        assert first.first_byte is not None
        stalled = first.closed - first.first_byte
        stall = FAST_TIMING["stall_timeout"]
        assert stall - EARLY <= stalled <= stall + LATE, stalled


def check_log(case: Case, seen: Observed, stored: list[bytes]) -> None:
    events = [e["event"] for e in seen.log]
    assert {"stream_started", "connecting", "connected"} <= set(events)
    for wanted in case.events:
        assert wanted in events, (wanted, events)
    disconnects = [e for e in seen.log if e["event"] == "disconnected" and e.get("failure")]
    if case.failure is not None:
        assert disconnects and case.error is not None
        assert case.error in disconnects[-1]["reason"]
        assert all(e["level"] == "warning" for e in disconnects)
        if case.driver == "api_down":  # the server's close first, then the refusals
            assert disconnects[0]["reason"] == "the server ended the stream"
            assert all(case.error in e["reason"] for e in disconnects[1:])
    if case.fault is not None and "status" in case.fault:
        (error,) = [e for e in seen.log if e["event"] in ("http_error", "rate_limited")]
        assert error["status"] == case.fault["status"]
        if case.fault["status"] in (401, 406):
            assert error["level"] == "error" and error["needs_a_person"]
    if case.fault is not None and "code" in case.fault:
        (notice,) = [e for e in seen.log if e["event"] == "disconnect_message"]
        assert notice["code"] == case.fault["code"]
    if case.driver == "duplicate":
        (notice,) = [e for e in seen.log if e["event"] == "disconnect_message"]
        assert notice["code"] == 7
        # A real duplicate: the rival was cut in turn, with code 7, when sfmd came back.
        assert b'"disconnect":{"code":7' in seen.rogue_body
    if case.name == "cut_mid_message":
        assert seen.records[0].partial_seq is not None  # half a message really went out
        assert str(seen.records[0].partial_seq).encode() not in b"".join(stored)
    if case.name == "message_600KB":
        assert max(len(m) for m in stored) >= 600 * 1024
    if case.name == "malformed_line":
        assert sum(m.startswith(b'{"created_at":"broken"') for m in stored) == 1
