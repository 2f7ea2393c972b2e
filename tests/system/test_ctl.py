"""`sfmctl` end to end: the real command against a real `sfmd run` and the fake API.

One daemon serves the whole module (start-up is the slow part), so every test uses its own
stream names, and the `site` fixture deletes every stream after each test and waits for its
connection to close. sfmctl runs as an asyncio subprocess so the loop keeps serving the fake
API (the daemon calls its users/lookup while sfmctl waits for an answer).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sfmd.credentials import load_credentials
from sfmd.ctl import boxes, build_parser, duration, rates, render_status, settings_from
from sfmd.fake import ConnectionRecord, FakeAPI, user_id_for
from tests.helpers.api import Api
from tests.helpers.config import write_credentials_file, write_daemon_config
from tests.helpers.daemon import SfmdProcess, start_daemon
from tests.helpers.fakeapi import live
from tests.helpers.waits import wait_until

#: The daemon tests share the module's event loop, where the module's fake API lives.
on_daemon = pytest.mark.asyncio(loop_scope="module")

DEADLINE = 10.0


@dataclass
class Site:
    """The module's daemon, its fake API and where they live."""

    root: Path
    config: Path
    socket: Path
    api: FakeAPI
    proc: SfmdProcess


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    root = tmp_path_factory.mktemp("ctl")
    credentials_file = write_credentials_file(root)
    api = FakeAPI(
        load_credentials(credentials_file), rate=50, message_size=600, keepalive_interval=0.25
    )
    await api.start()
    config = write_daemon_config(root, api)
    proc = await start_daemon(root, config)
    try:
        yield Site(root, config, root / "sfmd.sock", api, proc)
    finally:
        proc.signal(signal.SIGTERM)
        code = await proc.wait(10)
        await api.stop()
        assert code == 0, proc.stderr


@pytest_asyncio.fixture(loop_scope="module")
async def site(module_site: Site) -> AsyncIterator[Site]:
    """The module's daemon, left with no stream and no open connection, whatever the test did.

    The cleanup talks to the socket in-process: it is not what is under test, and it is fast.
    """
    yield module_site
    async with Api(module_site.socket) as api:
        for stream in (await api.ok("GET", "/streams"))["streams"]:
            await api.ok("DELETE", f"/streams/{stream['name']}", status=204)
    await wait_until(lambda: not live(module_site.api), DEADLINE, "every connection to close")


