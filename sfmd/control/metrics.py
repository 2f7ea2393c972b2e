"""Prometheus metrics, read from the streams' own counters at scrape time.

Nothing on the byte path touches a metric: the streams already count messages, tweets and
bytes for their status, and those counters are written out as Prometheus text when /metrics
is asked. That keeps the hot path free and the numbers identical to `sfmctl status`.

The text is written directly rather than through prometheus-client's generate_latest, which
took 75-120 ms for the 11,000 samples of 1,000 streams (this takes about a tenth of that);
the tests read the page back with prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

from sfmd import __version__
from sfmd.status import SAMPLE_MOVING, STATES, ConnectionSample, StreamSample
from sfmd.turns import in_turns

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


_STREAM_COUNTERS = (
    ("messages", "Messages received and stored, keep-alives aside"),
    ("tweets", "Tweets received and stored"),
    ("bytes", "Bytes of messages stored, uncompressed"),
    ("files_published", "Files published (renamed from .part)"),
)
_CONNECTION_COUNTERS = (
    ("messages", "Messages received on the shared v2 filter connection"),
    ("unrouted", "Messages no stream's rules claimed (old rules, errors objects)"),
    ("errors", "errors objects the v2 API sent in the stream"),
)
_RECONNECTS_DOC = (
    "Connections opened after the first, by cause: failure (the one before was lost, refused "
    "or stalled) or planned (sfmd reconnected for new settings)"
)
#: Moments a silent stall shows in: alert on `time() - sample` growing.
_STREAM_MOMENTS = (
    ("last_message", "last_message_at",
     "Unix time of the last message the stream stored (absent: none since sfmd started)"),
    ("last_publish", "last_publish_at",
     "Unix time the stream last published a file (absent: none since sfmd started)"),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@functools.lru_cache(maxsize=8192)
def _state_lines(label: str, current: str) -> str:
    """A stream's five state samples, one of them 1: the same text until its state changes."""
    return "\n".join(
        f'sfmd_stream_state{{state="{state}",stream="{label}"}} {int(state == current)}'
        for state in STATES
    )


def _reconnects(name: str, labels: str, total: int, planned: int) -> tuple[str, str]:
    """The two samples of a reconnect counter: after a failure, and planned."""
    return (f'{name}{{cause="failure",{labels}}} {total - planned}',
            f'{name}{{cause="planned",{labels}}} {planned}')


def _family(lines: list[str], name: str, kind: str, doc: str) -> None:
    lines.append(f"# HELP {name} {doc}")
    lines.append(f"# TYPE {name} {kind}")


#: The stream families in page order, as (name, type, help, one line per stream): `stream_lines`
#: gives a stream's samples of each, in this order. A family of one line per stream keeps
#: its lines without the metric's name, which the page puts back (`page_parts`): a name
#: repeated on every stream's line was a quarter of what `Columns` keeps.
_STREAM_FAMILIES = (
    *((f"sfmd_stream_{attr}_total", "counter", doc, True) for attr, doc in _STREAM_COUNTERS),
    ("sfmd_stream_reconnects_total", "counter", _RECONNECTS_DOC, False),
    *((f"sfmd_stream_{metric}_timestamp_seconds", "gauge", doc, True)
      for metric, _, doc in _STREAM_MOMENTS),
    ("sfmd_stream_gap_seconds_total", "counter",
     "Seconds the stream was set but not collecting, by reason, since the daemon began", False),
    ("sfmd_stream_state", "gauge", "1 for the stream's current state", False),
    ("sfmd_stream_limit_undelivered", "gauge",
     "Undelivered tweets Twitter reported in limit notices on the current connection", True),
)


def stream_lines(s: StreamSample) -> tuple[str, ...]:
    """One stream's samples of each family in `_STREAM_FAMILIES`, each family's lines as one
    string ("" when it has none, as a moment that never happened), without the metric's name
    where the family has one line per stream. Written out in one expression: every stream's
    sample is new when every stream took a message since the last page."""
    label = _label(s.name)
    stream = f'stream="{label}"'
    messages, tweets, size, published, last_message, last_publish = _moved_lines(stream, s)
    return (
        messages,
        tweets,
        size,
        published,
        "\n".join(_reconnects(
            "sfmd_stream_reconnects_total", stream, s.reconnects, s.reconnects_planned)),
        last_message,
        last_publish,
        "\n".join(
            f'sfmd_stream_gap_seconds_total{{reason="{_label(reason)}",{stream}}} {seconds:.3f}'
            for reason, seconds in s.gap_seconds.items()) if s.gap_seconds else "",
        _state_lines(label, s.state),
        f"{{{stream}}} {s.limit_undelivered}",
    )


