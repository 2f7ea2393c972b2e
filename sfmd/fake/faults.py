"""The fault script: scripted misbehaviour, one fault per connection attempt.

A fault is a JSON object such as `{"cut_after": 3}`, `{"status": 429, "endpoint":
"v2/stream"}` or `{"close_after": 5, "endpoint": "jetstream"}`. The server keeps one
`FaultScript` for every fake it hosts; each attempt takes the first queued fault whose
`endpoint` matches it (`FakeAPI.take_fault`), so one script can drive v1.1, v2, Jetstream
and Mastodon connections in a known order. A Mastodon REST fault with `times` answers that
many matching requests. Faults are checked when queued: a silently ignored typo would
make a test pass without testing anything.
"""

from __future__ import annotations

from typing import Any

from sfmd.fake.settings import FakeAPIError

#: Faults that fire after N messages on a connection; a fault takes at most one of these.
TRIGGERS = (
    "cut_after",
    "stall_after",
    "disconnect_after",
    "oversized_after",
    "malformed_after",
    "error_after",
)
#: The Jetstream fake's triggers (endpoint "jetstream"), besides the shared stall_after.
JETSTREAM_TRIGGERS = (
    "close_after",
    "slow_consumer_after",
    "oversize_after",
    "not_json_after",
)
#: The Mastodon fake's endpoints: the streaming WebSocket, the REST timelines, discovery;
#: "mastodon/rest" names either REST endpoint.
MASTODON_STREAMING = "mastodon/streaming"
MASTODON_TIMELINES = "mastodon/timelines"
MASTODON_INSTANCE = "mastodon/instance"
MASTODON_REST = frozenset({MASTODON_TIMELINES, MASTODON_INSTANCE})
MASTODON_ENDPOINTS = frozenset({MASTODON_STREAMING, "mastodon/rest", *MASTODON_REST})
#: Twitter triggers a Jetstream connection cannot take (Jetstream has its own names).
_TWITTER_ONLY = frozenset(TRIGGERS) - {"stall_after"}
V1_STREAMS = frozenset({"filter", "sample"})
V2_STREAMS = frozenset({"v2/filter", "v2/sample"})
#: What a fault's "endpoint" may name: one endpoint, or "stream" / "v2/stream" for either.
#: These are the endpoint names the mounted fakes give their routes.
ENDPOINTS = frozenset(
    {
        "stream",
        "users/lookup",
        "v2/stream",
        "v2/rules",
        "jetstream",
        *V1_STREAMS,
        *V2_STREAMS,
        *MASTODON_ENDPOINTS,
    }
)
DISCONNECT_SHAPES = ("full", "type_only")
_FAULT_KEYS = frozenset(
    {
        *TRIGGERS,
        *JETSTREAM_TRIGGERS,
        "duration",
        "status",
        "body",
        "headers",
        "code",
        "size",
        "delay",
        "endpoint",
        "disconnect_shape",
        "reset_in",
        "retry_after",
        "times",
    }
)


def check_fault(fault: Any) -> dict[str, Any]:
    """Refuse typos in a fault script early: a silently ignored fault makes a test lie."""
    if not isinstance(fault, dict):
        raise FakeAPIError(f"a fault must be a JSON object, not {type(fault).__name__}")
    unknown = sorted(set(fault) - _FAULT_KEYS)
    if unknown:
        raise FakeAPIError(f"unknown fault key(s) {', '.join(unknown)}")
    triggers = [k for k in (*TRIGGERS, *JETSTREAM_TRIGGERS) if k in fault]
    if len(triggers) + ("status" in fault) > 1:
        raise FakeAPIError(
            "a fault takes at most one of status, " + ", ".join((*TRIGGERS, *JETSTREAM_TRIGGERS))
        )
    for key in (*TRIGGERS, *JETSTREAM_TRIGGERS, "status", "code", "size", "times"):
        if key in fault and (
            not isinstance(fault[key], int) or isinstance(fault[key], bool) or fault[key] < 0
        ):
            raise FakeAPIError(f"fault {key} must be a whole number >= 0")
    if "status" in fault and not 100 <= fault["status"] <= 599:
        raise FakeAPIError("fault status must be an HTTP status code")
    for key in ("delay", "reset_in", "duration", "retry_after"):
        if key in fault and (
            not isinstance(fault[key], int | float)
            or isinstance(fault[key], bool)
            or fault[key] < 0
        ):
            raise FakeAPIError(f"fault {key} must be a number of seconds >= 0")
    endpoint = fault.get("endpoint", "stream")
    if endpoint in MASTODON_ENDPOINTS:
        _check_mastodon_fault(fault, triggers, endpoint)
        return dict(fault)
    for key in ("retry_after", "times"):
        if key in fault:
            raise FakeAPIError(f"fault {key} is a Mastodon fault: set endpoint to mastodon/...")
    if "reset_in" in fault and "status" not in fault:
        raise FakeAPIError("fault reset_in goes with a status (it sets x-rate-limit-* headers)")
    if "body" in fault and not isinstance(fault["body"], str):
        raise FakeAPIError("fault body must be a string")
    if "headers" in fault and not (
        isinstance(fault["headers"], dict)
        and all(isinstance(v, str) for v in fault["headers"].values())
    ):
        raise FakeAPIError("fault headers must be an object of strings")
    if endpoint not in ENDPOINTS:
        raise FakeAPIError(f"fault endpoint must be one of {', '.join(sorted(ENDPOINTS))}")
    v2_stream = endpoint == "v2/stream" or endpoint in V2_STREAMS
    if endpoint == "jetstream":
        _check_jetstream_fault(fault, triggers)
        return dict(fault)
    if jetstream_only := [k for k in (*JETSTREAM_TRIGGERS, "duration") if k in fault]:
        raise FakeAPIError(
            f"fault {jetstream_only[0]} is a Jetstream fault: set endpoint to jetstream"
        )
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