async def sfmctl(
    site: Site | None,
    *args: str,
    env: dict[str, str] | None = None,
) -> Result:
    """Run the real command, pointed at the site's daemon with --socket unless site is None.

    SFMCTL_SOCKET is taken out of the environment so only what a test says counts."""
    argv = [*args]
    if site is not None:
        argv = ["--socket", str(site.socket), *argv]
    base = {k: v for k, v in os.environ.items() if k != "SFMCTL_SOCKET"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfmd.ctl", *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base, **(env or {})},
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def streaming(api: FakeAPI, credential: str) -> Callable[[], ConnectionRecord | None]:
    """The credential's open stream connection, once the fake API has answered it."""

    def find() -> ConnectionRecord | None:
        for r in live(api):
            if r.credential == credential and r.status == 200:
                return r
        return None

    return find


async def connection(api: FakeAPI, credential: str) -> ConnectionRecord:
    find = streaming(api, credential)
    await wait_until(lambda: find() is not None, DEADLINE, f"a connection on {credential}")
    record = find()
    assert record is not None
    return record


def assert_refused(result: Result, code: str, *words: str) -> None:
    assert result.code == 1, result
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("sfmctl: ") and line.endswith(f"({code})"), line
    for word in words:
        assert word in line, (word, line)


# --- every verb, end to end ------------------------------------------------------------------


@on_daemon
async def test_filter_stream_life_add_show_list_stop_start_delete(site: Site) -> None:
    added = await sfmctl(
        site, "add", "lib", "--track", "public library", "--track", "archive, books",
        "--follow", "12,34", "--locations", "-74,40,-73,41", "--locations=1.5,2,3,4",
        "--language", "en", "--credential", "alpha",
    )
    assert added.code == 0, added
    assert added.out.startswith("lib: added (filter, active,"), added.out
    record = await connection(site.api, "alpha")
    assert record.endpoint == "filter"
    assert record.params["track"] == "public library,archive,books"
    assert record.params["follow"] == "12,34"
    assert record.params["locations"] == "-74,40,-73,41,1.5,2,3,4"
    assert record.params["language"] == "en"

    shown = (await sfmctl(site, "--json", "show", "lib")).json()
    assert shown["track"] == ["public library", "archive", "books"]
    assert shown["locations"] == [[-74, 40, -73, 41], [1.5, 2, 3, 4]]
    assert shown["active"] is True and shown["isolation"] == "task"
    text = await sfmctl(site, "show", "lib")
    assert text.code == 0
    assert re.search(r"^track:\s+public library, archive, books$", text.out, re.M), text.out
    assert re.search(r"^locations:\s+-74,40,-73,41  1.5,2,3,4$", text.out, re.M), text.out
    assert re.search(r"^credential:\s+alpha$", text.out, re.M), text.out

    listed = await sfmctl(site, "list")
    assert listed.code == 0
    assert listed.out.splitlines()[0].split() == ["NAME", "SOURCE", "KIND", "STATE"]
    assert listed.out.splitlines()[1].split() == ["lib", "twitter/v1.1", "filter", "streaming"]

    stopped = await sfmctl(site, "--json", "stop", "lib")
    assert stopped.code == 0
    assert stopped.json()["active"] is False
    assert stopped.json()["status"]["state"] == "stopped"
    await wait_until(lambda: record.closed is not None, DEADLINE, "the stop to close it")

    started = await sfmctl(site, "start", "lib")
    assert started.code == 0 and started.out.startswith("lib: started"), started
    again = await connection(site.api, "alpha")
    assert again.conn > record.conn and again.params == record.params

    deleted = await sfmctl(site, "delete", "lib")
    assert deleted.code == 0 and "deleted" in deleted.out
    await wait_until(lambda: again.closed is not None, DEADLINE, "the delete to close it")
    assert_refused(await sfmctl(site, "show", "lib"), "not_found", "lib")
    assert_refused(await sfmctl(site, "delete", "lib"), "not_found")


@on_daemon
async def test_sample_inactive_then_started(site: Site) -> None:
    created = await sfmctl(site, "--json", "sample", "sam", "--credential", "beta", "--inactive")
    assert created.code == 0, created
    body = created.json()
    assert (body["kind"], body["active"], body["credential"]) == ("sample", False, "beta")
    assert streaming(site.api, "beta")() is None
    assert (await sfmctl(site, "start", "sam")).code == 0
    record = await connection(site.api, "beta")
    assert record.endpoint == "sample"


@on_daemon
async def test_modify_sends_only_what_is_given_and_clears_with_empty(site: Site) -> None:
    assert (await sfmctl(site, "add", "mod", "--track", "a", "--credential", "alpha")).code == 0
    first = await connection(site.api, "alpha")
    assert first.params["track"] == "a"

    changed = await sfmctl(site, "--json", "modify", "mod", "--track", "b,c")
    assert changed.code == 0, changed
    assert changed.json()["track"] == ["b", "c"]
    await wait_until(lambda: first.closed is not None, DEADLINE, "the old connection to close")
    second = await connection(site.api, "alpha")
    assert second.params["track"] == "b,c"

    cleared = await sfmctl(site, "--json", "modify", "mod", "--track", "", "--follow", "99")
    assert cleared.code == 0, cleared
    body = cleared.json()
    assert body["track"] == [] and body["follow"] == ["99"] and body["credential"] == "alpha"
    await wait_until(lambda: second.closed is not None, DEADLINE, "the second to close")
    third = await connection(site.api, "alpha")
    assert "track" not in third.params and third.params["follow"] == "99"

    nothing = await sfmctl(site, "modify", "mod")
    assert nothing.code == 2 and "nothing to change" in nothing.err


@on_daemon
async def test_people_are_looked_up_and_unknown_ones_warned(site: Site) -> None:
    added = await sfmctl(
        site, "add", "ppl", "--people", "alice,@bob", "--people", "nosuchcarol",
        "--credential", "beta",
    )
    assert added.code == 0, added
    assert "not found on Twitter: nosuchcarol" in added.err
    record = await connection(site.api, "beta")
    ids = set(record.params["follow"].split(","))
    assert ids == {str(user_id_for("alice")), str(user_id_for("bob"))}
    shown = await sfmctl(site, "show", "ppl")
    assert f"alice (id {user_id_for('alice')})" in shown.out
    assert "nosuchcarol (not found)" in shown.out

    changed = await sfmctl(site, "--json", "modify", "ppl", "--people", "nosuchdave,alice")
    assert changed.code == 0
    assert "not found on Twitter: nosuchdave" in changed.err
    assert changed.json()["people_unresolved"] == ["nosuchdave"]
    quiet = await sfmctl(site, "modify", "ppl", "--language", "en")
    assert quiet.code == 0 and "not found" in quiet.err  # still unresolved, still said


@on_daemon
async def test_restart_reconnects_and_keeps_the_counters(site: Site) -> None:
    assert (await sfmctl(site, "add", "rst", "--track", "r", "--credential", "alpha")).code == 0
    first = await connection(site.api, "alpha")
    await wait_until(lambda: first.sent_count >= 20, DEADLINE, "some messages")
    before = (await sfmctl(site, "--json", "show", "rst")).json()["status"]["messages"]
    assert before > 0
    restarted = await sfmctl(site, "restart", "rst")
    assert restarted.code == 0, restarted
    assert restarted.out.startswith("rst: restarted (filter, active,"), restarted.out
    assert first.closed is not None  # stopped before the answer came
    second = await connection(site.api, "alpha")
    assert second.conn > first.conn and second.params == first.params
    after = (await sfmctl(site, "--json", "show", "rst")).json()["status"]
    assert after["messages"] >= before  # totals for the daemon's life, not the connection's

    # An inactive stream is started by restart, as supervisorctl does.
    assert (await sfmctl(site, "stop", "rst")).code == 0
    await wait_until(lambda: second.closed is not None, DEADLINE, "the stop")
    again = await sfmctl(site, "--json", "restart", "rst")
    assert again.code == 0 and again.json()["active"] is True
    await connection(site.api, "alpha")
    assert_refused(await sfmctl(site, "restart", "nosuch"), "not_found", "nosuch")


async def files_published(site: Site, name: str) -> int:
    async with Api(site.socket) as api:
        _, page = await api.call("GET", "/metrics")
    line = f'sfmd_stream_files_published_total{{stream="{name}"}} '
    return int(next(row for row in page.splitlines() if row.startswith(line)).split()[-1])


@on_daemon
async def test_counters_survive_a_stop_and_a_start(site: Site) -> None:
    assert (await sfmctl(site, "sample", "cnt", "--credential", "beta")).code == 0
    first = await connection(site.api, "beta")
    await wait_until(lambda: first.sent_count >= 20, DEADLINE, "some messages")
    assert (await sfmctl(site, "stop", "cnt")).code == 0
    stopped = (await sfmctl(site, "--json", "show", "cnt")).json()["status"]
    assert stopped["messages"] > 0 and stopped["bytes"] > 0
    published = await files_published(site, "cnt")
    assert published >= 1  # the stop published the open file
    assert (await sfmctl(site, "start", "cnt")).code == 0
    second = await connection(site.api, "beta")
    await wait_until(lambda: second.sent_count >= 20, DEADLINE, "more messages")
    assert await files_published(site, "cnt") >= published  # a Prometheus counter: no reset
    seen: list[dict[str, Any]] = []

    async def grown() -> bool:
        seen.append((await sfmctl(site, "--json", "show", "cnt")).json()["status"])
        return seen[-1]["messages"] > stopped["messages"]

    async with asyncio.timeout(DEADLINE):
        while not await grown():
            pass
    assert all(s["messages"] >= stopped["messages"] for s in seen), seen
    assert all(s["bytes"] >= stopped["bytes"] for s in seen), seen


@on_daemon
async def test_health_is_one_line_and_exit_0_when_nothing_failed(site: Site) -> None:
    assert (await sfmctl(site, "sample", "hl", "--credential", "beta")).code == 0
    assert (await sfmctl(site, "sample", "idle", "--credential", "alpha", "--inactive")).code == 0
    await connection(site.api, "beta")
    health = await sfmctl(site, "health")
    assert health.code == 0, health
    assert re.fullmatch(r"sfmd ok: 2 streams \((1 streaming|1 connecting), 1 stopped\), up \S+\n",
                        health.out), health.out
    as_json = (await sfmctl(site, "--json", "health")).json()
    assert as_json["status"] == "ok" and as_json["failed"] == []
    assert sum(as_json["states"].values()) == 2


# --- refusals: the daemon's message, exit 1 --------------------------------------------------


@on_daemon
async def test_second_active_stream_on_a_credential_is_refused_with_the_holder(
    site: Site,
) -> None:
    assert (await sfmctl(site, "add", "one", "--track", "x", "--credential", "alpha")).code == 0
    second = await sfmctl(site, "add", "two", "--track", "y", "--credential", "alpha")
    assert_refused(second, "credential_in_use", "one")
    as_json = await sfmctl(site, "--json", "add", "two", "--track", "y", "--credential", "alpha")
    assert as_json.code == 1 and as_json.json()["error"] == "credential_in_use"
    taken = await sfmctl(site, "add", "one", "--track", "z")
    assert_refused(taken, "name_taken", "one", "sfmctl modify one")
    assert "PATCH" not in taken.err  # what the user typed was add, and modify is the fix
    names = [s["name"] for s in (await sfmctl(site, "--json", "list")).json()["streams"]]
    assert names == ["one"]  # a refused request changed nothing


@on_daemon
async def test_invalid_settings_are_refused_with_the_rule(site: Site) -> None:
    cases = [
        (["add", "bare", "--credential", "alpha"], "track"),
        (["add", "Bad Name", "--track", "x"], "name"),
        (["add", "lang", "--track", "x", "--language", "e"], "language"),
        (["add", "who", "--track", "x", "--credential", "gamma"], "gamma"),
        (["modify", "nobody", "--track", "x"], "nobody"),
    ]
    results = await asyncio.gather(*(sfmctl(site, *argv) for argv, _ in cases))
    for (argv, word), result in zip(cases, results, strict=True):
        assert_refused(result, "not_found" if argv[0] == "modify" else "invalid", word)
    assert (await sfmctl(site, "--json", "list")).json() == {"streams": []}


@on_daemon
async def test_usage_errors_exit_2_without_calling_the_daemon(site: Site) -> None:
    argvs = [
        [],
        ["bogus"],
        ["add"],
        ["add", "x", "--locations", "1,2,3"],
        ["add", "x", "--locations", "1,2,3,north"],
        ["add", "x", "--isolation", "thread"],
        ["status", "--interval", "0"],
        ["sample", "x", "--track", "a"],
    ]
    results = await asyncio.gather(*(sfmctl(site, *argv) for argv in argvs))
    for argv, result in zip(argvs, results, strict=True):
        assert result.code == 2, (argv, result)
        assert "usage:" in result.err, (argv, result.err)
    bad_config = await sfmctl(None, "--config", str(site.root / "missing.toml"), "list")
    assert bad_config.code == 2 and "missing.toml" in bad_config.err


# --- finding the socket ----------------------------------------------------------------------


@on_daemon
async def test_socket_comes_from_option_config_env_or_default(site: Site) -> None:
    gone = str(site.root / "gone.sock")
    config, sock = str(site.config), str(site.socket)
    by_config, by_env, config_beats_env, option_beats_config, after_verb, default = (
        await asyncio.gather(
            sfmctl(None, "--config", config, "list"),
            sfmctl(None, "list", env={"SFMCTL_SOCKET": sock}),
            sfmctl(None, "--config", config, "list", env={"SFMCTL_SOCKET": gone}),
            sfmctl(None, "--socket", gone, "--config", config, "list"),
            sfmctl(None, "list", "--json", "--socket", sock),
            sfmctl(None, "list"),
        )
    )
    assert by_config.code == 0 and by_config.out.strip() == "no streams", by_config
    assert by_env.code == 0 and by_env.out.strip() == "no streams", by_env
    assert config_beats_env.code == 0, config_beats_env
    assert option_beats_config.code == 1, option_beats_config
    assert gone in option_beats_config.err and "is sfmd running?" in option_beats_config.err
    assert after_verb.code == 0 and after_verb.json() == {"streams": []}, after_verb
    if not os.path.exists("/run/sfm/sfmd.sock"):
        assert default.code == 1 and "/run/sfm/sfmd.sock" in default.err, default


@on_daemon
async def test_health_fails_when_nobody_answers(tmp_path: Path) -> None:
    health = await sfmctl(None, "--socket", str(tmp_path / "none.sock"), "health")
    assert health.code == 1 and "cannot reach sfmd" in health.err


async def test_a_socket_nobody_listens_on_is_reported(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # the file stays, nobody listens: a daemon that died
    result = await sfmctl(None, "--socket", str(stale), "status")
    assert result.code == 1
    assert str(stale) in result.err and "nothing is listening" in result.err


# --- status ----------------------------------------------------------------------------------


@on_daemon
async def test_status_table_shows_a_streaming_row_with_a_rate(site: Site) -> None:
    assert (await sfmctl(site, "add", "tab", "--track", "t", "--credential", "alpha")).code == 0
    assert (await sfmctl(site, "sample", "off", "--credential", "beta", "--inactive")).code == 0
    await connection(site.api, "alpha")
    result = await sfmctl(site, "status", "--interval", "0.3")
    assert result.code == 0, result
    header, *rows = result.out.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "NAME", "SOURCE", "KIND", "STATE", "SINCE", "TWEETS", "MSG/S", "RECONNECTS",
        "CURRENT FILE",
    ]
    cells = {row.split()[0]: row.split() for row in rows}
    _, source, kind, state, since, tweets, rate, reconnects, current = cells["tab"]
    assert (source, kind, state) == ("twitter/v1.1", "filter", "streaming")
    assert re.fullmatch(r"\d+s|\d+m\d\ds", since), since
    assert int(tweets) >= 0 and int(reconnects) == 0
    assert float(rate) > 0, result.out  # the fake API sends 50 messages a second
    assert current.startswith("tab-") and current.endswith(".jsonl.gz.part"), current
    assert cells["off"][1:4] == ["twitter/v1.1", "sample", "stopped"] and cells["off"][6] == "-"

    once = await sfmctl(site, "status", "--once", "tab")
    assert once.code == 0 and len(once.out.splitlines()) == 2
    assert once.out.splitlines()[1].split()[6] == "-"
    assert_refused(await sfmctl(site, "status", "--once", "nosuch"), "not_found", "nosuch")
    as_json = (await sfmctl(site, "--json", "status")).json()
    assert {s["name"] for s in as_json["streams"]} == {"tab", "off"}


@on_daemon
async def test_status_shows_the_last_error_under_a_troubled_row(site: Site) -> None:
    # Enough refusals to keep it in backoff (0.4 s, 0.8 s, then 1.6 s waits) while we look.
    site.api.script(*[{"status": 503, "endpoint": "filter"}] * 6)
    assert (await sfmctl(site, "add", "bad", "--track", "t", "--credential", "alpha")).code == 0
    seen: list[str] = []

    codes: list[int] = []

    async def troubled() -> bool:
        shown = await sfmctl(site, "status", "--once")
        seen.append(shown.out)
        codes.append(shown.code)
        return "last error:" in shown.out

    async with asyncio.timeout(DEADLINE):
        while not await troubled():
            pass
    lines = seen[-1].splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("bad "))
    assert lines[row].split()[3] in ("backoff", "failed")
    assert lines[row + 1].startswith("    last error:") and "503" in lines[row + 1], lines
    assert codes[-1] == 1  # a troubled stream: monitoring sees it in the exit code
    await site.api.reset()  # drop the faults left, so no later test meets them


