"""The fake server: one aiohttp application on loopback that hosts every simulated API.

`FakeAPI` owns what the hosted fakes share (see `sfmd.fake.mount`): the live settings, the
fault script, the server-wide sequence numbers, the connection log, the record of what was
sent, and the `/_fake/*` control routes that let a test or a script drive all of them. It
opens a `ConnectionRecord` and a `StreamHandle` for every request and hands the request to the
fake that routed it.

The fakes are mounted in `FakeAPI.__init__`, the one place a new network's fake plugs in:
construct it with the server as its `Host`, add it to `_apis`, and name its endpoints in
`sfmd.fake.faults.ENDPOINTS` so the fault script can target them. The Mastodon instance also
listens on a second port (its streaming server, as real instances often split it): its own
app, whose routes still go through this server's handler, bound by `start` after the first.

Every message carries a server-wide sequence number (a tweet's `id`, a notice's `seq`) and
every connection attempt leaves a `ConnectionRecord`, so a test can prove that what reached
the archive is exactly what was fully sent, in order, with nothing lost or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from sfmd.credentials import Credential
from sfmd.fake.faults import FaultScript
from sfmd.fake.jetstream import JetstreamAPI, JetstreamEvent
from sfmd.fake.mastodon import MastodonAPI
from sfmd.fake.mount import FIRST_SEQ, ConnectionRecord, Handler, Mount, StreamHandle
from sfmd.fake.settings import FakeAPIError, Settings
from sfmd.fake.twitter import V1API
from sfmd.fake.v2 import V2API


class FakeAPI:
    """The simulated APIs. `start()` binds; `log`, `sent_messages` and `wait_for` observe it."""

    def __init__(
        self,
        credentials: dict[str, Credential] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        message_size: int = 4800,
        rate: float = 0.0,
        total: int | None = None,
        keepalive_interval: float = 30.0,
        delete_every: int = 0,
        limit_every: int = 0,
        record_bytes: bool = False,
        jetstream_rate: float = 20.0,
        jetstream_burst: int | None = None,
        jetstream_window: float = 86400.0,
        jetstream_ping_interval: float = 30.0,
        jetstream_seed: int = 0,
        jetstream_outbox: int = 10_000,
        mastodon_rate: float = 5.0,
        mastodon_seed: int = 0,
        mastodon_ping_interval: float = 30.0,
        mastodon_rate_limit: int = 300,
        mastodon_rate_window: float = 300.0,
        mastodon_tags: tuple[str, ...] | list[str] | None = None,
        mastodon_lists: tuple[str, ...] | list[str] | None = None,
        mastodon_streaming_port: int = 0,
    ) -> None:
        self._bind_host = host
        self._bind_port = port
        self._initial = Settings().updated(
            {
                "message_size": message_size,
                "rate": rate,
                "total": total,
                "keepalive_interval": keepalive_interval,
                "delete_every": delete_every,
                "limit_every": limit_every,
                "record_bytes": record_bytes,
                "jetstream_rate": jetstream_rate,
                "jetstream_burst": jetstream_burst,
                "jetstream_window": jetstream_window,
                "jetstream_ping_interval": jetstream_ping_interval,
                "jetstream_seed": jetstream_seed,
                "jetstream_outbox": jetstream_outbox,
                "mastodon_rate": mastodon_rate,
                "mastodon_seed": mastodon_seed,
                "mastodon_ping_interval": mastodon_ping_interval,
                "mastodon_rate_limit": mastodon_rate_limit,
                "mastodon_rate_window": mastodon_rate_window,
                **({} if mastodon_tags is None else {"mastodon_tags": mastodon_tags}),
                **({} if mastodon_lists is None else {"mastodon_lists": mastodon_lists}),
            }
        )
        self._streaming_port = mastodon_streaming_port
        self.settings = self._initial
        self.log: list[ConnectionRecord] = []
        self._faults = FaultScript()
        self._recorded: dict[int, list[bytes]] = {}
        self._streams: set[StreamHandle] = set()
        self._next_seq = FIRST_SEQ
        self._changed: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        # The hosted fakes, in the order their routes are added.
        self.v1 = V1API(self, credentials)
        self.v2 = V2API(self, credentials)
        self.jetstream = JetstreamAPI(self)
        self.mastodon = MastodonAPI(self, credentials)
        self._apis: tuple[Mount, ...] = (self.v1, self.v2, self.jetstream, self.mastodon)

    # ---- lifecycle

    @property
    def stream_url(self) -> str:
        """What `[twitter] stream_url` (and `rest_url`) point at: the v1.1 API."""
        return self.url + "/1.1"

    @property
    def api_url(self) -> str:
        """What `[twitter] api_url` points at: the v2 paths start with /2/ under it."""
        return self.url

    @property
    def jetstream_url(self) -> str:
        """The Jetstream instance's v1 subscribe WebSocket: `ws://HOST:PORT/subscribe`."""
        return "ws" + self.url.removeprefix("http") + "/subscribe"

    @property
    def mastodon_url(self) -> str:
        """The Mastodon instance's REST base (`http://HOST:PORT`): what a credential's
        `mastodon_instance` is set to."""
        return self.url

    @property
    def mastodon_streaming_url(self) -> str:
        """The Mastodon streaming server (`ws://HOST:STREAMPORT`, a second port), as
        `/api/v2/instance` names it in `configuration.urls.streaming`."""
        return self.mastodon.streaming_url

    async def start(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        for api in self._apis:
            api.add_routes(app, functools.partial(self._handler, api))
        app.router.add_post("/_fake/script", self._control_script)
        app.router.add_post("/_fake/configure", self._control_configure)
        app.router.add_get("/_fake/log", self._control_log)
        app.router.add_get("/_fake/sent/{conn}", self._control_sent)
        app.router.add_post("/_fake/reset", self._control_reset)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind_host, self._bind_port)
        await site.start()
        port = self._runner.addresses[0][1]
        host = f"[{self._bind_host}]" if ":" in self._bind_host else self._bind_host
        self.url = f"http://{host}:{port}"
        self.jetstream.start()  # the instance produces from now on, subscribed or not
        await self.mastodon.start(self.url, self._bind_host, self._streaming_port)

    async def stop(self) -> None:
        """Close every stream (no disconnect message), then the listening socket."""
        await self._close_streams("server_stop")
        await self.jetstream.stop()
        await self.mastodon.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _close_streams(self, reason: str, grace: float = 1.0) -> None:
        streams = list(self._streams)
        for stream in streams:
            stream.request_stop(reason)
        waits = [asyncio.ensure_future(s.done.wait()) for s in streams]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for fut in pending:
                fut.cancel()
        for stream in streams:
            # A client that reads nothing keeps its writer blocked: cut it loose.
            if not stream.done.is_set() and stream.task is not None:
                stream.task.cancel()
        for stream in streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await stream.done.wait()

    # ---- the test-facing API

    def script(self, *faults: dict[str, Any]) -> None:
        """Queue behaviours; each connection attempt on a matching endpoint takes the first.

        A fault's optional "endpoint" ("stream" by default, meaning filter or sample; or
        "filter", "sample", "users/lookup"; for v2 "v2/stream", meaning v2/filter or
        v2/sample, or "v2/filter", "v2/sample", "v2/rules"; "jetstream" for the Jetstream
        instance; "mastodon/streaming", "mastodon/timelines", "mastodon/instance", or
        "mastodon/rest" for either REST one) says which attempts may take it.
        """
        self._faults.add(*faults)

    def configure(self, **settings: Any) -> None:
        """Change settings now; open streams see them on their next step."""
        self.settings = self.settings.updated(settings)
        self.jetstream.settings_changed()
        self.mastodon.settings_changed()
        for stream in self._streams:
            stream.wake.set()

    @property
    def pending_faults(self) -> list[dict[str, Any]]:
        return self._faults.pending()

    def sent_messages(self, conn: int) -> list[bytes]:
        """The messages fully sent on connection `conn`, without framing, if recording was on."""
        return list(self._recorded.get(conn, []))

    def v2_sent(self, conn: int) -> list[tuple[bytes, list[str]]]:
        """Each message fully sent on v2 connection `conn` with the rule ids it matched."""
        return self.v2.sent(conn)

    def jetstream_events(
        self, since_us: int | None = None, until_us: int | None = None
    ) -> list[JetstreamEvent]:
        """The events the Jetstream instance holds with since_us <= time_us <= until_us
        (each bound optional), oldest first; `.text` is the JSON exactly as sent."""
        return self.jetstream.events(since_us, until_us)

    def jetstream_produce(self, count: int) -> list[JetstreamEvent]:
        """Make the Jetstream instance produce `count` events now, whatever its rate."""
        return self.jetstream.produce(count)

    def jetstream_options(self, conn: int) -> list[dict[str, Any]]:
        """Jetstream connection `conn`'s options_update messages, applied (with `from_us`)
        or refused (with `error` and `close_code`), in order."""
        return self.jetstream.options_updates(conn)

    def mastodon_post(
        self,
        *,
        tags: tuple[str, ...] | list[str] = (),
        local: bool = True,
        lists: tuple[str, ...] | list[str] = (),
        home: bool = False,
        older_than_ms: int | None = None,
        stream: bool = True,
    ) -> dict[str, Any]:
        """Post one status now and answer its JSON (a Mastodon 4.x Status).

        It goes live to every matching subscription and into the REST timelines: public,
        public:local or public:remote, a hashtag timeline per tag (case kept in the status,
        matched case-insensitively), each list in `lists` (ids from the `mastodon_lists`
        setting), and home (`home=True`, the `user` stream). `older_than_ms`: its id is from
        that many ms ago, below ids already served (a remote post that arrived late).
        `stream=False`: only in the REST timelines, as if it went out while no one listened.
        """
        return self.mastodon.post(
            tags=tags, local=local, lists=lists, home=home, older_than_ms=older_than_ms,
            stream=stream,
        )

    def mastodon_edit(self, status_id: str | int) -> dict[str, Any]:
        """Edit a status (new content, `edited_at` set): streamed as `status.update` to the
        subscriptions it matches, and what REST serves from now on. Answers the new version."""
        return self.mastodon.edit(status_id)

    def mastodon_delete(self, status_id: str | int) -> None:
        """Delete a status: streamed as `delete` (payload: the id) and gone from REST."""
        self.mastodon.delete(status_id)

    def mastodon_status(self, status_id: str | int) -> dict[str, Any]:
        """A status's JSON as it is now (the edited version after an edit)."""
        return self.mastodon.status(status_id)

    def mastodon_posted(self) -> list[dict[str, Any]]:
        """Every status posted (by the schedule or `mastodon_post`), in posting order: `id`,
        `timelines` (the stream arrays it belongs to, tags lower-cased), `local`, `tags`,
        `lists`, `home`, `posted_at` (wall), `monotonic`, `streamed`, `edits`, `edited_at`,
        `deleted_at`."""
        return self.mastodon.posted()

    def mastodon_requests(self) -> list[dict[str, Any]]:
        """Every REST request answered, in order: `monotonic` and `wall` (when it arrived),
        `credential` (the token's owner, never the token), `method`, `path`, `query`
        (without access_token), `status`, and the `remaining` and `reset` headers sent."""
        return self.mastodon.requests()

    def mastodon_subscriptions(self, conn: int) -> list[dict[str, Any]]:
        """Streaming connection `conn`'s subscribe and unsubscribe messages, in order: `type`,
        `stream`, `tag` / `list` as sent, `at` (monotonic), and `result` (subscribed,
        already, unsubscribed, not_subscribed) or `error`."""
        return self.mastodon.subscriptions(conn)

    def rules(self, credential: str) -> list[dict[str, str]]:
        """The v2 rules of a credential's app (`app-N` when serving without credentials)."""
        return self.v2.rules(credential)

    async def reset(self) -> None:
        """Close every stream; forget the log, script, recordings and rules; restore settings."""
        await self._close_streams("reset")
        self._faults.clear()
        self.log.clear()
        self._recorded.clear()
        for api in self._apis:
            api.reset()
        self.settings = self._initial
        self.jetstream.settings_changed()
        self.mastodon.settings_changed()
        self.notify()

    async def wait_for(
        self,
        predicate: Callable[[FakeAPI], bool],
        timeout: float,  # noqa: ASYNC109 - the deadline is the point of this helper
    ) -> None:
        """Wait until `predicate(self)` holds, re-checking whenever the log changes."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()

    # ---- what the hosted fakes use (`mount.Host`)

    def notify(self) -> None:
        """Wake `wait_for` callers: the log, a recording or the rules changed."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def take_fault(self, endpoint: str) -> dict[str, Any] | None:
        """The first scripted fault for an attempt on `endpoint`, removed from the script."""
        return self._faults.take(endpoint)

    def allocate(self, count: int) -> int:
        """`count` fresh server-wide sequence numbers; the first is returned."""
        first = self._next_seq
        self._next_seq += count
        return first

    def record_sent(self, conn: int, messages: Iterable[bytes]) -> None:
        """Keep messages fully sent on `conn` for `sent_messages` (callers check record_bytes)."""
        self._recorded.setdefault(conn, []).extend(messages)

    # ---- request handling

    def _handler(self, api: Mount, endpoint: str) -> Handler:
        """The request handler for one of `api`'s routes, whose attempts count as `endpoint`."""

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(api, endpoint, request)

        return handle

    async def _handle(
        self, api: Mount, endpoint: str, request: web.Request
    ) -> web.StreamResponse:
        record = ConnectionRecord(
            conn=len(self.log),
            method=request.method,
            path=request.path,
            endpoint=endpoint,
            opened=time.monotonic(),
        )
        self.log.append(record)
        self.notify()
        stream = StreamHandle(record)
        self._streams.add(stream)
        try:
            return await api.serve(request, stream)
        except asyncio.CancelledError:
            # Cancelled by aiohttp when the client went away, or by stop() after its grace.
            record.close_reason = record.close_reason or stream.stop_reason or "client_closed"
            raise
        finally:
            record.closed = time.monotonic()
            if record.close_reason is None:
                answered = record.status is not None and 200 <= record.status < 300
                record.close_reason = stream.stop_reason or (
                    "answered" if answered else f"status_{record.status}"
                )
            self._streams.discard(stream)
            stream.done.set()
            self.notify()

    # ---- control endpoints

    async def _control_script(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            faults = body if isinstance(body, list) else [body]
            self.script(*faults)
        except (ValueError, FakeAPIError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"queued": len(self._faults)})

    async def _control_configure(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise FakeAPIError("settings must be a JSON object")
            self.configure(**body)
        except (ValueError, FakeAPIError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(dataclasses.asdict(self.settings))

    async def _control_log(self, request: web.Request) -> web.Response:
        return web.json_response([r.to_dict() for r in self.log])

    async def _control_sent(self, request: web.Request) -> web.Response:
        try:
            conn = int(request.match_info["conn"])
        except ValueError:
            return web.json_response({"error": "conn must be a number"}, status=400)
        if conn not in self._recorded and not 0 <= conn < len(self.log):
            return web.json_response({"error": f"no connection {conn}"}, status=404)
        return web.json_response([m.decode() for m in self.sent_messages(conn)])

    async def _control_reset(self, request: web.Request) -> web.Response:
        await self.reset()
        return web.json_response({"reset": True})