def _moved_lines(stream: str, s: StreamSample) -> tuple[str, str, str, str, str, str]:
    """The lines a message or a rotation moves on: messages, tweets, bytes, files published,
    and the last message's and publish's moments ("" for a moment that never happened), as
    `stream_lines` places them (`Columns.update` puts them in those columns)."""
    # Counts are written as integers: the text format's values are Go floats, which "12" is.
    last, published = s.last_message_at, s.last_publish_at
    return (f"{{{stream}}} {s.messages}", f"{{{stream}}} {s.tweets}", f"{{{stream}}} {s.bytes}",
            f"{{{stream}}} {s.files_published}",
            f"{{{stream}}} {last:.3f}" if last is not None else "",
            f"{{{stream}}} {published:.3f}" if published is not None else "")


#: A sample's fields a message or a rotation does not move: the rest are `_moved_lines`' own.
_UNMOVED = operator.itemgetter(*(
    i for i, f in enumerate(StreamSample._fields) if f not in SAMPLE_MOVING
))


def _only_moved(new: StreamSample, old: StreamSample) -> bool:
    """Whether `new` differs from `old` in nothing but what a message or a rotation moves
    on."""
    return bool(_UNMOVED(new) == _UNMOVED(old))


class Columns:
    """Each stream family's lines (`stream_lines`), one entry per stream, in the order of the
    samples last given (`update`).

    A sample is written again only when it is another object than the one at its place last
    time: the streams' side keeps a stream's sample until the stream changes. A family's text
    is then one join of its column, in C: at 5,000 streams, walking every stream's lines for
    each of ten families was a good part of a page.
    """

    def __init__(self) -> None:
        self.samples: list[StreamSample] = []
        self.columns: list[list[str]] = [[] for _ in _STREAM_FAMILIES]

    def update(self, samples: list[StreamSample]) -> Iterator[None]:
        """Bring the columns to `samples`, one stream written per step (the caller may take
        turns of the loop between two). A walk left halfway leaves the columns right for the
        samples they were written from."""
        old = self.samples
        if len(old) != len(samples):  # streams added or removed
            yield from self._move_to(samples)
            return
        # In place, one stream at a time, even when every stream changed: a second set of
        # columns made beside the first took the peak RSS at 1,000 streams from 89 to 92 MB.
        columns = self.columns
        messages, tweets, size, published, _, last_message, last_publish, *_ = columns
        for i in [i for i, (a, b) in enumerate(zip(samples, old, strict=True)) if a is not b]:
            sample = samples[i]
            if _only_moved(sample, old[i]):  # a message or a rotation: six lines of ten
                (messages[i], tweets[i], size[i], published[i], last_message[i],
                 last_publish[i]) = _moved_lines(f'stream="{_label(sample.name)}"', sample)
            else:
                for column, lines in zip(columns, stream_lines(sample), strict=True):
                    column[i] = lines
            old[i] = sample
            yield

    def _move_to(self, samples: list[StreamSample]) -> Iterator[None]:
        """New columns for `samples`, with the lines of each sample the old ones were
        written from (the same object: its stream did not change) taken from them. Adding
        one stream to 5,000 once wrote every stream's lines again, the whole page's work."""
        old = self.columns
        where = {id(sample): i for i, sample in enumerate(self.samples)}
        columns: list[list[str]] = [[] for _ in _STREAM_FAMILIES]
        for sample in samples:
            i = where.get(id(sample))
            if i is None:
                lines: Iterable[str] = stream_lines(sample)
            else:
                lines = [column[i] for column in old]
            for column, line in zip(columns, lines, strict=True):
                column.append(line)
            yield
        self.columns = columns
        self.samples = list(samples)


