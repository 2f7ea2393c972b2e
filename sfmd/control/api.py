"""The control API: JSON over HTTP on a Unix socket.

Handlers only parse, call the daemon and answer; every rule lives in the registry (what is
valid) or the daemon (what happens). One middleware turns every refusal into the API's
error body, `{"error": CODE, "message": SENTENCE}`, so no path can answer HTML or a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from sfmd.control import openapi
from sfmd.control.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sfmd.control.metrics import Metrics
from sfmd.control.warm import Warmer
from sfmd.daemon.app import Daemon
from sfmd.errors import Refused
from sfmd.logs import get_logger

MAX_BODY = 1 << 20
log = get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_answer(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def answer(data: object, status: int = 200) -> web.Response:
    """A JSON answer, encoded by orjson: the standard encoder took 5-15 ms of the event loop
    for GET /streams at 1,000 streams (orjson: under 1 ms)."""
    return json_answer(orjson.dumps(data), status)


def error_response(status: int, code: str, message: str) -> web.Response:
    return answer({"error": code, "message": message}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as e:
        return error_response(e.status, e.code, e.message)
    except web.HTTPException as e:
        if e.status == 404:
            return error_response(404, "not_found", f"no such path: {request.path}")
        if e.status == 405:
            answer = error_response(
                405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
            )
            if "Allow" in e.headers:  # RFC 9110: a 405 names the methods that are allowed
                answer.headers["Allow"] = e.headers["Allow"]
            return answer
        if e.status == 413:
            return error_response(
                413, "too_large", f"the body is larger than {MAX_BODY} bytes (1 MiB)"
            )
        return error_response(e.status, "bad_request", e.reason)
    except Exception:
        log.exception("api_error", method=request.method, path=request.path)
        return error_response(
            500, "internal", "sfmd hit an unexpected error; nothing is known to have changed; "
            "see sfmd.log"
        )


def _socket_of(request: web.Request) -> Any:
    """The connection's socket (asyncio's wrapper of it), or None once it is gone."""
    return request.transport.get_extra_info("socket") if request.transport else None


#: The most send buffer a big answer asks the kernel for (which caps it at
#: net.core.wmem_max, 208 KiB on many systems).
SEND_BUFFER_MAX = 8 << 20


def room_for(request: web.Request, size: int) -> None:
    """Ask the kernel to take an answer of `size` bytes in one write. GET /streams at 5,000
    streams is 3.3 MB: through the default buffer (208 KiB) it went out in sixteen pieces or
    more, each waiting for a turn of the event loop, which with thousands of streams reading
    was a good part of the answer's time. Where the kernel gives less, the rest is sent as
    before."""
    sock = _socket_of(request)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, min(size, SEND_BUFFER_MAX))


def peer_uid(request: web.Request) -> int | None:
    """The caller's uid from SO_PEERCRED, for the audit line; None off a Unix socket."""
    sock = _socket_of(request)
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[1])


