"""Status ids and the lines sfmd stores for them.

Mastodon status ids are snowflakes: milliseconds since the epoch shifted left by 16 bits,
plus a sequence. So an id says when (roughly) a status was published, and "60 seconds of
id time before X" is `X - (60,000 << 16)`. A remote post fetched late gets an id from its
publish time, which can be older than ids already served: ids are ordered by publish time,
not by arrival.

A stored line is the streaming frame's text as received: `{"stream": [...], "event":
"update", "payload": "<status JSON as a string>"}`. A status fetched by the gap fill is
stored in the same shape plus `"backfill": true`, so one reader reads both.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

SHIFT = 16


def id_at(unix_ms: int) -> int:
    """The smallest status id the instance could give a status published at `unix_ms`."""
    return unix_ms << SHIFT


def ms_of(status_id: int) -> int:
    return status_id >> SHIFT


def overlap_ids(seconds: float) -> int:
    """`seconds` of id time."""
    return int(seconds * 1000) << SHIFT


class NotAFrame(ValueError):
    """A line or frame that is not a streaming frame sfmd understands."""


def parse_frame(text: bytes | str) -> dict[str, Any]:
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise NotAFrame(f"not JSON: {e}") from None
    if not isinstance(frame, dict):
        raise NotAFrame("not a JSON object")
    return frame


def update_id(frame: dict[str, Any]) -> int | None:
    """The status id of an `update` frame (streamed or filled); None for other events."""
    if frame.get("event") != "update":
        return None
    payload = frame.get("payload")
    try:
        status = orjson.loads(payload) if isinstance(payload, str) else payload
        return int(status["id"])
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        return None


def backfill_line(stream: list[str], status: dict[str, Any]) -> bytes:
    """A status fetched by the gap fill, as a line of the same shape as a streamed update.

    The payload is the status re-encoded compactly: REST answers carry the same Status
    entity as the streaming server's payload."""
    payload = json.dumps(status, ensure_ascii=False, separators=(",", ":"))
    line = {"stream": stream, "event": "update", "payload": payload, "backfill": True}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()
