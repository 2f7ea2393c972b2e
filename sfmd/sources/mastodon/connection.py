"""One Mastodon account's streaming connection, shared by all of the account's streams.

`AccountConnection` is the `SharedConnection` the daemon drives: members (streams) come and
go on the open socket by `subscribe`/`unsubscribe` messages, never by reconnecting. Its
`Socket` connects, reads and backs off; each frame goes, byte for byte, to the archive of
every member whose channel its `stream` array names (two streams wanting one post both store
it). Each member fills its gap from its REST timeline after every (re)subscription (`fill`),
from its resume point (`resume`), and live frames and filled statuses are de-duplicated by
status id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sfmd.archive import Archive, ArchiveError, coverage
from sfmd.credentials import Credential
from sfmd.locks import CredentialLock
from sfmd.logs import get_logger
from sfmd.registry import StreamSpec
from sfmd.sources.backoff import Backoff, BackoffPolicy, Failure
from sfmd.sources.base import read_saved_point
from sfmd.sources.idle import IdleWatch
from sfmd.sources.life import ConnectionLife
from sfmd.sources.mastodon import resume
from sfmd.sources.mastodon.channels import Channel, Key, key_of
from sfmd.sources.mastodon.fill import UNRECOVERABLE, FillResult, fill
from sfmd.sources.mastodon.instance import Instance, InstanceError
from sfmd.sources.mastodon.statuses import NotAFrame, id_at, overlap_ids, parse_frame, update_id
from sfmd.sources.websocket import CONNECT_OPTIONS, Hangup
from sfmd.status import ConnectionStatus, State, StreamStatus

#: Live ids are forgotten this often (in stores), once older than twice the overlap.
PRUNE_EVERY = 4096


def connection_name(credential: str) -> str:
    """The connection's name in logs, locks and metrics (stream names have no @)."""
    return f"mastodon@{credential}"


def count_updates(messages: list[bytes]) -> int:
    """Content items: `update` events, streamed or filled (a recovered file is recounted
    with this)."""
    return sum(b'"event":"update"' in m or b'"event": "update"' in m for m in messages)


@dataclass(frozen=True)
class MastodonTiming:
    idle_timeout: float = 90.0
    connect_timeout: float = 30.0
    fill_overlap: float = 60.0
    fill_max_pages: int = 250
    backoff: BackoffPolicy = dataclasses.field(default_factory=BackoffPolicy)


@dataclass
class Member:
    """One stream on the connection: its channel, archive, and how complete it is."""

    spec: StreamSpec
    channel: Channel
    archive: Archive
    stream_dir: Path
    seen: resume.Seen = field(default_factory=resume.Seen)
    complete_to: int | None = None  # every status up to this id is stored (overlap aside)
    filling: bool = False  # a fill from `complete_to` has not finished
    newest: int | None = None  # the newest status id stored
    fill_task: asyncio.Task[None] | None = None
    messages: int = 0
    tweets: int = 0  # updates stored, streamed or filled
    bytes: int = 0
    duplicates: int = 0  # updates that came live and by the fill (or twice): stored once
    refused: int = 0  # messages its archive could not take (a full disk), lost
    error: str | None = None  # the archive's refusal or the fill's failure, until cleared
    frame_error: str | None = None  # the instance's latest in-band error naming this stream
    stores: int = 0

    def resume_at(self) -> int | None:
        """Where the next fill starts (before the overlap)."""
        if self.filling:
            return self.complete_to
        ids = [i for i in (self.complete_to, self.newest) if i is not None]
        return max(ids) if ids else None

    def record(self) -> resume.Record | None:
        if self.complete_to is None:
            return None
        return resume.Record(self.complete_to, self.filling)


