"""The seam between the fake server and the simulated APIs mounted on it.

The server (`sfmd.fake.server.FakeAPI`) owns what every fake shares: the settings, the fault
script, the server-wide sequence numbers, the connection log and the record of what was sent.
A fake reaches them only through `Host`, and offers the server only what `Mount` names: its
routes, a `serve` for each request, and a `reset`. For each request the server opens a
`ConnectionRecord` and a `StreamHandle` and hands both to the fake, which fills in the record
as it answers; the server closes them.

A new network's fake (a sibling module of `twitter` and `v2`) implements `Mount` and is
constructed in `FakeAPI.__init__`; nothing else in the server changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import web

from sfmd.fake.settings import Settings

#: The first sequence number: ids above 2^53 catch clients that parse ids as floats.
FIRST_SEQ = 1_500_000_000_000_000_000

#: An aiohttp request handler.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Host(Protocol):
    """What a mounted fake needs from the server it is mounted on."""

    settings: Settings

    def take_fault(self, endpoint: str) -> dict[str, Any] | None:
        """The first scripted fault for an attempt on `endpoint`, removed from the script."""
        ...

    def allocate(self, count: int) -> int:
        """`count` fresh server-wide sequence numbers; the first is returned."""
        ...

    def notify(self) -> None:
        """Wake `wait_for` callers: a record, a recording or other observable state changed."""
        ...

    def record_sent(self, conn: int, messages: Iterable[bytes]) -> None:
        """Keep messages fully sent on `conn`, unframed; call only when `record_bytes` is on."""
        ...

    def sent_messages(self, conn: int) -> list[bytes]:
        """What `record_sent` kept for `conn`, in order."""
        ...


class Mount(Protocol):
    """What the server needs from a fake it hosts."""

    def add_routes(self, app: web.Application, handler: Callable[[str], Handler]) -> None:
        """Route the fake's paths to `handler(endpoint)`, the server's handler that opens the
        request's record for `endpoint` (the name faults use) and then calls `serve`. A fake
        may add its own `/_fake/...` control routes here too."""
        ...

    async def serve(self, request: web.Request, stream: StreamHandle) -> web.StreamResponse:
        """Answer one request whose `stream.record` the server has opened and will close."""
        ...

    def reset(self) -> None:
        """Forget per-run state on `FakeAPI.reset`, after every stream has been closed."""
        ...


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


async def stream_body(
    request: web.Request,
    stream: StreamHandle,
    host: Host,
    headers: dict[str, str],
    pump: Callable[[web.StreamResponse], Awaitable[None]],
) -> web.StreamResponse:
    """Answer 200 with a chunked body that `pump` writes until the stream must end, and note
    in the stream's record when it began and why it ended."""
    record = stream.record
    response = web.StreamResponse(status=200, headers=headers)
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        record.status = 200
        record.first_byte = time.monotonic()
        host.notify()
        await pump(response)
    except ConnectionError:
        # The client went away mid-write. Returning (not raising) keeps aiohttp quiet.
        record.close_reason = record.close_reason or stream.stop_reason or "client_closed"
    return response


#: The close code a fake's WebSocket ends with when the server stops or resets.
CLOSE_GOING_AWAY = 1001


async def serve_socket(
    request: web.Request,
    ws: web.WebSocketResponse,
    stream: StreamHandle,
    read: Coroutine[Any, Any, None],
    pump: Coroutine[Any, Any, None],
    forget: Callable[[], None],
) -> web.WebSocketResponse:
    """A fake's upgraded WebSocket until it ends: `read` takes what the client sends while
    `pump` sends; a client that went away is the record's close reason; `forget` drops the
    fake's own state for the connection; a socket still open is closed as going away."""
    reader = asyncio.ensure_future(read)
    try:
        await pump
    except ConnectionError:
        stream.record.close_reason = (
            stream.record.close_reason or stream.stop_reason or "client_closed"
        )
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        forget()
    transport = request.transport
    if not ws.closed and transport is not None and not transport.is_closing():
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await ws.close(code=CLOSE_GOING_AWAY, message=b"server shutting down")
    return ws


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


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as Twitter sends it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
