"""The fake server's live settings: what every connection reads on each step.

They live apart from the server so that the mounted fakes, the pacing and the fault script can
read them without importing the server. `FakeAPIError` is the one error the control surface
(`/_fake/configure`, `/_fake/script`, `--script`) raises for a malformed input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class FakeAPIError(ValueError):
    """A fault script or setting is malformed; the message names the key."""


@dataclass
class Settings:
    """What every connection reads on each step, so `configure` takes effect at once."""

    message_size: int = 4800
    rate: float = 0.0
    total: int | None = None
    keepalive_interval: float = 30.0
    delete_every: int = 0
    limit_every: int = 0
    record_bytes: bool = False
    #: v2: every Nth filtered-stream message also matches the app's next rule.
    multi_match_every: int = 0
    #: v2: every Nth filtered-stream message names its rules without their tags.
    untagged_every: int = 0
    #: v2: the most rules one app may hold.
    max_rules: int = 1000
    #: v2: a refused rule answers HTTP 400 instead of a 2xx whose body holds `errors`.
    rules_errors_as_http: bool = False

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A checked copy with `changes` applied; a bad key or value raises FakeAPIError."""
        new = dataclasses.replace(self)
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise FakeAPIError(f"unknown setting {key!r}; known: {', '.join(sorted(names))}")
            setattr(new, key, _check_setting(key, value))
        return new


_BOOL_SETTINGS = frozenset({"record_bytes", "rules_errors_as_http"})
_COUNT_SETTINGS = frozenset(
    {
        "message_size",
        "total",
        "delete_every",
        "limit_every",
        "multi_match_every",
        "untagged_every",
        "max_rules",
    }
)


def _check_setting(key: str, value: Any) -> Any:
    if key in _BOOL_SETTINGS:
        if not isinstance(value, bool):
            raise FakeAPIError(f"{key} must be true or false")
        return value
    if key == "total" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FakeAPIError(f"{key} must be a number")
    if key in _COUNT_SETTINGS:
        if value != int(value) or value < 0:
            raise FakeAPIError(f"{key} must be a whole number >= 0")
        return int(value)
    if key == "keepalive_interval" and value <= 0:
        raise FakeAPIError("keepalive_interval must be > 0")
    if value < 0:
        raise FakeAPIError(f"{key} must be >= 0")
    return float(value)
