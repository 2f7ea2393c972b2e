"""The v2 filters' router, in process: each message to every member its rules name."""

from __future__ import annotations

import json
from typing import Any

from sfmd.archive import ArchiveError
from sfmd.registry import validate_stream
from sfmd.sources.twitter.multiplex import Member, Router


class Archive:
    """Takes what the router hands it; refuses everything once `full`."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.tweets = 0
        self.full = False

        self.events: list[tuple[str, Any]] = []

    async def write(self, messages: list[bytes], tweets: int) -> None:
        if self.full:
            raise ArchiveError("disk full")
        self.lines += messages
        self.tweets += tweets

    def streaming(self) -> None:
        self.events.append(("streaming", None))

    def not_streaming(self, reason: str, error: str | None = None) -> None:
        self.events.append(("not_streaming", reason))

    def asking(self, what: dict[str, Any]) -> None:
        self.events.append(("asking", what))


def router_with(*names: str) -> tuple[Router, dict[str, Any]]:
    router, archives = Router(), {}
    for name in names:
        archives[name] = Archive()
        spec = validate_stream({"name": name, "kind": "filter", "api": "v2",
                                "rules": [{"value": name}], "credential": "alpha"})
        router.members[name] = Member(spec, archives[name])  # type: ignore[arg-type]
    return router, archives


def message(*rules: dict[str, str]) -> bytes:
    return json.dumps({"data": {"id": "1"}, "matching_rules": list(rules)}).encode()


async def test_messages_are_routed_by_rule_id_and_a_message_for_two_goes_to_both() -> None:
    router, archives = router_with("a", "b")
    router.routes = {"10": ("a",), "20": ("b",), "30": ("a", "b")}
    batch = [message({"id": "10"}), message({"id": "30"}), message({"id": "20"})]
    await router.write(batch, 3)
    assert archives["a"].lines == [batch[0], batch[1]]
    assert archives["b"].lines == [batch[1], batch[2]]
    assert (router.members["a"].messages, archives["a"].tweets) == (2, 2)


async def test_an_id_not_known_yet_is_routed_by_its_tag() -> None:
    router, archives = router_with("a", "b")
    await router.write([message({"id": "99", "tag": "a,b"})], 1)
    assert archives["a"].lines and archives["b"].lines


async def test_messages_nobody_wants_are_counted_unrouted() -> None:
    router, archives = router_with("a")
    router.routes = {"10": ("gone",)}
    await router.write([message({"id": "10"}), b'{"errors":[{"title":"x"}]}', b"junk"], 0)
    assert router.unrouted == 3 and archives["a"].lines == []


async def test_one_member_s_full_disk_does_not_stop_the_others() -> None:
    router, archives = router_with("a", "b")
    router.routes = {"10": ("a", "b")}
    archives["a"].full = True
    await router.write([message({"id": "10"})], 1)
    assert archives["b"].lines and router.members["a"].refused == 1
    assert router.members["a"].error == "disk full"
    archives["a"].full = False
    await router.write([message({"id": "10"})], 1)
    assert router.members["a"].error is None and len(archives["a"].lines) == 1


def test_the_connection_s_coverage_is_every_member_s() -> None:
    router, archives = router_with("a", "b")
    router.ids = {"a": "10"}
    router.asking({"source": "twitter", "endpoint": "http://h/2/tweets/search/stream"})
    router.streaming()
    router.not_streaming("backoff", "HTTP 503")
    assert archives["a"].events == [
        ("asking", {"source": "twitter", "endpoint": "http://h/2/tweets/search/stream",
                    "rules": [{"value": "a", "id": "10"}]}),
        ("streaming", None),
        ("not_streaming", "backoff"),
    ]
    assert archives["b"].events[0][1]["rules"] == [{"value": "b", "id": None}]


def test_a_member_that_joins_a_live_connection_collects_at_once() -> None:
    router, _ = router_with("a")
    router.streaming()
    late, _ = router_with("c")
    router.members["c"] = late.members["c"]
    router.joined("c")
    events = late.members["c"].archive.events  # type: ignore[attr-defined]
    assert [kind for kind, _ in events] == ["streaming", "asking"]
