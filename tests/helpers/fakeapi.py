"""What the fake API saw: its connection log, read the same way by every test."""

from __future__ import annotations

from sfmd.fake import ConnectionRecord, FakeAPI

#: The endpoints that carry a stream (everything else is a REST call).
STREAM_ENDPOINTS = ("filter", "sample")


def stream_connections(api: FakeAPI) -> list[ConnectionRecord]:
    """Every v1.1 stream connection the API was asked for, open or closed, in order."""
    return [r for r in api.log if r.endpoint in STREAM_ENDPOINTS]


def live(api: FakeAPI) -> list[ConnectionRecord]:
    """The stream connections still open."""
    return [r for r in stream_connections(api) if r.closed is None]


def sent_messages(api: FakeAPI) -> list[bytes]:
    """Everything the fake API fully sent on stream connections, in connection order."""
    out: list[bytes] = []
    for record in stream_connections(api):
        out += api.sent_messages(record.conn)
    return out