class Socket(ConnectionLife):
    """The account's WebSocket: discover, connect, subscribe everyone, read, back off."""

    def __init__(self, owner: AccountConnection, session: aiohttp.ClientSession,
                 timing: MastodonTiming) -> None:
        super().__init__(owner.name, owner, log_key="connection")
        self.owner = owner
        self.session = session
        self.timing = timing
        self.backoff = Backoff(timing.backoff)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.url: str | None = None  # the streaming socket, once discovered
        self.hangup = Hangup()

    async def _interrupt(self) -> bool:
        """Begin the close: the read loop stores what comes until the server's close."""
        if self.ws is None:
            return False
        await self.hangup.begin(self.ws)
        return True

    async def _connect_and_read(self) -> tuple[Failure, str]:
        self._attempting(**({"url": self.url} if self.url else {"instance": str(
            self.owner.instance.base)}))
        try:
            if self.url is None:
                self.url = await self.owner.instance.streaming_url()
                self.log.info("streaming_server", url=self.url)
            async with self.session.ws_connect(
                self.url,
                headers=self.owner.instance.auth_headers,
                **CONNECT_OPTIONS,
            ) as ws:
                self.ws = ws
                try:
                    await self.owner.opened(ws)
                    self._streaming(url=self.url)  # subscribed: streaming, quiet or not
                    with IdleWatch(ws.close, self.timing.idle_timeout) as watch:
                        return await self._frames(ws, watch)
                finally:
                    self.ws = None
                    self.hangup.done()
                    await self.owner.closed()
        except aiohttp.WSServerHandshakeError as e:
            return self._refused(e.status, e.message, e.headers)
        except InstanceError as e:
            self.url = None
            failure = Failure.NETWORK if e.status is None else Failure.HTTP
            if e.status == 401:
                return self._refused(401, str(e), None)
            return failure, f"discovering the streaming server: {e}"
        except TimeoutError:
            return Failure.NETWORK, "connect timed out"
        except (aiohttp.ClientError, OSError) as e:
            self.url = None  # the server may have moved: ask the instance again
            return Failure.NETWORK, f"network error: {type(e).__name__}: {e}"

    def _refused(self, status: int, message: str, headers: Any) -> tuple[Failure, str]:
        said = (headers or {}).get("X-Error-Message") if headers is not None else None
        reason = f"HTTP {status}: {said or message}"
        self.log.warning("upgrade_refused", status=status, reason=said or message)
        if status == 401:
            self.owner.token_refused = (
                f"the instance refused the token of credential {self.owner.credential.name!r} "
                f"({reason}): it is wrong or was revoked; put a new mastodon_token in the "
                "credentials file"
            )
            return Failure.HTTP, self.owner.token_refused
        if status in (404, 502, 503, 504):
            self.url = None  # the instance may name another streaming server now
        return (Failure.RATE_LIMIT if status == 429 else Failure.HTTP), reason

    async def _frames(self, ws: aiohttp.ClientWebSocketResponse, watch: IdleWatch
                      ) -> tuple[Failure, str]:
        while True:
            msg = None  # the last frame's text is stored: not held twice while waiting
            msg = await ws.receive()
            watch.frame()
            if watch.fired:
                return Failure.NETWORK, f"idle: no frame for {self.timing.idle_timeout:g} s"
            if msg.type == aiohttp.WSMsgType.PING:
                if self.hangup.sendable(ws):  # none after our close frame
                    await ws.pong(msg.data)
                continue
            if msg.type == aiohttp.WSMsgType.PONG:
                continue
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.status.messages += 1
                await self.owner.frame(msg.data.encode())
                self.backoff.reset()
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.owner.refuse_everywhere("a binary frame, which Mastodon does not send")
                continue
            if msg.type == aiohttp.WSMsgType.ERROR:
                return Failure.NETWORK, f"socket error: {ws.exception()}"
            return Failure.NETWORK, f"the server closed the socket (code {ws.close_code})"

    async def _wait_after(self, failure: Failure, reason: str) -> None:
        wait = self.backoff.failure(failure)
        self._failed(reason, failure.value, wait)
        if self.owner.token_refused is not None:
            # Not a passing outage: a person must act. Still retried, at the HTTP rate.
            self.status.state = State.FAILED
        self.owner.down(coverage.RATE_LIMITED if failure is Failure.RATE_LIMIT
                        else coverage.BACKOFF, reason)
        await asyncio.sleep(wait)