# --- the pure parts --------------------------------------------------------------------------


def test_durations_read_like_uptimes() -> None:
    assert [duration(s) for s in (0, 59, 192, 3600 + 300, 2 * 86400 + 3600 * 4)] == [
        "0s", "59s", "3m12s", "1h05m", "2d04h"
    ]
    assert duration(-5) == "0s"  # a clock step backwards never shows a negative age


def test_boxes_take_one_or_several_boxes() -> None:
    assert boxes("-74,40,-73,41") == [[-74, 40, -73, 41]]
    assert boxes("1 2 3 4, 5.5,6,7,8") == [[1, 2, 3, 4], [5.5, 6, 7, 8]]
    assert boxes("") == []


def test_rates_skip_new_and_restarted_streams() -> None:
    def s(name: str, messages: int) -> dict[str, Any]:
        return {"name": name, "status": {"messages": messages}}

    got = rates([s("a", 10), s("b", 50)], [s("a", 30), s("b", 5), s("c", 9)], 2.0)
    assert got == {"a": 10.0}


def test_status_table_without_streams_and_with_an_error() -> None:
    assert render_status([], None) == "no streams"
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    stream = {
        "name": "x", "kind": "sample",
        "status": {
            "state": "failed", "since": (now - timedelta(seconds=75)).isoformat(),
            "messages": 3, "tweets": 2, "bytes": 9, "reconnects": 4,
            "last_error": "HTTP 401", "current_file": None,
        },
    }
    lines = render_status([stream], None, now).splitlines()
    assert lines[1].split() == ["x", "twitter", "sample", "failed", "1m15s", "2", "-", "4", "-"]
    assert lines[2] == "    last error: HTTP 401"


def test_v2_options_become_api_and_rules() -> None:
    args = build_parser().parse_args(
        ["add", "cats", "--api", "v2", "--rule", "cats has:images, ok", "--rule", "#caturday"]
    )
    assert settings_from(args) == {
        "api": "v2", "rules": [{"value": "cats has:images, ok"}, {"value": "#caturday"}]
    }
    cleared = build_parser().parse_args(["modify", "cats", "--rule", ""])
    assert settings_from(cleared) == {"rules": []}
