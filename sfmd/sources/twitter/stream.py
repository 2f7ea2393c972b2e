"""One Twitter stream connection's life: connect, read, hand messages on, back off, reconnect.

What differs between Twitter's streaming APIs is a `Dialect` (`v1.V1`, `v2.V2`): the request,
how the body is framed, and what a batch of messages means (tweets to count, notices to log,
an announced disconnect). The life around it is one: HTTP answers, stall detection, backoff
by Twitter's rules, a graceful stop that hands over everything already read.

A Stream knows nothing of the control API, supervisor or the registry's file: it gets a
target, a dialect, an HTTP session and a sink, and it reports status. That is what lets the
same code run as a task in the daemon or alone under `sfmd stream`. It never exits on a
transient error: every failure becomes a logged wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from sfmd.archive import ArchiveError, coverage
from sfmd.config import TimingConfig
from sfmd.credentials import Credential
from sfmd.sources.backoff import Backoff, BackoffPolicy, Failure
from sfmd.sources.base import Sink
from sfmd.sources.idle import IdleWatch
from sfmd.sources.life import ConnectionLife, let_go
from sfmd.sources.twitter.framing import FramingError
from sfmd.status import StreamStatus

# Answers that no amount of retrying will fix: a person must act. They are still retried (at
# the HTTP rate, never faster) so the stream heals by itself once the cause is fixed. A 404
# names the dialect's URL setting.
NEEDS_A_PERSON: dict[int, str] = {
    401: "unauthorized: check the credential's keys and this machine's clock",
    403: "forbidden: this credential may not use this endpoint",
    406: "not acceptable: the filter's parameters were refused",
    413: "too long: too many track phrases, follow ids or location boxes",
    416: "range unacceptable",
}
RATE_LIMITED = (420, 429)
READ_BUFSIZE = 1 << 20

#: An HTTP request: method, URL (with its query), headers, form body or None.
Request = tuple[str, str, dict[str, str], str | None]


class Framer(Protocol):
    """Splits a body into messages, whatever the chunking."""

    def feed(self, data: bytes) -> list[bytes]: ...

    @property
    def pending(self) -> int:
        """Bytes of a message begun but not finished."""
        ...


class Dialect(Protocol):
    """What one of Twitter's streaming APIs makes of a connection."""

    #: The config key a 404 points at.
    url_setting: str

    def request(self, target: StreamTarget) -> Request:
        """The request that opens the connection, signed."""
        ...

    def framer(self) -> Framer: ...

    def examine(
        self, messages: list[bytes], log: Any, status: StreamStatus
    ) -> tuple[int, Ended | None]:
        """The batch's tweets, having logged its notices; an `Ended` if a message announced
        the end of the connection (the server closes it next)."""
        ...


@dataclass(frozen=True)
class StreamTarget:
    """What one connection asks for: everything the stream sends to Twitter."""

    name: str
    endpoint: str  # "filter" | "sample"
    params: dict[str, str]
    credential: Credential


@dataclass(frozen=True)
class StreamTiming:
    stall_timeout: float = 90.0
    connect_timeout: float = 30.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)

    @classmethod
    def from_config(cls, timing: TimingConfig) -> StreamTiming:
        return cls(
            stall_timeout=timing.stall_timeout,
            connect_timeout=timing.connect_timeout,
            backoff=BackoffPolicy.from_config(timing),
        )


class Ended(Exception):
    """One connection ended; carries how to back off and what to report."""

    def __init__(self, kind: Failure, reason: str, *, reset_ok: bool = True) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.reset_ok = reset_ok


#: What ends one connection (`Stream._ended_by` says how); anything else is a bug.
ENDINGS = (Ended, TimeoutError, aiohttp.ClientError, OSError, FramingError, ArchiveError)