class AccountConnection:
    """One account's streaming socket and the streams (members) it carries."""

    def __init__(
        self,
        credential: Credential,
        *,
        session: aiohttp.ClientSession,
        data_dir: Path,
        lock_dir: Path,
        slot: str,
        archive_factory: Callable[[StreamSpec], Archive],
        timing: MastodonTiming,
        fill_retry_wait: float = 5.0,
        saved_point: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.credential = credential
        self.name = connection_name(credential.name)
        self.log = get_logger(connection=self.name)
        self.data_dir = data_dir
        self.timing = timing
        self.fill_retry_wait = fill_retry_wait
        self.lock = CredentialLock(lock_dir, slot)
        self.instance = Instance(session, credential, timeout=timing.connect_timeout,
                                 connection=self.name)
        self.streams: dict[str, Member] = {}
        self.keys: dict[Key, set[str]] = {}  # subscribed channel → member names
        self.socket = Socket(self, session, timing)
        self.unrouted = 0  # frames no member wanted
        self.frame_errors = 0  # in-band errors the server sent
        self.token_refused: str | None = None  # a 401: why, until a connection succeeds
        self._archive_factory = archive_factory
        self._saved_point = saved_point  # cluster mode: the point another host saved
        self._live_from: int | None = None  # the id of the moment the socket subscribed
        self._started = False

    # -- what ConnectionLife needs of its sink --------------------------------------------

    @property
    def current_file(self) -> None:
        return None  # the connection has no file; each member's archive has its own

    @property
    def fenced(self) -> bool:
        """Cluster mode: the account's lease is gone (every member's archive is fenced by
        it), so the socket must not connect again."""
        return any(member.archive.fenced for member in self.streams.values())

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the account's connection slot (CredentialBusy if another process has it)
        and connect."""
        self.lock.acquire(self.name)
        self._started = True
        self.socket.start()
        self.log.info("mastodon_connection_started", credential=self.credential.name)

    async def stop(self) -> None:
        """Close the socket and every member's archive; an unfinished fill stays recorded
        and resumes at the next start."""
        try:
            await self.socket.stop(grace=5.0)
            for name in list(self.streams):
                await self._drop(name)
        finally:
            if self._started:
                self.lock.release()
                self._started = False

    # -- members -----------------------------------------------------------------------------

    async def update(
        self, specs: Iterable[StreamSpec], known: Iterable[str], *, check_rules: bool = False
    ) -> dict[str, ArchiveError]:
        """Members made to match `specs`: leavers unsubscribed and closed, newcomers opened
        and subscribed (with a fill when they ran before), a changed tag or list moved to
        its new channel. Returns the members whose archive would not open."""
        wanted = {spec.name: spec for spec in specs}
        for name in list(self.streams):
            if name not in wanted:
                await self._drop(name)
        failed: dict[str, ArchiveError] = {}
        for name, spec in wanted.items():
            member = self.streams.get(name)
            if member is None:
                try:
                    await self._join(spec)
                except ArchiveError as e:
                    failed[name] = e
            elif Channel.of(spec) != member.channel:
                await self._move(member, spec)
            else:
                member.spec = spec
        return failed

    async def _join(self, spec: StreamSpec) -> None:
        archive = self._archive_factory(spec)
        await archive.open()  # recovers a crash's .part first: the files are complete
        member = Member(spec, Channel.of(spec), archive, self.data_dir / spec.name)
        overlap = overlap_ids(self.timing.fill_overlap)
        record, newest, ids = await asyncio.to_thread(_read_back, member.stream_dir, overlap)
        point = resume.resume_point(record, newest)
        member.complete_to = point
        member.filling = record is not None and record.filling
        member.newest = newest
        for status_id in ids:
            member.seen.add(status_id)
        saved = await read_saved_point(self._saved_point, spec.name,
                                       get_logger(stream=spec.name))
        if saved is not None and saved > (point or 0):
            # Another host's files are complete up to `saved`: the next fill starts there.
            member.complete_to, member.filling = saved, False
            point = saved
            get_logger(stream=spec.name).info("resume_point_taken_over", resume_at=str(saved))
        self.streams[spec.name] = member
        self.log.info("member_joined", stream=spec.name, channel=member.channel.describe(),
                      resume_at=str(point) if point is not None else None)
        if self.socket.ws is not None and self._live_from is not None:
            now = id_at(int(time.time() * 1000))
            await self._prepare([member], now)
            await self._subscribe(self.socket.ws, member)
            member.archive.streaming()
            self._start_fill(member, now)

    @staticmethod
    def _marked(member: Member) -> None:
        """Tell the archive where the stream would resume once what it wrote so far is in
        the file (cluster mode saves it for a host that takes the stream over)."""
        point = member.resume_at()
        if point is not None:
            member.archive.mark(str(point))

    async def _move(self, member: Member, spec: StreamSpec) -> None:
        """A new tag or list: one unsubscribe, one subscribe, on the open socket. What the
        stream asked for before is no guide to the new channel: it is complete from now."""
        ws = self.socket.ws
        await self._cancel_fill(member)
        await self._unsubscribe(ws, member)
        member.spec, member.channel = spec, Channel.of(spec)
        member.seen = resume.Seen()
        member.complete_to, member.filling = id_at(int(time.time() * 1000)), False
        await asyncio.to_thread(resume.save_record, member.stream_dir, member.record())
        self._marked(member)
        self.log.info("channel_changed", stream=spec.name, channel=member.channel.describe())
        if ws is not None:
            await self._subscribe(ws, member)

    async def _drop(self, name: str) -> None:
        member = self.streams.pop(name)
        await self._cancel_fill(member)
        await self._unsubscribe(self.socket.ws, member)
        await member.archive.close()

    # -- the socket's life -----------------------------------------------------------------

    async def opened(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """A new socket: each member's resume point is written down first, then everyone
        subscribes, then the fills begin."""
        self.token_refused = None
        self.keys = {}
        self._live_from = id_at(int(time.time() * 1000))
        members = list(self.streams.values())
        await self._prepare(members, self._live_from)
        for member in members:
            await self._subscribe(ws, member)
        for member in members:
            member.archive.streaming()
        for member in members:
            self._start_fill(member, self._live_from)

    async def closed(self) -> None:
        """The socket is gone: fills stop (the next socket starts them again from where
        they got to) and nothing is subscribed."""
        self._live_from = None
        self.keys = {}
        for member in self.streams.values():
            await self._cancel_fill(member)

    def down(self, reason: str, error: str | None = None) -> None:
        for member in self.streams.values():
            member.archive.not_streaming(reason, error)

    async def _prepare(self, members: list[Member], now: int) -> None:
        """Before subscribing: each member's record says where its fill starts (durably, so
        a crash during the fill resumes it), or, for a stream that never ran, that it is
        complete from `now` (the id of this moment)."""
        for member in members:
            point = member.resume_at()
            if point is None:
                member.complete_to, member.filling = now, False
            else:
                member.complete_to, member.filling = point, True
        records = [(m.stream_dir, m.record()) for m in members]
        await asyncio.to_thread(_save_all, records)
        for member in members:
            self._marked(member)

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse | None, member: Member
                         ) -> None:
        key = member.channel.key
        names = self.keys.setdefault(key, set())
        first = not names
        names.add(member.spec.name)
        member.archive.asking(self._provenance(member))
        if first and self.socket.hangup.sendable(ws):
            await ws.send_str(member.channel.message("subscribe"))
            self.log.info("subscribed", stream=member.spec.name,
                          channel=member.channel.describe())

    async def _unsubscribe(self, ws: aiohttp.ClientWebSocketResponse | None, member: Member
                           ) -> None:
        key = member.channel.key
        names = self.keys.get(key)
        if names is None:
            return
        names.discard(member.spec.name)
        if names:
            return  # another stream still wants this channel
        del self.keys[key]
        if self.socket.hangup.sendable(ws):
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await ws.send_str(member.channel.message("unsubscribe"))
            self.log.info("unsubscribed", stream=member.spec.name,
                          channel=member.channel.describe())

    def _provenance(self, member: Member) -> dict[str, Any]:
        return {
            "source": "mastodon",
            "instance": str(self.instance.base),
            "endpoint": self.socket.url,
            "credential": self.credential.name,
            "params": member.channel.describe(),
        }

    # -- frames ------------------------------------------------------------------------------

    async def frame(self, text: bytes) -> None:
        """One frame from the socket, to every member whose channel it names."""
        try:
            frame = parse_frame(text)
        except NotAFrame as e:
            self.refuse_everywhere(f"a frame that is not JSON ({e}): {len(text)} bytes")
            return
        key = key_of(frame.get("stream"))
        if "error" in frame and "event" not in frame:
            self._in_band_error(frame, key)
            return
        names = self.keys.get(key) if key is not None else None
        if not names:
            self.unrouted += 1
            return
        status_id = update_id(frame)
        for name in list(names):
            member = self.streams.get(name)
            if member is not None:
                await self._store_live(member, text, status_id)

    async def _store_live(self, member: Member, text: bytes, status_id: int | None) -> None:
        if status_id is not None:
            if status_id in member.seen:
                member.duplicates += 1
                return
            member.seen.add(status_id)
            if member.newest is None or status_id > member.newest:
                member.newest = status_id
        if await self._store(member, [text], int(status_id is not None)):
            member.stores += 1
            if member.stores % PRUNE_EVERY == 0 and not member.filling and member.newest:
                member.seen.forget_below(
                    member.newest - 2 * overlap_ids(self.timing.fill_overlap))

    async def _store(self, member: Member, lines: list[bytes], updates: int) -> bool:
        try:
            await member.archive.write(lines, updates)
        except ArchiveError as e:
            # The archive keeps what it took and retries by itself; these it refused.
            if member.error is None:
                get_logger(stream=member.spec.name).error("archive_refused", error=str(e))
            member.refused += len(lines)
            member.error = str(e)
            return False
        if member.error is not None and member.error.startswith("archive"):
            member.error = None
        member.messages += len(lines)
        member.tweets += updates
        member.bytes += sum(map(len, lines)) + len(lines)
        self._marked(member)
        return True

    def _in_band_error(self, frame: dict[str, Any], key: Key | None) -> None:
        self.frame_errors += 1
        text = f"the instance said: {frame.get('error')} (status {frame.get('status')})"
        names = sorted(self.keys.get(key, ())) if key is not None else []
        if names:
            for name in names:
                self.streams[name].frame_error = text
                get_logger(stream=name).error("stream_error", error=text)
        else:
            self.log.error("stream_error", error=text)
            self.socket.status.last_error = text

    def refuse_everywhere(self, why: str) -> None:
        """A frame no member can take: on each member's record, not silent."""
        self.log.warning("frame_refused", why=why)
        for member in self.streams.values():
            member.archive.refused(why)

    # -- fills -----------------------------------------------------------------------------

    def _start_fill(self, member: Member, live_from: int) -> None:
        """Fill the member's gap up to `live_from`, the id of the moment it subscribed."""
        if not member.filling or member.complete_to is None:
            return
        member.fill_task = asyncio.create_task(
            self._fill(member, member.complete_to, live_from), name=f"fill:{member.spec.name}")

    async def _fill(self, member: Member, point: int, live_from: int) -> None:
        log = get_logger(stream=member.spec.name)
        overlap = overlap_ids(self.timing.fill_overlap)
        log.info("fill_started", after_id=str(point), overlap=self.timing.fill_overlap)

        async def store(lines: list[bytes]) -> bool:
            return await self._store(member, lines, len(lines))

        async def progressed(newest: int) -> None:
            # Every status of the page is stored now, by this fill or before it.
            member.newest = max(member.newest or 0, newest)
            member.complete_to = max(member.complete_to or 0, newest)
            await asyncio.to_thread(resume.save_record, member.stream_dir, member.record())
            self._marked(member)

        result: FillResult = await fill(
            self.instance, member.channel, after=max(0, point - overlap),
            until=live_from + overlap, seen=member.seen, store=store, progressed=progressed,
            max_pages=self.timing.fill_max_pages, retry_wait=self.fill_retry_wait,
        )
        member.complete_to = max(i for i in (live_from, member.newest, member.complete_to)
                                 if i is not None)
        member.filling = False
        await asyncio.to_thread(resume.save_record, member.stream_dir, member.record())
        self._marked(member)
        member.seen.forget_below(member.complete_to - 2 * overlap)
        member.archive.refilled(result.refilled, UNRECOVERABLE)
        if result.error is None:
            if member.error is not None and member.error.startswith("gap fill"):
                member.error = None
            log.info("fill_done", stored=result.stored, pages=result.pages)
        else:
            member.error = f"gap fill incomplete: {result.error}"
            log.warning("fill_incomplete", stored=result.stored, pages=result.pages,
                        refilled=result.refilled, error=result.error)

    async def _cancel_fill(self, member: Member) -> None:
        task, member.fill_task = member.fill_task, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    # -- status ----------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self.streams

    def members(self) -> list[str]:
        return list(self.streams)

    def published(self, name: str) -> int:
        member = self.streams.get(name)
        return member.archive.published if member is not None else 0

    def rules_in_use(self) -> set[str]:
        return set()  # nothing is held at the instance on the streams' behalf

    def member_status(self, name: str) -> StreamStatus:
        """A member's status: the connection's state, the member's own counts."""
        member = self.streams[name]
        conn = self.socket.status
        return conn.covered(
            member.archive.coverage_shown(),
            messages=member.messages,
            tweets=member.tweets,
            bytes=member.bytes,
            last_error=(member.error or member.frame_error or self.token_refused
                        or conn.last_error),
            connection=self.connection_status(),
        )

    def connection_status(self) -> ConnectionStatus:
        conn = self.socket.status
        return ConnectionStatus(
            name=self.name,
            state=conn.state,
            messages=conn.messages,
            unrouted=self.unrouted,
            errors=self.frame_errors,
            reconnects=conn.reconnects,
            rules=len(self.keys),  # the channels subscribed on the socket
            foreign_rules=[],
            rules_problem=None,  # a refused token is each member's last_error
        )


def _read_back(stream_dir: Path, overlap: int
               ) -> tuple[resume.Record | None, int | None, list[int]]:
    record = resume.load_record(stream_dir)
    return (record, *resume.read_back(stream_dir, record, overlap))


def _save_all(records: list[tuple[Path, resume.Record | None]]) -> None:
    for stream_dir, record in records:
        if record is not None:
            resume.save_record(stream_dir, record)
