"""Mastodon streams through the real daemon and the fake instance: every status posted on a
stream's timeline while it was set is stored exactly once, live or by the gap fill, across
faults, restarts and a crash; an account's streams share one socket."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import SfmdProcess, start_daemon, stop
from tests.helpers.files import manifest_lines, stored_messages
from tests.helpers.logs import log_events
from tests.helpers.waits import wait_until

TAG = {"name": "tag-archives", "source": "mastodon", "kind": "hashtag", "tag": "archives",
       "credential": "fedi"}
TIMELINE = ["hashtag", "archives"]
DEADLINE = 30.0


def sockets(api: FakeAPI) -> list[Any]:
    return [r for r in api.log if r.endpoint == "mastodon/streaming"]


def upgraded(api: FakeAPI) -> list[Any]:
    return [r for r in sockets(api) if r.status == 101]


def updates(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    """The stream's stored update lines, parsed, in file order."""
    lines = [json.loads(m) for m in stored_messages(tmp_path / "data", name)]
    return [line for line in lines if line.get("event") == "update"]


def stored_ids(tmp_path: Path, name: str) -> list[str]:
    return [json.loads(line["payload"])["id"] for line in updates(tmp_path, name)]


def posted_on(api: FakeAPI, timeline: list[str], since: float = 0.0,
              until: float = float("inf")) -> list[str]:
    """Ids of the statuses posted on `timeline` between two monotonic times."""
    return [s["id"] for s in api.mastodon_posted()
            if timeline in s["timelines"] and since <= s["monotonic"] <= until]


def check_exactly_once(tmp_path: Path, api: FakeAPI, name: str, timeline: list[str],
                       since: float, until: float) -> list[str]:
    """No status stored twice; nothing stored that is not on the timeline; every status
    posted on it between `since` and `until` stored."""
    ids = stored_ids(tmp_path, name)
    assert len(ids) == len(set(ids)), "a status stored twice"
    assert set(ids) <= set(posted_on(api, timeline)), "a status from another timeline"
    missing = set(posted_on(api, timeline, since, until)) - set(ids)
    assert not missing, f"{len(missing)} statuses posted while the stream was set not stored"
    return ids


def posted_before_close(api: FakeAPI, socket: Any) -> float:
    """The monotonic time of the last status the socket carried: everything posted on its
    timelines until then was sent on it."""
    sent = {json.loads(json.loads(m)["payload"])["id"] for m in api.sent_messages(socket.conn)
            if b'"update"' in m}
    return max(s["monotonic"] for s in api.mastodon_posted() if s["id"] in sent)


async def daemon_with(tmp_path: Path, api: FakeAPI, *bodies: dict[str, Any], **config: Any
                      ) -> SfmdProcess:
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, api, **config))
    try:
        async with Api(tmp_path / "sfmd.sock") as client:
            for body in bodies:
                await client.ok("POST", "/streams", body, 201)
    except BaseException:
        proc.kill()  # a refused stream must not leave the daemon running
        raise
    return proc


async def subscribed(api: FakeAPI, count: int = 1) -> float:
    """Wait for `count` subscribes on the newest socket; when the last came (monotonic)."""
    def done() -> list[dict[str, Any]]:
        sockets_now = upgraded(api)
        if not sockets_now:
            return []
        subs = [s for s in api.mastodon_subscriptions(sockets_now[-1].conn)
                if s["type"] == "subscribe" and s.get("result") == "subscribed"]
        return subs if len(subs) >= count else []
    await wait_until(lambda: bool(done()), DEADLINE, f"{count} subscriptions")
    return float(done()[-1]["at"])


