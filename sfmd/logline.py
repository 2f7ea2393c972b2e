"""One log event as a line a person reads: the console format and `sfmctl tail`.

The JSON log is for machines; `tail -f` on it buries the event mid-line. Here an event dict
becomes `TIME LEVEL WHO EVENT: REASON (... N more in S s)  key=value ...`: when, how bad,
which stream (or shared connection; `-` for the daemon itself), what happened and why first,
the details after. The daemon writes these lines with `log_format = "console"`, and
`sfmctl tail` renders the JSON log the same way, so both read alike.

Pure functions on plain dicts, importing nothing of sfmd: sfmctl stays light.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: Keys shown in the line's head, in this order, rather than as key=value.
HEAD = ("timestamp", "level", "stream", "connection", "event", "reason")
#: The keys that name who an event is about.
WHO = ("stream", "connection")
#: The order JSON lines carry their keys in: what a person scanning raw JSON looks for first.
JSON_FIRST = ("timestamp", "level", "event", "stream", "connection")
LEVELS = {"warning": "WARN", "critical": "CRIT", "exception": "ERROR"}
#: Width the WHO column is padded to, so events line up for most stream names.
WHO_WIDTH = 16


def who(event: Mapping[str, Any]) -> str | None:
    """The stream or shared connection an event is about, or None for the daemon's own."""
    for key in WHO:
        value = event.get(key)
        if isinstance(value, str):
            return value
    return None


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and '"' not in value else json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _moment(text: Any) -> str:
    """An ISO timestamp to the millisecond: 2026-12-05T00:09:35.024Z."""
    if not isinstance(text, str):
        return "-"
    if text.endswith("Z") and "." in text:
        head, fraction = text[:-1].split(".", 1)
        return f"{head}.{fraction[:3]}Z"
    return text


def render(event: Mapping[str, Any]) -> str:
    """The event as one readable line (an exception's traceback follows on its own lines)."""
    level = str(event.get("level", "info"))
    parts = [
        _moment(event.get("timestamp")),
        LEVELS.get(level, level.upper()).ljust(5),
        (who(event) or "-").ljust(WHO_WIDTH),
    ]
    what = str(event.get("event", "?"))
    reason = event.get("reason")
    if reason is not None:
        what += f": {reason}"
    repeated = event.get("repeated")
    if isinstance(repeated, int):
        what += f" (... {repeated} more in {_value(event.get('over', 0))} s)"
    parts.append(what)
    skip = {*HEAD, "repeated", "over", "exception"}
    details = [f"{key}={_value(value)}" for key, value in event.items() if key not in skip]
    line = " ".join(parts)
    if details:
        line += "  " + " ".join(details)
    exception = event.get("exception")
    if isinstance(exception, str) and exception:
        line += "\n" + exception.rstrip("\n")
    return line


def ordered(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event with `JSON_FIRST`'s keys first, the rest in their order (an update keeps
    a key where it first went)."""
    out = {key: event[key] for key in JSON_FIRST if key in event}
    out.update(event)
    return out
