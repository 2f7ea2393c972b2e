"""One Jetstream stream's connection: subscribe, read, store, back off, resume.

The WebSocket is Jetstream's v1 `/subscribe` with `wantedCollections`, `wantedDids`,
`cursor` and `compress=true`, and never `maxMessageSizeBytes` (the server would silently skip
larger events). Each compressed frame is one zstd frame made with Jetstream's dictionary; text
frames (an instance without compression) are taken too. Pings are answered; a socket that
stays silent for `idle_timeout`, pings included, is dead. New collections or DIDs go out as
an `options_update` on the open socket, never as a reconnect.

Every (re)connect resumes from the resume point (see `resume`), and every failure becomes a
logged wait by the same rules as Twitter's streams, never giving up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sfmd.archive import ArchiveError, coverage
from sfmd.sources.backoff import Backoff, BackoffPolicy, Failure
from sfmd.sources.base import Sink, read_saved_point
from sfmd.sources.bluesky import zstd
from sfmd.sources.bluesky.events import NotAnEvent, identity, parse
from sfmd.sources.bluesky.resume import ResumePoint
from sfmd.sources.idle import IdleWatch
from sfmd.sources.life import ConnectionLife
from sfmd.sources.websocket import CONNECT_OPTIONS, Hangup

#: DIDs listed one by one in a file's provenance; more are summed up by count and digest.
DIDS_SHOWN = 100


@dataclass(frozen=True)
class Subscription:
    """What one stream asks a Jetstream instance for."""

    name: str
    url: str
    collections: tuple[str, ...]
    dids: tuple[str, ...]
    compress: bool

    def query(self, cursor: int | None) -> list[tuple[str, str]]:
        query = [("wantedCollections", c) for c in self.collections]
        query += [("wantedDids", d) for d in self.dids]
        if cursor is not None:
            query.append(("cursor", str(cursor)))
        if self.compress:
            query.append(("compress", "true"))
        return query

    def options_update(self) -> str:
        payload = {"wantedCollections": list(self.collections), "wantedDids": list(self.dids),
                   "maxMessageSizeBytes": 0}  # 0: no limit, which an archive needs
        return json.dumps({"type": "options_update", "payload": payload})

    def provenance(self, cursor: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {"wantedCollections": list(self.collections),
                                  "compress": self.compress}
        if len(self.dids) <= DIDS_SHOWN:
            params["wantedDids"] = list(self.dids)
        else:
            digest = hashlib.sha256("\n".join(sorted(self.dids)).encode()).hexdigest()
            params["wantedDids"] = {"count": len(self.dids), "sha256_sorted": digest}
        if cursor is not None:
            params["cursor"] = cursor
        return {"source": "bluesky", "endpoint": self.url, "params": params}


@dataclass(frozen=True)
class JetstreamTiming:
    idle_timeout: float = 60.0
    connect_timeout: float = 30.0
    rewind: float = 10.0
    backoff: BackoffPolicy = dataclasses.field(default_factory=BackoffPolicy)


class JetstreamStream(ConnectionLife):
    def __init__(
        self,
        subscription: Subscription,
        *,
        session: aiohttp.ClientSession,
        sink: Sink,
        stream_dir: Path,
        timing: JetstreamTiming | None = None,
        saved_point: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        super().__init__(subscription.name, sink)
        self.subscription = subscription
        self.session = session
        self.stream_dir = stream_dir
        self.timing = timing or JetstreamTiming()
        self.backoff = Backoff(self.timing.backoff)
        self.resume: ResumePoint | None = None
        self._saved_point = saved_point  # cluster mode: the point another host saved
        self.duplicates = 0  # events the replay brought again, dropped
        self.refused = 0  # frames that were not events, or too large
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._hangup = Hangup()

    # -- start, stop, change ----------------------------------------------------------------

    async def _interrupt(self) -> bool:
        """Begin the close: the read loop stores what comes until the instance's close,
        then hands over what it read."""
        if self._ws is None:
            return False
        await self._hangup.begin(self._ws)
        return True

    async def change(self, subscription: Subscription) -> None:
        """New collections or DIDs: an `options_update` on the open socket (the next
        connection asks for them anyway)."""
        self.subscription = subscription
        ws = self._ws
        if not self._hangup.sendable(ws):
            return
        await ws.send_str(subscription.options_update())
        newest = self.resume.newest if self.resume else None
        self.sink.asking(subscription.provenance(None))
        self.log.info("options_update", collections=list(subscription.collections),
                      dids=len(subscription.dids), after_time_us=newest)

    # -- the main loop -----------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Where to resume, read back from the stream's files (once: then it follows each
        stored event)."""
        if self.resume is None:
            resume = await asyncio.to_thread(
                ResumePoint.from_files, self.stream_dir, int(self.timing.rewind * 1e6)
            )
            saved = await read_saved_point(self._saved_point, self.name, self.log)
            if saved is not None and (resume.newest is None or saved > resume.newest):
                # Another host stored up to `saved` (its files, not ours): resume there. The
                # replay's overlap with its files cannot be recognised here, so those few
                # events are in both hosts' files.
                resume.newest = saved
                self.log.info("resume_point_taken_over", newest_time_us=saved)
            self.resume = resume
            self.log.info("resume_point", newest_time_us=self.resume.newest,
                          cursor=self.resume.cursor)

    async def _connect_and_read(self) -> tuple[Failure, str]:
        """One connection, until it ends: how it failed and why."""
        assert self.resume is not None
        cursor = self.resume.cursor
        sub = self.subscription
        self._attempting(url=sub.url, cursor=cursor)
        self.sink.asking(sub.provenance(cursor))
        try:
            async with self.session.ws_connect(
                sub.url,
                params=sub.query(cursor),
                **CONNECT_OPTIONS,
            ) as ws:
                self._ws = ws
                try:
                    self._streaming()
                    self.sink.streaming()
                    return await self._read(ws, cursor)
                finally:
                    self._ws = None
                    self._hangup.done()
        except aiohttp.WSServerHandshakeError as e:
            limited = e.status == 429
            self.log.warning("upgrade_refused", status=e.status, reason=e.message)
            return (Failure.RATE_LIMIT if limited else Failure.HTTP,
                    f"HTTP {e.status}: {e.message}")
        except TimeoutError:
            return Failure.NETWORK, "connect timed out"
        except (aiohttp.ClientError, OSError) as e:
            return Failure.NETWORK, f"network error: {type(e).__name__}: {e}"
        except ArchiveError as e:
            self.log.error("archive_error", error=str(e))
            return Failure.HTTP, f"archive: {e}"

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, cursor: int | None
                    ) -> tuple[Failure, str]:
        with IdleWatch(ws.close, self.timing.idle_timeout) as watch:
            return await self._frames(ws, cursor, watch)

    async def _frames(self, ws: aiohttp.ClientWebSocketResponse, cursor: int | None,
                      watch: IdleWatch) -> tuple[Failure, str]:
        assert self.resume is not None
        resume = self.resume
        before = resume.newest
        first = True
        decompressor = zstd.decompressor()
        while True:
            # The last frame, its text and its parsed event are let go before waiting for
            # the next: a quiet stream would hold them for seconds, and the archive holds
            # the text it stores anyway.
            msg = text = event = None
            msg = await ws.receive()
            watch.frame()
            if watch.fired:
                return Failure.NETWORK, f"idle: no frame for {self.timing.idle_timeout:g} s"
            if msg.type == aiohttp.WSMsgType.PING:
                if self._hangup.sendable(ws):  # none after our close frame
                    await ws.pong(msg.data)
                continue
            if msg.type in (aiohttp.WSMsgType.PONG,):
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    text = zstd.inflate(msg.data, decompressor)
                except zstd.Refused as e:
                    self._refuse(f"compressed frame refused: {e}")
                    continue
            elif msg.type == aiohttp.WSMsgType.TEXT:
                text = msg.data.encode()
            elif msg.type == aiohttp.WSMsgType.ERROR:
                return Failure.NETWORK, f"socket error: {ws.exception()}"
            else:  # CLOSE, CLOSING, CLOSED
                code = ws.close_code
                return Failure.NETWORK, f"the instance closed the socket (code {code})"
            try:
                event = parse(text)
            except NotAnEvent as e:
                self._refuse(f"a frame that is not an event ({e}): {len(text)} bytes")
                continue
            time_us = event["time_us"]
            key = identity(event, text)
            if first:
                first = False
                self._note_refill(before, time_us, cursor)
            if resume.seen(key):
                self.duplicates += 1
                continue
            await self.sink.write([text], int(event.get("kind") == "commit"))
            resume.stored(key, time_us)
            self.sink.mark(str(resume.newest))
            status = self.status
            status.messages += 1
            status.tweets += event.get("kind") == "commit"
            status.bytes += len(text) + 1
            self.backoff.reset()

    def _note_refill(self, before: int | None, first_us: int, cursor: int | None) -> None:
        """After a reconnect, what the replay brought back of the time the stream was down:
        all of it when it began at or before the newest event stored (the instance still
        held everything since); only part when it began after (older events were past its
        replay window)."""
        if before is None or cursor is None:
            return
        self.sink.refilled("all" if first_us <= before else "some")
        if first_us > before:
            self.log.warning("replay_window", newest_stored_us=before, first_replayed_us=first_us)

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.log.warning("event_refused", why=why)
        self.sink.refused(why)

    async def _wait_after(self, failure: Failure, reason: str) -> None:
        wait = self.backoff.failure(failure)
        self._failed(reason, failure.value, wait)
        limited = failure is Failure.RATE_LIMIT
        self.sink.not_streaming(coverage.RATE_LIMITED if limited else coverage.BACKOFF, reason)
        await asyncio.sleep(wait)
        while self.sink.error is not None:  # a full disk: connect once it takes messages
            wait = self.backoff.failure(Failure.HTTP)
            self._failed(f"the archive refuses writes: {self.sink.error}", Failure.HTTP.value,
                         wait, event="waiting_for_archive", error=f"archive: {self.sink.error}")
            await asyncio.sleep(wait)