async def test_every_status_posted_on_the_tag_is_stored_once(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(mastodon_rate=40, mastodon_tags=["archives", "python"])
    proc = await daemon_with(tmp_path, fake_api, TAG)
    try:
        since = await subscribed(fake_api)
        await wait_until(lambda: upgraded(fake_api)[-1].sent_count >= 60, DEADLINE,
                         "60 statuses sent")
        await stop(proc)
        until = time.monotonic()
    finally:
        proc.kill()
    [socket] = upgraded(fake_api)
    # Byte for byte what the socket sent, in order.
    assert stored_messages(tmp_path / "data", "tag-archives") == fake_api.sent_messages(
        socket.conn)
    ids = check_exactly_once(tmp_path, fake_api, "tag-archives", TIMELINE, since,
                             posted_before_close(fake_api, socket))
    lines = [line for line in manifest_lines(tmp_path / "data", "tag-archives") if line["file"]]
    assert sum(line["tweets"] for line in lines) == len(ids)
    request = lines[-1]["provenance"]["requests"][-1]
    assert request["source"] == "mastodon" and request["credential"] == "fedi"
    assert request["params"] == {"stream": "hashtag", "tag": "archives"}
    assert request["instance"] == fake_api.mastodon_url
    assert socket.credential == "fedi" and until > since


async def test_a_stop_stores_every_frame_sent_until_the_server_heard_the_close(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    """At a thousand statuses a second some are always on the way, or read but not yet
    taken, when the daemon is told to stop: they are stored, not dropped by the close."""
    fake_api.configure(mastodon_rate=1000, mastodon_tags=["archives"])
    proc = await daemon_with(tmp_path, fake_api, TAG)
    try:
        await subscribed(fake_api)
        await wait_until(lambda: upgraded(fake_api)[-1].sent_count >= 500, DEADLINE,
                         "500 statuses sent")
        await stop(proc)
    finally:
        proc.kill()
    [socket] = upgraded(fake_api)
    stored = stored_messages(tmp_path / "data", "tag-archives")
    sent = fake_api.sent_messages(socket.conn)
    assert len(stored) >= 500
    assert stored == sent, f"{len(sent) - len(stored)} of {len(sent)} frames sent not stored"


async def test_three_streams_share_one_socket_and_a_new_tag_is_one_unsubscribe_one_subscribe(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(mastodon_rate=30, mastodon_tags=["archives", "python", "history"])
    local = {"name": "local", "source": "mastodon", "kind": "public:local", "credential": "fedi"}
    python = {**TAG, "name": "tag-python", "tag": "#Python"}
    proc = await daemon_with(tmp_path, fake_api, TAG, local, python)
    try:
        await subscribed(fake_api, 3)
        async with Api(tmp_path / "sfmd.sock") as client:
            status = await client.ok("GET", "/streams/tag-python")
            assert status["tag"] == "Python" and status["status"]["state"] == "streaming"
            assert status["status"]["connection"]["name"] == "mastodon@fedi"
            await wait_until(lambda: upgraded(fake_api)[-1].sent_count >= 40, DEADLINE,
                             "40 events sent")
            await client.ok("PATCH", "/streams/tag-python", {"tag": "history"})
            conn = upgraded(fake_api)[-1].conn
            await wait_until(lambda: len(fake_api.mastodon_subscriptions(conn)) >= 5, DEADLINE,
                             "the new tag subscribed")
            sent_at_change = upgraded(fake_api)[-1].sent_count
            await wait_until(lambda: upgraded(fake_api)[-1].sent_count >= sent_at_change + 40,
                             DEADLINE, "40 more events sent")
        await stop(proc)
    finally:
        proc.kill()
    assert len(sockets(fake_api)) == 1  # one socket for the account, throughout
    subs = [(s["type"], s["stream"], s.get("tag")) for s in fake_api.mastodon_subscriptions(conn)]
    assert sorted(subs[:3]) == sorted([("subscribe", "hashtag", "archives"),
                                       ("subscribe", "public:local", None),
                                       ("subscribe", "hashtag", "Python")])
    assert subs[3:5] == [("unsubscribe", "hashtag", "Python"), ("subscribe", "hashtag", "history")]
    # Each frame went to the stream whose channel its stream array names, and only there.
    sent = fake_api.sent_messages(conn)
    for name, wanted in (("tag-archives", ["hashtag", "archives"]), ("local", ["public:local"])):
        mine = [m for m in sent if json.loads(m)["stream"] == wanted]
        assert stored_messages(tmp_path / "data", name) == mine, name
    python_lines = [json.loads(m)["stream"] for m in stored_messages(tmp_path / "data",
                                                                     "tag-python")]
    assert {tuple(s) for s in python_lines} == {("hashtag", "Python"), ("hashtag", "history")}
    assert python_lines.index(["hashtag", "history"]) > 0  # the old tag came first
    # A post on both the tag and the local timeline is in both archives.
    both = set(stored_ids(tmp_path, "tag-archives")) & set(stored_ids(tmp_path, "local"))
    assert both, "no status stored by two streams"


def backfilled(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return [line for line in updates(tmp_path, name) if line.get("backfill")]


def gaps(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return [gap for line in manifest_lines(tmp_path / "data", name) for gap in line["gaps"]]


async def test_a_closed_a_stalled_and_a_refused_socket_lose_nothing(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(mastodon_rate=40, mastodon_tags=["archives"], mastodon_ping_interval=0.5)
    fake_api.script(
        {"endpoint": "mastodon/streaming", "close_after": 30},
        {"endpoint": "mastodon/streaming", "stall_after": 30, "duration": 30},
        {"endpoint": "mastodon/streaming", "status": 503},
    )
    proc = await daemon_with(tmp_path, fake_api, TAG, mastodon={"idle_timeout": 2})
    try:
        since = await subscribed(fake_api)
        # Closed, stalled (and found dead), refused once, then streaming again.
        await wait_until(lambda: len(upgraded(fake_api)) >= 3
                         and upgraded(fake_api)[-1].sent_count >= 40, DEADLINE,
                         "a fourth attempt streaming")
        await wait_until(lambda: not fake_api.pending_faults, DEADLINE, "every fault taken")
        # Two gaps: the close, and the stall with the refusal that followed it.
        await wait_until(
            lambda: sum(e["event"] == "fill_done" for e in log_events(tmp_path, "tag-archives"))
            >= 2, DEADLINE, "two gaps filled")
        await stop(proc)
    finally:
        proc.kill()
    last = upgraded(fake_api)[-1]
    check_exactly_once(tmp_path, fake_api, "tag-archives", TIMELINE, since,
                       posted_before_close(fake_api, last))
    assert backfilled(tmp_path, "tag-archives"), "nothing came by the fill"
    reasons = [(g["reason"], g["refilled"], g.get("unrecoverable")) for g in gaps(
        tmp_path, "tag-archives") if g["reason"] == "backoff"]
    assert reasons and all(r == ("backoff", "all", ["delete", "status.update"])
                           for r in reasons), reasons
    errors = [e["reason"] for e in log_events(tmp_path)
              if e["event"] == "disconnected" and e.get("connection") == "mastodon@fedi"]
    assert any("idle" in e for e in errors) and any("HTTP 503" in e for e in errors), errors


async def test_a_crash_and_a_restart_ten_seconds_later_lose_nothing(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(mastodon_rate=20, mastodon_tags=["archives", "python"])
    proc = await daemon_with(tmp_path, fake_api, TAG)
    try:
        since = await subscribed(fake_api)
        await wait_until(lambda: upgraded(fake_api)[-1].sent_count >= 20, DEADLINE,
                         "20 statuses sent")
        proc.signal(signal.SIGKILL)
        await proc.wait(10)
        killed = time.monotonic()
        # While sfmd is down: a late remote post, its id older than ids already stored.
        late = fake_api.mastodon_post(tags=["archives"], local=False, older_than_ms=1000,
                                      stream=False)
        await wait_until(lambda: time.monotonic() - killed >= 10, 15, "ten seconds down")
        down_posts = posted_on(fake_api, TIMELINE, killed)
        proc = await start_daemon(tmp_path, tmp_path / "sfmd.toml")
        await wait_until(lambda: len(upgraded(fake_api)) >= 2
                         and upgraded(fake_api)[-1].sent_count >= 20, DEADLINE,
                         "streaming again")
        await wait_until(lambda: any(e["event"] == "fill_done"
                                     for e in log_events(tmp_path, "tag-archives")),
                         DEADLINE, "the gap filled")
        await stop(proc)
    finally:
        proc.kill()
    ids = check_exactly_once(tmp_path, fake_api, "tag-archives", TIMELINE, since,
                             posted_before_close(fake_api, upgraded(fake_api)[-1]))
    assert late["id"] in ids and len(down_posts) > 10
    assert {line["payload"] and json.loads(line["payload"])["id"]
            for line in backfilled(tmp_path, "tag-archives")} >= set(down_posts)
    down = [g for g in gaps(tmp_path, "tag-archives") if g["reason"] == "daemon_down"]
    assert down and down[-1]["refilled"] == "all"


async def test_a_429_on_the_fill_waits_for_the_reset_then_finishes(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(mastodon_rate=20, mastodon_tags=["archives"])
    proc = await daemon_with(tmp_path, fake_api, TAG)
    try:
        since = await subscribed(fake_api)
        await wait_until(lambda: upgraded(fake_api)[-1].sent_count >= 10, DEADLINE, "streaming")
        async with Api(tmp_path / "sfmd.sock") as client:
            await client.ok("POST", "/streams/tag-archives/stop")
            stopped = time.monotonic()
            await wait_until(lambda: len(posted_on(fake_api, TIMELINE, stopped)) >= 30,
                             DEADLINE, "30 statuses posted while stopped")
            fake_api.script({"endpoint": "mastodon/timelines", "status": 429, "reset_in": 3})
            await client.ok("POST", "/streams/tag-archives/start")
            await wait_until(lambda: any(e["event"] == "fill_done"
                                         for e in log_events(tmp_path, "tag-archives")),
                             DEADLINE, "the fill done")
        await stop(proc)
    finally:
        proc.kill()
    requests = [r for r in fake_api.mastodon_requests() if "/timelines/" in r["path"]]
    limited = [i for i, r in enumerate(requests) if r["status"] == 429]
    assert limited, "no 429 answered"
    reset = requests[limited[0]]["reset"]
    after = requests[limited[0] + 1:]
    assert after and all(r["wall"] >= _unix(reset) for r in after), "a request before the reset"
    assert all(r["status"] == 200 for r in after)
    check_exactly_once(tmp_path, fake_api, "tag-archives", TIMELINE, since,
                       posted_before_close(fake_api, upgraded(fake_api)[-1]))


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_a_refused_token_fails_the_streams_with_a_reason_and_is_retried_gently(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(mastodon_rate=20, mastodon_tags=["archives"])
    fake_api.script(*[{"endpoint": "mastodon/streaming", "status": 401,
                       "body": "Invalid access token"}] * 3)
    proc = await daemon_with(tmp_path, fake_api, TAG)
    try:
        async with Api(tmp_path / "sfmd.sock") as client:
            async def state() -> dict[str, Any]:
                return (await client.ok("GET", "/streams/tag-archives"))["status"]
            deadline = time.monotonic() + DEADLINE
            status = await state()
            while status["state"] != "failed" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                status = await state()
            assert status["state"] == "failed", status
            assert "fedi" in status["last_error"] and "revoked" in status["last_error"]
            assert "SECRET" not in json.dumps(status)
            await subscribed(fake_api)  # the faults used up: connected
            await wait_until(lambda: upgraded(fake_api)[-1].sent_count >= 5, DEADLINE,
                             "streaming")
        await stop(proc)
    finally:
        proc.kill()
    attempts = [r.opened for r in sockets(fake_api)]
    waits = [b - a for a, b in itertools.pairwise(attempts)]
    # HTTP backoff: 0.4 s, then 0.8, then 1.6 (the test config's), never hammering.
    assert len(waits) == 3 and all(w >= 0.35 for w in waits) and waits[2] > waits[0], waits


async def test_a_fill_that_cannot_finish_says_what_it_refilled(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(mastodon_rate=40, mastodon_tags=["archives"])
    # One page of 40 at most: a gap of more than 40 statuses is refilled only in part.
    proc = await daemon_with(tmp_path, fake_api, TAG, mastodon={"fill_max_pages": 1})
    try:
        await subscribed(fake_api)
        await wait_until(lambda: upgraded(fake_api)[-1].sent_count >= 10, DEADLINE, "streaming")
        async with Api(tmp_path / "sfmd.sock") as client:
            await client.ok("POST", "/streams/tag-archives/stop")
            stopped = time.monotonic()
            await wait_until(lambda: len(posted_on(fake_api, TIMELINE, stopped)) >= 100,
                             DEADLINE, "100 statuses posted while stopped")
            await client.ok("POST", "/streams/tag-archives/start")
            await wait_until(lambda: any(e["event"] == "fill_incomplete"
                                         for e in log_events(tmp_path, "tag-archives")),
                             DEADLINE, "the fill cut short")
            status = (await client.ok("GET", "/streams/tag-archives"))["status"]
            assert "gap fill incomplete" in status["last_error"]
            assert "fill_max_pages" in status["last_error"]
            assert status["last_gap"]["refilled"] == "some"
        await stop(proc)
    finally:
        proc.kill()
    stopped_gaps = [g for g in gaps(tmp_path, "tag-archives") if g["reason"] == "stopped"]
    assert stopped_gaps and stopped_gaps[-1]["refilled"] == "some"
    assert stopped_gaps[-1]["unrecoverable"] == ["delete", "status.update"]
    ids = stored_ids(tmp_path, "tag-archives")
    assert len(ids) == len(set(ids))
    assert 0 < len(backfilled(tmp_path, "tag-archives")) <= 40


async def test_an_error_the_instance_sends_in_band_is_logged_and_shown(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(mastodon_rate=0)
    listed = {"name": "reading", "source": "mastodon", "kind": "list", "list": "999",
              "credential": "fedi"}  # a list the account does not own
    proc = await daemon_with(tmp_path, fake_api, listed)
    try:
        await wait_until(lambda: any(e["event"] == "stream_error" for e in log_events(tmp_path)),
                         DEADLINE, "the error logged")
        async with Api(tmp_path / "sfmd.sock") as client:
            status = (await client.ok("GET", "/streams/reading"))["status"]
        assert "Not authorized to stream this list" in (status["last_error"] or ""), status
        assert status["connection"]["errors"] == 1
        await stop(proc)
    finally:
        proc.kill()