async def json_body(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise Refused(
            f"the body must be application/json, got {request.content_type or 'nothing'}",
            status=415, code="unsupported_media_type",
        )
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Refused(
            f"the body is larger than {MAX_BODY} bytes (1 MiB)", status=413, code="too_large"
        )
    raw = await request.read()  # the app's client_max_size answers 413 for chunked bodies
    try:
        return json.loads(raw)
    except RecursionError:
        raise Refused(
            "the body is nested too deeply to read", status=400, code="bad_request"
        ) from None
    except ValueError as e:  # JSONDecodeError, bad UTF-8, an integer of thousands of digits
        raise Refused(
            f"the body is not valid JSON: {e}", status=400, code="bad_request"
        ) from None


class ControlApi:
    """The routes, bound to one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._openapi = json.dumps(openapi.document()).encode()
        self.metrics_page = Metrics(
            daemon.views.samples, daemon.started, connections=daemon.views.connections,
            ahead=daemon.views.samples_ahead,
        )
        timing = daemon.config.timing
        self.warmer = Warmer(
            {"streams": daemon.views.listing_ahead, "metrics": self.metrics_page.warm},
            interval=timing.warm_interval, window=timing.warm_window,
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[errors])
        app.cleanup_ctx.append(self._warming)
        app.router.add_get("/health", self.health)
        app.router.add_get("/streams", self.list_streams)
        app.router.add_post("/streams", self.create)
        app.router.add_get("/streams/{name}", self.show)
        app.router.add_patch("/streams/{name}", self.modify)
        app.router.add_delete("/streams/{name}", self.delete)
        app.router.add_post("/streams/{name}/start", self.start)
        app.router.add_post("/streams/{name}/stop", self.stop)
        app.router.add_post("/streams/{name}/restart", self.restart)
        app.router.add_post("/reload", self.reload)
        app.router.add_get("/cluster", self.cluster)
        app.router.add_post("/cluster/drain", self.drain)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    async def _warming(self, app: web.Application) -> AsyncIterator[None]:
        """The warmer runs while the API serves (`warm_interval` 0: never)."""
        if self.warmer.interval <= 0:
            yield
            return
        task = asyncio.create_task(self.warmer.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _audit(self, request: web.Request, name: str, status: int, **extra: Any) -> None:
        log.info(
            "api_change", method=request.method, path=request.path, stream=name,
            status=status, uid=peer_uid(request), **extra,
        )

    async def health(self, request: web.Request) -> web.Response:
        return answer(self.daemon.views.health())

    async def list_streams(self, request: web.Request) -> web.Response:
        self.warmer.asked("streams")
        body = await self.daemon.views.listing()
        room_for(request, len(body))
        return json_answer(body)

    async def show(self, request: web.Request) -> web.Response:
        spec = self.daemon.spec(request.match_info["name"])
        return json_answer(self.daemon.views.view_json(spec))

    async def create(self, request: web.Request) -> web.Response:
        spec = await self.daemon.create(await json_body(request))
        self._audit(request, spec.name, 201, settings=spec.to_dict())
        return json_answer(self.daemon.views.view_json(spec), status=201)

    async def modify(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.daemon.known(name)  # 404 before 415/400 for a stream that does not exist
        body = await json_body(request)
        spec = await self.daemon.modify(name, body)
        self._audit(request, name, 200, change=body)
        return json_answer(self.daemon.views.view_json(spec))

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.daemon.delete(name)
        self._audit(request, name, 204)
        return web.Response(status=204)

    async def start(self, request: web.Request) -> web.Response:
        return await self._set_active(request, True)

    async def stop(self, request: web.Request) -> web.Response:
        return await self._set_active(request, False)

    async def _set_active(self, request: web.Request, active: bool) -> web.Response:
        name = request.match_info["name"]
        spec = await self.daemon.modify(name, {"active": active})
        self._audit(request, name, 200, active=active)
        return json_answer(self.daemon.views.view_json(spec))

    async def restart(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        spec = await self.daemon.restart(name)
        self._audit(request, name, 200, restarted=True)
        return json_answer(self.daemon.views.view_json(spec))

    async def reload(self, request: web.Request) -> web.Response:
        report = await self.daemon.reload()
        log.info("api_reload", uid=peer_uid(request), **report["credentials"])
        return answer(report)

    async def cluster(self, request: web.Request) -> web.Response:
        return answer(await self.daemon.cluster_report())

    async def drain(self, request: web.Request) -> web.Response:
        """POST /cluster/drain {"host": "...", "undo": false}."""
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("host"), str) or not isinstance(
            body.get("undo", False), bool
        ):
            raise Refused(
                'the body must be {"host": "<host id>"} with an optional "undo": true|false',
                status=400, code="bad_request",
            )
        report = await self.daemon.drain(body["host"], undo=body.get("undo", False))
        log.info("api_drain", uid=peer_uid(request), **report)
        return answer(report)

    async def metrics(self, request: web.Request) -> web.Response:
        self.warmer.asked("metrics")
        body = await self.metrics_page.page()
        room_for(request, len(body))
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")
