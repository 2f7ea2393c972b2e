"""What sfmd needs to know of a Jetstream event: when, which one, and whether it is content.

An event is `{"did", "time_us", "kind": "commit"|"identity"|"account", ...}`. `time_us` is
stamped by the instance that serves it, from its own clock: the same event has another
`time_us` on another instance, and an instance may reorder events when a replay catches up
with the live tail. So an event is known again by what it is (`identity`), never by its time.
"""

from __future__ import annotations

from typing import Any

import orjson

Identity = tuple[Any, ...]


class NotAnEvent(ValueError):
    """A frame that is not a JSON object with `did` and `time_us`."""


def parse(text: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise NotAnEvent(f"not JSON: {e}") from None
    if not isinstance(event, dict) or not isinstance(event.get("time_us"), int):
        raise NotAnEvent("not an event: no time_us")
    return event


def identity(event: dict[str, Any], text: bytes) -> Identity:
    """What makes this event itself, whoever serves it.

    A commit is one operation on one record at one revision of its repository; identity and
    account events carry the relay's sequence number. Anything else is known by its text.
    """
    did = event.get("did")
    kind = event.get("kind")
    if kind == "commit" and isinstance(event.get("commit"), dict):
        c = event["commit"]
        return (did, "c", c.get("rev"), c.get("collection"), c.get("rkey"), c.get("operation"))
    if kind in ("identity", "account") and isinstance(event.get(kind), dict):
        return (did, kind, event[kind].get("seq"))
    return (did, "text", text)


def count_commits(lines: list[bytes]) -> int:
    """The content items among stored lines (the manifest's `tweets`): commit events."""
    return sum(1 for line in lines if b'"kind":"commit"' in line)
