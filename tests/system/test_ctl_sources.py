"""`sfmctl`'s readable output tells every source apart: v1.1 from v2 from Bluesky, the shared
v2 connection in `status`, and every setting a stream holds in `show`.

A real `sfmd run` against the fake API (Twitter v1.1, v2 and a Jetstream instance), and the
real `sfmctl` as a subprocess, run in a worker thread so the loop keeps serving the fake API.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.daemon import Teardown, running_daemon

DEADLINE = 15.0


async def sfmctl(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sfmd.ctl", "--socket", str(socket_path), *args]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=30, check=False
    )


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


async def test_status_list_and_show_tell_every_source_apart(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    sock = tmp_path / "sfmd.sock"
    async with running_daemon(tmp_path, fake_api, Teardown.MUST_STOP):
        for args in (
            ("add", "news", "--track", "public library", "--credential", "alpha"),
            ("add", "cats", "--api", "v2", "--rule", "cats has:images", "--rule", "#caturday",
             "--credential", "beta"),
            ("add", "dogs", "--api", "v2", "--rule", "dogs, puppies", "--credential", "beta"),
            ("sample", "v2s", "--api", "v2", "--credential", "alpha"),
            ("add", "posts", "--source", "bluesky", "--collection", "app.bsky.feed.post"),
        ):
            done = await sfmctl(sock, *args)
            assert done.returncode == 0, done

        async with Api(sock) as api, asyncio.timeout(DEADLINE):
            while True:  # until every stream streams; the deadline fails the test
                streams = (await api.ok("GET", "/streams"))["streams"]
                if all(s["status"]["state"] == "streaming" for s in streams):
                    break
                await asyncio.sleep(0.05)

        status = await sfmctl(sock, "status", "--once")
        assert status.returncode == 0, status
        table, connections = status.stdout.split("\n\n")
        header, *rows = table.splitlines()
        assert cells(header)[:4] == ["NAME", "SOURCE", "KIND", "STATE"]
        shown = {cells(row)[0]: cells(row)[1:4] for row in rows}
        assert shown == {
            "cats": ["twitter/v2", "filter", "streaming"],
            "dogs": ["twitter/v2", "filter", "streaming"],
            "news": ["twitter/v1.1", "filter", "streaming"],
            "posts": ["bluesky", "jetstream", "streaming"],
            "v2s": ["twitter/v2", "sample", "streaming"],
        }
        # The shared v2 connection has a table of its own, naming the streams it serves.
        conn_header, conn_row = connections.strip().splitlines()
        assert cells(conn_header) == [
            "CONNECTION", "STATE", "MESSAGES", "UNROUTED", "ERRORS", "RECONNECTS", "RULES",
            "STREAMS",
        ]
        name, state, messages, _, _, _, rules, members = cells(conn_row)
        assert (name, state, rules, members) == ("v2-filter@beta", "streaming", "3", "cats,dogs")
        assert int(messages) > 0

        listed = await sfmctl(sock, "list")
        assert listed.returncode == 0, listed
        assert [cells(line) for line in listed.stdout.splitlines()] == [
            ["NAME", "SOURCE", "KIND", "STATE"],
            ["cats", "twitter/v2", "filter", "streaming"],
            ["dogs", "twitter/v2", "filter", "streaming"],
            ["news", "twitter/v1.1", "filter", "streaming"],
            ["posts", "bluesky", "jetstream", "streaming"],
            ["v2s", "twitter/v2", "sample", "streaming"],
        ]

        cats = (await sfmctl(sock, "show", "cats")).stdout
        assert re.search(r"^source:\s+twitter$", cats, re.M), cats
        assert re.search(r"^api:\s+v2$", cats, re.M), cats
        # Every rule on a line of its own (a rule may hold commas), under `rules:`.
        assert re.search(r"^rules:\s+cats has:images\n\s+#caturday$", cats, re.M), cats
        assert re.search(r"^connection:\s+v2-filter@beta \(shared\), streaming, ", cats, re.M)
        assert not re.search(r"^(track|follow|locations|people|language):", cats, re.M), cats
        dogs = (await sfmctl(sock, "show", "dogs")).stdout
        assert re.search(r"^rules:\s+dogs, puppies$", dogs, re.M), dogs

        news = (await sfmctl(sock, "show", "news")).stdout
        assert re.search(r"^api:\s+v1\.1$", news, re.M), news
        assert re.search(r"^track:\s+public library$", news, re.M), news
        assert not re.search(r"^(rules|connection):", news, re.M), news

        posts = (await sfmctl(sock, "show", "posts")).stdout
        assert re.search(r"^source:\s+bluesky$", posts, re.M), posts
        assert re.search(r"^collections:\s+app\.bsky\.feed\.post$", posts, re.M), posts
        assert re.search(r"^dids:\s+\(all\)$", posts, re.M), posts
        assert re.search(r"^endpoint:\s+\(the configured jetstream_url\)$", posts, re.M), posts
        assert not re.search(r"^(api|credential|track):", posts, re.M), posts
