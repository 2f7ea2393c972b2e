"""What the fake API's v1.1 and v2 halves share: settings, fault scripts, connection records,
the handle on an open stream, and message pacing.

It lives apart so that `fakeapi` (the server and its v1.1 half) can import `fakeapi_v2`
without a cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

#: Bytes per body write when streaming flat out: big writes keep the server off the profile.
BLOCK_BYTES = 256 * 1024

#: Faults that fire after N messages on a connection; a fault takes at most one of these.
TRIGGERS = (
    "cut_after",
    "stall_after",
    "disconnect_after",
    "oversized_after",
    "malformed_after",
    "error_after",
)
V1_STREAMS = frozenset({"filter", "sample"})
V2_STREAMS = frozenset({"v2/filter", "v2/sample"})
#: What a fault's "endpoint" may name: one endpoint, or "stream" / "v2/stream" for either.
ENDPOINTS = frozenset({"stream", "users/lookup", "v2/stream", "v2/rules", *V1_STREAMS, *V2_STREAMS})
DISCONNECT_SHAPES = ("full", "type_only")
_FAULT_KEYS = frozenset(
    {
        *TRIGGERS,
        "status",
        "body",
        "headers",
        "code",
        "size",
        "delay",
        "endpoint",
        "disconnect_shape",
        "reset_in",
    }
)


class FakeAPIError(ValueError):
    """A fault script or setting is malformed; the message names the key."""


# --------------------------------------------------------------------------- settings


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


# --------------------------------------------------------------------------- faults


def check_fault(fault: Any) -> dict[str, Any]:
    """Refuse typos in a fault script early: a silently ignored fault makes a test lie."""
    if not isinstance(fault, dict):
        raise FakeAPIError(f"a fault must be a JSON object, not {type(fault).__name__}")
    unknown = sorted(set(fault) - _FAULT_KEYS)
    if unknown:
        raise FakeAPIError(f"unknown fault key(s) {', '.join(unknown)}")
    triggers = [k for k in TRIGGERS if k in fault]
    if len(triggers) + ("status" in fault) > 1:
        raise FakeAPIError("a fault takes at most one of status, " + ", ".join(TRIGGERS))
    for key in (*TRIGGERS, "status", "code", "size"):
        if key in fault and (
            not isinstance(fault[key], int) or isinstance(fault[key], bool) or fault[key] < 0
        ):
            raise FakeAPIError(f"fault {key} must be a whole number >= 0")
    if "status" in fault and not 100 <= fault["status"] <= 599:
        raise FakeAPIError("fault status must be an HTTP status code")
    for key in ("delay", "reset_in"):
        if key in fault and (
            not isinstance(fault[key], int | float)
            or isinstance(fault[key], bool)
            or fault[key] < 0
        ):
            raise FakeAPIError(f"fault {key} must be a number of seconds >= 0")
    if "reset_in" in fault and "status" not in fault:
        raise FakeAPIError("fault reset_in goes with a status (it sets x-rate-limit-* headers)")
    if "body" in fault and not isinstance(fault["body"], str):
        raise FakeAPIError("fault body must be a string")
    if "headers" in fault and not (
        isinstance(fault["headers"], dict)
        and all(isinstance(v, str) for v in fault["headers"].values())
    ):
        raise FakeAPIError("fault headers must be an object of strings")
    endpoint = fault.get("endpoint", "stream")
    if endpoint not in ENDPOINTS:
        raise FakeAPIError(f"fault endpoint must be one of {', '.join(sorted(ENDPOINTS))}")
    v2_stream = endpoint == "v2/stream" or endpoint in V2_STREAMS
    if triggers and endpoint in ("users/lookup", "v2/rules"):
        raise FakeAPIError(f"fault {triggers[0]} needs a stream endpoint, not {endpoint}")
    if "error_after" in fault and not v2_stream:
        raise FakeAPIError("fault error_after is a v2 stream fault: set endpoint to v2/...")
    if "disconnect_shape" in fault:
        if fault["disconnect_shape"] not in DISCONNECT_SHAPES:
            raise FakeAPIError(f"fault disconnect_shape must be one of {DISCONNECT_SHAPES}")
        if "disconnect_after" not in fault or not v2_stream:
            raise FakeAPIError("fault disconnect_shape goes with disconnect_after on v2/...")
    return dict(fault)


def fault_matches(wanted: str, endpoint: str) -> bool:
    """Whether a fault scripted for `wanted` applies to an attempt on `endpoint`."""
    if wanted == "stream":
        return endpoint in V1_STREAMS
    if wanted == "v2/stream":
        return endpoint in V2_STREAMS
    return wanted == endpoint


# --------------------------------------------------------------------------- records


@dataclass
class ConnectionRecord:
    """One connection attempt (or rules API call), as a test wants to see it afterwards."""

    conn: int
    method: str
    path: str
    endpoint: str
    params: dict[str, str] = field(default_factory=dict)
    credential: str | None = None
    auth_ok: bool = False
    signed_host: str | None = None
    status: int | None = None
    fault: dict[str, Any] | None = None
    opened: float = 0.0
    closed: float | None = None
    first_byte: float | None = None
    sent_count: int = 0
    sent_seqs: list[list[int]] = field(default_factory=list)
    partial_seq: int | None = None
    close_reason: str | None = None
    #: A v2 rules API call: dry_run, how many rules it added or deleted, and the answer's
    #: summary counts, so a test can show what was validated before it was applied.
    summary: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def add_seqs(self, first: int, last: int) -> None:
        """Merge consecutive runs so a flat-out stream stays a handful of ranges."""
        if self.sent_seqs and self.sent_seqs[-1][1] + 1 == first:
            self.sent_seqs[-1][1] = last
        else:
            self.sent_seqs.append([first, last])


# --------------------------------------------------------------------------- open streams


class StreamHandle:
    """One open request: the handle that `stop`, `reset`, rivals and rule changes use."""

    def __init__(self, record: ConnectionRecord) -> None:
        self.record = record
        self.task = asyncio.current_task()
        self.wake = asyncio.Event()
        self.stop_reason: str | None = None
        self.done = asyncio.Event()

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.wake.set()

    async def sleep_until(self, deadline: float | None) -> None:
        """Sleep to `deadline` (loop time; None = forever) unless woken first."""
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():
            await asyncio.sleep(0)  # still yield: a caller's loop must never starve the others
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.wake.wait()
        self.wake.clear()


class Pacer:
    """Holds a connection to `rate` messages a second, counted from when the rate was set."""

    def __init__(self) -> None:
        self._rate = -1.0
        self._start = 0.0
        self._base = 0

    def allow(self, count: int, sent: int, rate: float, now: float) -> tuple[int, float | None]:
        """How many of `count` messages may go now, and when to wake if none may."""
        if rate <= 0:
            self._rate = -1.0  # pacing restarts from now if a rate is set again
            return count, None
        if count <= 0:
            return count, None
        if rate != self._rate:
            self._rate, self._start, self._base = rate, now, sent
        due = int((now - self._start) * rate) - (sent - self._base)
        wake_at = self._start + (sent - self._base + 1) / rate if due <= 0 else None
        return min(count, due), wake_at


async def next_batch(
    stream: StreamHandle,
    response: web.StreamResponse,
    pacer: Pacer,
    settings: Settings,
    *,
    want: int,
    sent: int,
    trigger_at: int | None,
    last_write: float,
) -> tuple[int, float]:
    """How many of `want` messages may go now: up to a scripted trigger, the total and the
    rate. When none may, wait for the rate or a change, sending a keep-alive when one is due
    (the caller loops). Returns the count and when the connection was last written to."""
    loop = asyncio.get_running_loop()
    count = want
    if trigger_at is not None:
        count = min(count, trigger_at - sent)
    if settings.total is not None:
        count = min(count, settings.total - sent)
    count, wake_at = pacer.allow(count, sent, settings.rate, loop.time())
    if count <= 0:
        keepalive_at = last_write + settings.keepalive_interval
        await stream.sleep_until(keepalive_at if wake_at is None else min(wake_at, keepalive_at))
        if not stream.stop_reason and loop.time() >= keepalive_at:
            await response.write(b"\r\n")
            last_write = loop.time()
    return count, last_write


async def abort_when_flushed(request: web.Request, stream: StreamHandle) -> None:
    """Drop the connection once what was written has left, so a cut loses nothing sent."""
    transport = request.transport
    if transport is None:
        return
    # asyncio has no "buffer flushed" callback: poll.
    while not transport.is_closing() and not stream.stop_reason:
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.002)
    transport.abort()


# --------------------------------------------------------------------------- small helpers


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as Twitter sends it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def block_count(message_size: int) -> int:
    return max(1, BLOCK_BYTES // max(1, message_size + 8))


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