class Stream(ConnectionLife):
    def __init__(
        self,
        target: StreamTarget,
        dialect: Dialect,
        *,
        session: aiohttp.ClientSession,
        sink: Sink,
        timing: StreamTiming | None = None,
        log_key: str = "stream",
    ) -> None:
        super().__init__(target.name, sink, log_key=log_key)
        self.target = target
        self.dialect = dialect
        self.session = session
        self.timing = timing or StreamTiming()
        self.backoff = Backoff(self.timing.backoff)
        self._healthy = False  # this connection delivered a message: backoff may reset
        self._response: aiohttp.ClientResponse | None = None

    # -- start and stop --------------------------------------------------------------------

    async def _interrupt(self) -> bool:
        """While reading, the response is closed so the read loop ends after handing its
        last batch to the sink; cancelling there could drop a batch mid-write."""
        if self._response is None:
            return False
        # close() alone would hand the read loop aiohttp's one module-level "Connection
        # closed" exception; each raise adds this connection's frames (response, parser,
        # last chunk) to its __traceback__, which lives forever: ~10 KB per reconnect.
        self._response.content.set_exception(aiohttp.ClientConnectionError("stream stopped"))
        self._response.close()
        return True

    async def retarget(self, target: StreamTarget, grace: float = 5.0) -> None:
        """Reconnect at once with new settings, keeping the counters and the sink open.

        The old connection ends as in `stop` (what was read is handed over first), so a
        filter change costs one reconnect and no file: the archive never notices.
        """
        self.sink.not_streaming(coverage.RECONNECT, "the filter changed")

        def change() -> None:
            self.target = target

        await self.restart(grace, change)

    # -- the main loop -----------------------------------------------------------------

    async def run(self, delay: float = 0.0) -> None:
        """Stream until stopped. Cancelling closes the connection; the caller closes the sink."""
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            while True:
                await self._hold_if_fenced()
                try:
                    await self._connect_and_read()
                    ended = Ended(Failure.NETWORK, "the server ended the stream")
                except ENDINGS as e:
                    ended = self._ended_by(e)
                    let_go(e)
                if self._stopping:
                    return
                await self._wait_after(ended)
                await self._until_sink_takes_messages()
        finally:
            self._stopped()

    def _ended_by(self, error: BaseException) -> Ended:
        """What a connection's exception means for the next attempt."""
        if isinstance(error, Ended):
            return error
        if isinstance(error, aiohttp.ServerTimeoutError):
            return Ended(
                Failure.NETWORK,
                f"stall: no data for {self.timing.stall_timeout:g} s (keep-alives included)",
            )
        if isinstance(error, TimeoutError):
            return Ended(Failure.NETWORK, "connect timed out")
        if isinstance(error, aiohttp.ClientError | OSError):
            return Ended(Failure.NETWORK, f"network error: {_describe(error)}")
        if isinstance(error, FramingError):
            return Ended(Failure.NETWORK, f"framing error: {error}")
        assert isinstance(error, ArchiveError)
        # Nothing can be stored: drop the connection rather than pretend, and try again at
        # the HTTP rate so a freed disk is picked up within minutes.
        self.log.error("archive_error", error=str(error))
        return Ended(Failure.HTTP, f"archive: {error}", reset_ok=False)

    async def _wait_after(self, ended: Ended) -> None:
        """One line says it all: the disconnect, its reason, the backoff wait (and the
        same failure again is folded, see `ConnectionLife`)."""
        if ended.reset_ok and self._healthy:
            self.backoff.reset()
        wait = self.backoff.failure(ended.kind)
        self._failed(ended.reason, ended.kind.value, wait)
        limited = ended.kind is Failure.RATE_LIMIT
        self.sink.not_streaming(coverage.RATE_LIMITED if limited else coverage.BACKOFF,
                                ended.reason)
        await asyncio.sleep(wait)

    async def _until_sink_takes_messages(self) -> None:
        """Connect only once the archive can store again: a connection opened while the
        disk is full would lose its first reads (the archive retries by itself)."""
        while self.sink.error is not None:
            wait = self.backoff.failure(Failure.HTTP)
            self._failed(f"the archive refuses writes: {self.sink.error}", Failure.HTTP.value,
                         wait, event="waiting_for_archive", error=f"archive: {self.sink.error}")
            await asyncio.sleep(wait)

    # -- one connection --------------------------------------------------------------------

    async def _connect_and_read(self) -> None:
        self._healthy = False
        method, url, headers, body = self.dialect.request(self.target)
        # No `sock_read`: it makes a timer per chunk received. `_read` runs an IdleWatch.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timing.connect_timeout)
        endpoint = url.split("?")[0]
        self._attempting(endpoint=self.target.endpoint, url=endpoint)
        self.sink.asking({
            "source": "twitter",
            "endpoint": endpoint,
            "credential": self.target.credential.name,
            "params": dict(self.target.params),
        })
        # The answer's headers must come as the body's bytes must: within the stall timeout
        # (after the connect's own), or the connection is dead.
        try:
            async with asyncio.timeout(self.timing.connect_timeout + self.timing.stall_timeout):
                response = await self.session.request(
                    method, url, data=body, headers=headers, timeout=timeout,
                    read_bufsize=READ_BUFSIZE,
                )
        except TimeoutError:
            raise aiohttp.ServerTimeoutError("no answer within the stall timeout") from None
        async with response as resp:
            if resp.status != 200:
                raise await self._http_error(resp)
            self._streaming(status=resp.status)
            self.sink.streaming()
            self._response = resp
            try:
                with IdleWatch(functools.partial(_stalled, resp),
                               self.timing.stall_timeout) as watch:
                    await self._read(resp, watch)
            finally:
                self._response = None

    async def _http_error(self, resp: aiohttp.ClientResponse) -> Ended:
        snippet = await _body_snippet(resp)
        status = resp.status
        if status in RATE_LIMITED:
            self.log.warning("rate_limited", status=status, body=snippet)
            return Ended(Failure.RATE_LIMIT, f"HTTP {status}: rate limited ({snippet})")
        hint = (
            f"not found: check {self.dialect.url_setting}"
            if status == 404
            else NEEDS_A_PERSON.get(status)
        )
        if hint:
            self.log.error("http_error", status=status, needs_a_person=hint, body=snippet)
            return Ended(Failure.HTTP, f"HTTP {status}: {hint}")
        self.log.warning("http_error", status=status, body=snippet)
        return Ended(Failure.HTTP, f"HTTP {status} {resp.reason or ''}".strip())

    async def _read(self, resp: aiohttp.ClientResponse, watch: IdleWatch) -> None:
        framer = self.dialect.framer()
        examine = self.dialect.examine
        log = self.log
        status = self.status
        ending: Ended | None = None  # a message announced the end: raised once it comes
        sink = self.sink
        try:
            async for chunk in resp.content.iter_any():
                watch.frame()  # keep-alives included
                messages = framer.feed(chunk)
                # The messages are copies: a quiet stream would otherwise hold its last chunk
                # until the next one came (4.8 MB of tweets twice over at 1,000 streams).
                del chunk
                if not messages:
                    continue
                tweets, announced = examine(messages, log, status)
                ending = announced or ending
                size = sum(map(len, messages)) + len(messages)
                await sink.write(messages, tweets)
                status.messages += len(messages)
                status.tweets += tweets
                status.bytes += size
                self._healthy = True
        except aiohttp.ClientPayloadError as e:
            if ending is None:
                raise Ended(Failure.NETWORK, f"connection cut mid-body: {_describe(e)}") from None
        finally:
            if framer.pending:
                self.log.warning("partial_message_dropped", bytes=framer.pending)
        if ending is not None:
            raise ending


async def _stalled(resp: aiohttp.ClientResponse) -> None:
    """End a connection that sent nothing for the stall timeout: the read loop raises the
    same `ServerTimeoutError` aiohttp's own read timeout would have."""
    resp.content.set_exception(aiohttp.ServerTimeoutError("no data within the stall timeout"))
    resp.close()


async def _body_snippet(resp: aiohttp.ClientResponse, limit: int = 300) -> str:
    """The start of an error body, on one line, for the log (Twitter's 401 body is HTML)."""
    with contextlib.suppress(Exception):
        raw = await resp.content.read(limit)
        return " ".join(raw.decode("utf-8", "replace").split())[:limit]
    return ""


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text
