"""sfmctl's readable views take what they show from the STREAM JSON, so a source or a field
they were not written for still shows (a Mastodon stream's `tag`, a new status key)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sfmd.ctl import render_cluster, render_list, render_show, render_status, source_label

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


def status(**over: Any) -> dict[str, Any]:
    return {
        "state": "streaming", "since": "2026-12-05T11:59:00Z", "messages": 5, "tweets": 4,
        "bytes": 99, "reconnects": 0, "last_error": None, "current_file": None, **over,
    }


def test_the_source_label_comes_from_the_stream_not_a_list_of_sources() -> None:
    assert source_label({"source": "twitter", "api": "v2"}) == "twitter/v2"
    assert source_label({"source": "twitter", "api": "v1.1"}) == "twitter/v1.1"
    assert source_label({"source": "bluesky"}) == "bluesky"
    assert source_label({"source": "mastodon"}) == "mastodon"
    assert source_label({}) == "twitter"  # a daemon from before sources existed


def test_a_mastodon_stream_shows_its_own_fields_without_a_change_here() -> None:
    stream = {
        "name": "tag-archives", "source": "mastodon", "kind": "hashtag", "tag": "archives",
        "list": "", "credential": "research", "active": True, "isolation": "task",
        "status": status(resume_point="11223344", connection={
            "name": "mastodon@research", "state": "streaming", "messages": 9, "unrouted": 0,
            "errors": 0, "reconnects": 1, "rules": 2, "foreign_rules": [],
            "rules_problem": None,
        }),
    }
    shown = render_show(stream, NOW)
    keys = [line.split(":")[0] for line in shown.splitlines()]
    assert keys[:4] == ["name", "source", "kind", "tag"]
    assert re.search(r"^tag:\s+archives$", shown, re.M)
    assert re.search(r"^list:\s+-$", shown, re.M)
    assert re.search(r"^resume_point:\s+11223344$", shown, re.M)  # a status key it never saw
    assert re.search(r"^connection:\s+mastodon@research \(shared\), streaming, 9 messages",
                     shown, re.M)
    listed = render_list([stream]).splitlines()
    assert listed[1].split() == ["tag-archives", "mastodon", "hashtag", "streaming"]
    table = render_status([stream], None, NOW)
    assert "mastodon@research  streaming" in table and table.rstrip().endswith("tag-archives")


def test_a_v2_filter_shows_rules_problems_and_foreign_rules() -> None:
    connection = {
        "name": "v2-filter@alpha", "state": "backoff", "messages": 3, "unrouted": 1,
        "errors": 2, "reconnects": 4, "rules": 1,
        "foreign_rules": [{"id": "77", "value": "by hand", "tag": "other-tool"}],
        "rules_problem": "the rules API answered HTTP 503",
    }
    stream = {
        "name": "cats", "source": "twitter", "kind": "filter", "track": [], "follow": [],
        "locations": [], "people": [], "language": [], "credential": "alpha", "active": True,
        "isolation": "task", "api": "v2", "rules": [{"value": "cats, kittens"}],
        "people_ids": {}, "people_unresolved": [], "status": status(connection=connection),
    }
    shown = render_show(stream, NOW)
    assert re.search(r"^rules:\s+cats, kittens$", shown, re.M)
    assert re.search(r"^rules_problem:\s+the rules API answered HTTP 503$", shown, re.M)
    assert re.search(r"^foreign_rules:\s+by hand  \(id 77, tag other-tool\)$", shown, re.M)
    assert "people_ids" not in shown and not re.search(r"^track:", shown, re.M)

    lines = render_status([stream], None, NOW).splitlines()
    at = lines.index("") + 1
    assert lines[at].split()[0] == "CONNECTION"
    assert lines[at + 1].split() == ["v2-filter@alpha", "backoff", "3", "1", "2", "4", "1", "cats"]
    assert lines[at + 2] == "    rules problem: the rules API answered HTTP 503"
    assert lines[at + 3].startswith("    foreign rules: 1 held at the API")


def test_status_without_a_shared_connection_has_no_connection_table() -> None:
    stream = {"name": "s", "source": "twitter", "api": "v1.1", "kind": "sample",
              "status": status()}
    assert "CONNECTION" not in render_status([stream], None, NOW)


def test_a_process_isolated_stream_shows_supervisords_word() -> None:
    stream = {
        "name": "iso", "source": "twitter", "kind": "sample", "credential": "a",
        "active": True, "isolation": "process", "api": "v1.1", "rules": [], "track": [],
        "status": status(process={"program": "sfm-stream-iso", "state": "streaming",
                                  "pid": 4242}),
    }
    shown = render_show(stream, NOW)
    assert re.search(r"^process:\s+program sfm-stream-iso, state streaming, pid 4242$",
                     shown, re.M)
    assert not re.search(r"^(rules|track):", shown, re.M)  # a sample has neither


def test_status_names_the_host_only_in_cluster_mode() -> None:
    alone = {"name": "a", "source": "bluesky", "kind": "jetstream", "status": status()}
    assert "HOST" not in render_status([alone], None, NOW)
    there = {**alone, "host": "host-b"}
    nowhere = {**alone, "name": "b", "host": None, "status": status(state="stopped")}
    lines = render_status([there, nowhere], None, NOW).splitlines()
    assert lines[0].split()[:4] == ["NAME", "SOURCE", "KIND", "HOST"]
    assert lines[1].split()[:5] == ["a", "bluesky", "jetstream", "host-b", "streaming"]
    assert lines[2].split()[:5] == ["b", "bluesky", "jetstream", "-", "stopped"]


def test_cluster_view_lists_hosts_then_connections() -> None:
    answer = {
        "enabled": True, "host": "host-a", "lease_ttl": 15,
        "hosts": [
            {"host": "host-a", "started": "2026-12-05T11:00:00.000Z",
             "heartbeat": "2026-12-05T11:59:58.000Z", "draining": False, "connections": 2,
             "streams": 5},
            {"host": "host-b", "started": "2026-12-05T11:00:01.000Z",
             "heartbeat": "2026-12-05T11:59:57.000Z", "draining": True, "connections": 1,
             "streams": 1},
        ],
        "connections": [
            {"slot": "alpha", "host": "host-a", "epoch": 7, "placed": "host-a"},
            {"slot": "bluesky.sky", "host": "host-b", "epoch": 9, "placed": "host-a"},
        ],
    }
    lines = render_cluster(answer, NOW).splitlines()
    assert lines[0].split() == ["HOST", "STARTED", "HEARTBEAT", "CONNECTIONS", "STREAMS",
                                "DRAINING"]
    assert lines[1].split()[:3] == ["host-a", "(this", "host)"]
    assert "2s ago" in lines[1] and lines[1].endswith("no")
    assert lines[2].startswith("host-b") and lines[2].endswith("yes")
    assert lines[4].split() == ["CONNECTION", "HOST", "EPOCH", "PLACED"]
    assert lines[5].split() == ["alpha", "host-a", "7", "-"]
    assert lines[6].split() == ["bluesky.sky", "host-b", "9", "moving", "to", "host-a"]
    assert render_cluster({"enabled": False}).startswith("one host")