def page_parts(
    columns: Columns, connections: list[ConnectionSample], started: float
) -> Iterator[str]:
    """The page one metric family at a time (no newline after a family's last line), so that
    `Metrics.page` can give the event loop a turn between them: the text format keeps each
    family's samples together."""
    for (name, kind, doc, short), column in zip(_STREAM_FAMILIES, columns.columns, strict=True):
        # One join a family, its header first: each join or concatenation more was another
        # copy of the family's text, and the page is megabytes at 5,000 streams.
        head = f"# HELP {name} {doc}\n# TYPE {name} {kind}"
        yield ("\n" + name if short else "\n").join([head, *filter(None, column)])
    yield "\n".join(_connection_families(connections, started))


def _connection_families(
    connection_samples: list[ConnectionSample], started: float
) -> list[str]:
    lines: list[str] = []
    connections = [(c, _label(c.name)) for c in connection_samples]
    for attr, doc in _CONNECTION_COUNTERS:
        name = f"sfmd_v2_connection_{attr}_total"
        _family(lines, name, "counter", doc)
        lines += [f'{name}{{connection="{label}"}} {getattr(c, attr)}'
                  for c, label in connections]
    _family(lines, "sfmd_v2_connection_reconnects_total", "counter", _RECONNECTS_DOC)
    lines += [line for c, label in connections for line in _reconnects(
        "sfmd_v2_connection_reconnects_total", f'connection="{label}"', c.reconnects,
        c.reconnects_planned)]
    _family(lines, "sfmd_v2_connection_rules", "gauge", "Rules sfmd holds at the API")
    lines += [f'sfmd_v2_connection_rules{{connection="{label}"}} {c.rules}'
              for c, label in connections]
    _family(lines, "sfmd_uptime_seconds", "gauge", "Seconds since the daemon started")
    lines.append(f"sfmd_uptime_seconds {time.monotonic() - started}")
    _family(lines, "sfmd_build_info", "gauge", "sfmd's version")
    lines.append(f'sfmd_build_info{{version="{_label(__version__)}"}} 1')
    return lines


class Metrics:
    """The /metrics page: with 1,000 streams about 11,000 samples and a few ms to render.

    A page is reused for `max_age` seconds: scrapers poll every 15 s or more, so a
    second-old page is as good, and a busy scraper cannot eat the event loop. `ahead` gives
    the samples moved on ahead of a page, for `warm`.
    """

    def __init__(
        self,
        samples: Callable[[], Awaitable[list[StreamSample]]],
        started: float,
        max_age: float = 1.0,
        connections: Callable[[], Iterable[ConnectionSample]] = list,
        ahead: Callable[[], Awaitable[list[StreamSample]]] | None = None,
    ) -> None:
        self._samples = samples
        self._ahead = ahead
        self._moving = asyncio.Lock()  # the columns are brought to one set of samples at a time
        self._connections = connections
        self._started = started
        self.max_age = max_age
        self._page = b""
        self._rendered = -float("inf")
        self._building: asyncio.Future[bytes] | None = None  # a page being built (`page`)
        self._columns = Columns()  # the streams' lines of the last page (`page`)

    async def page(self) -> bytes:
        """The page, built with turns for the rest of the event loop (`turns`: every few ms,
        between two streams read or two metric families written), so a scrape of thousands
        of streams never holds the loop for long. Scrapes that come while one is built get
        that one's page."""
        now = time.monotonic()
        if now - self._rendered < self.max_age:
            return self._page
        if self._building is not None:
            return await asyncio.shield(self._building)
        self._building = asyncio.get_running_loop().create_future()
        try:
            parts: list[str] = []
            async with self._moving:
                await in_turns(self._columns.update(await self._samples()))
                await in_turns(page_parts(
                    self._columns, list(self._connections()), self._started), parts.append)
            self._page = "\n".join([*parts, ""]).encode()  # the last line ends too
            self._rendered = now
            self._building.set_result(self._page)
            return self._page
        except asyncio.CancelledError:
            self._building.cancel()
            raise
        except Exception as exc:
            self._building.set_exception(exc)
            self._building.exception()  # retrieved: a scrape nobody shared is not an error
            raise
        finally:
            self._building = None

    async def warm(self) -> None:
        """Bring the streams' lines to their samples moved on (`ahead`) before the next page,
        which then writes only what changed since (`sfmd.control.warm`). Nothing while a page
        is built: it brings them up to date itself."""
        if self._ahead is None or self._building is not None:
            return
        async with self._moving:
            await in_turns(self._columns.update(await self._ahead()), giving_way=True)