def _check_jetstream_fault(fault: dict[str, Any], triggers: list[str]) -> None:
    """What a Jetstream connection can take: status (with body, headers, delay), or one of
    close_after, stall_after (with duration), slow_consumer_after, oversize_after (with size),
    not_json_after."""
    if twitter_only := [k for k in triggers if k in _TWITTER_ONLY]:
        raise FakeAPIError(f"fault {twitter_only[0]} is not a Jetstream fault")
    for key, needs in (("duration", "stall_after"), ("size", "oversize_after")):
        if key in fault and needs not in fault:
            raise FakeAPIError(f"fault {key} goes with {needs} on endpoint jetstream")
    for key in ("code", "disconnect_shape", "reset_in"):
        if key in fault:
            raise FakeAPIError(f"fault {key} is not a Jetstream fault")


def _check_mastodon_fault(fault: dict[str, Any], triggers: list[str], endpoint: str) -> None:
    """The streaming endpoint takes status (with retry_after, body, headers, delay), or
    close_after (with code: a close frame instead of a dropped socket), or stall_after (with
    duration). The REST endpoints take status (with reset_in for a 429, body, headers,
    delay) and times (the next N matching requests, default 1)."""
    streaming = endpoint == MASTODON_STREAMING
    allowed = {"close_after", "stall_after"} if streaming else set()
    if wrong := [k for k in triggers if k not in allowed]:
        raise FakeAPIError(f"fault {wrong[0]} is not a {endpoint} fault")
    if not triggers and "status" not in fault:
        raise FakeAPIError(f"a {endpoint} fault needs status" + (
            ", close_after or stall_after" if streaming else ""
        ))
    pairs = [("duration", "stall_after"), ("retry_after", "status")]
    pairs += [("code", "close_after")] if streaming else [("reset_in", "status")]
    for key, needs in pairs:
        if key in fault and needs not in fault:
            raise FakeAPIError(f"fault {key} goes with {needs} on endpoint {endpoint}")
    banned = ["size", "disconnect_shape"]
    banned += ["reset_in", "times"] if streaming else ["code", "duration"]
    if wrong := [k for k in banned if k in fault]:
        raise FakeAPIError(f"fault {wrong[0]} is not a {endpoint} fault")
    if "reset_in" in fault and fault["status"] != 429:
        raise FakeAPIError("fault reset_in goes with status 429 on the Mastodon REST API")
    if "code" in fault and not (fault["code"] == 1000 or 3000 <= fault["code"] <= 4999
                                or 1001 <= fault["code"] <= 1014):
        raise FakeAPIError("fault code must be a WebSocket close code (1000-1014, 3000-4999)")
    if "times" in fault and fault["times"] < 1:
        raise FakeAPIError("fault times must be at least 1")


def fault_matches(wanted: str, endpoint: str) -> bool:
    """Whether a fault scripted for `wanted` applies to an attempt on `endpoint`."""
    if wanted == "stream":
        return endpoint in V1_STREAMS
    if wanted == "v2/stream":
        return endpoint in V2_STREAMS
    if wanted == "mastodon/rest":
        return endpoint in MASTODON_REST
    return wanted == endpoint


class FaultScript:
    """The queue of checked faults, shared by every fake the server hosts."""

    def __init__(self) -> None:
        self._faults: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._faults)

    def add(self, *faults: Any) -> None:
        """Check and queue each fault in order; a bad one raises FakeAPIError."""
        self._faults.extend(check_fault(f) for f in faults)

    def take(self, endpoint: str) -> dict[str, Any] | None:
        """The first queued fault for an attempt on `endpoint`, removed from the queue."""
        for i, fault in enumerate(self._faults):
            if fault_matches(fault.get("endpoint", "stream"), endpoint):
                return self._faults.pop(i)
        return None

    def pending(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self._faults]

    def clear(self) -> None:
        self._faults.clear()
