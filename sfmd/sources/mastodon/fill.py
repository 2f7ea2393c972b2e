"""The gap fill: what a stream missed while it was not subscribed, read from its timeline.

Mastodon's streaming server replays nothing, so after every (re)subscription the stream asks
its REST timeline for everything after its resume point less the overlap (`min_id`, 40 at a
time, paging forward), and stores each status it has not stored yet, as a line of the same
shape as a streamed `update` plus `"backfill": true`. Paging ends at an empty page, or once
a page reaches the moment the stream subscribed again (later statuses arrive live), plus the
overlap for the instance's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sfmd.sources.mastodon.channels import Channel
from sfmd.sources.mastodon.instance import Instance, InstanceError
from sfmd.sources.mastodon.resume import Seen
from sfmd.sources.mastodon.statuses import backfill_line

PAGE = 40  # the most a timeline page holds

#: What a gap fill cannot fetch again: these events exist only on the streaming socket.
UNRECOVERABLE = ("delete", "status.update")


@dataclass
class FillResult:
    refilled: str  # "all", "some" or "none"
    stored: int  # statuses stored by this fill
    pages: int
    error: str | None = None  # why it could not finish


async def fill(
    instance: Instance,
    channel: Channel,
    *,
    after: int,
    until: int,
    seen: Seen,
    store: Callable[[list[bytes]], Awaitable[bool]],
    progressed: Callable[[int], Awaitable[None]],
    max_pages: int,
    retries: int = 3,
    retry_wait: float = 5.0,
) -> FillResult:
    """Store the statuses of `channel`'s timeline with ids above `after` not in `seen`, up to
    a page that reaches `until`; stops early at `max_pages` or when the instance refuses.

    `store` takes a page's new lines, oldest first, and says whether the archive took them;
    `progressed` hears the newest id each page reached, up to which the stream is now
    complete (the caller keeps it durably, so a fill cut short resumes from there)."""
    path, fixed = channel.timeline()
    stream = channel.stream_array()
    min_id, pages, stored, failures = after, 0, 0, 0
    while True:
        if pages >= max_pages:
            return FillResult("some" if stored else "none", stored, pages,
                              f"stopped after {max_pages} pages ([mastodon] fill_max_pages)")
        try:
            statuses = await instance.page(path, {**fixed, "min_id": str(min_id),
                                                  "limit": str(PAGE)})
        except InstanceError as e:
            failures += 1
            transient = e.status is None or e.status >= 500
            if transient and failures <= retries:
                await asyncio.sleep(retry_wait * failures)
                continue
            return FillResult("some" if stored else "none", stored, pages, str(e))
        failures = 0
        pages += 1
        if not statuses:
            return FillResult("all", stored, pages)
        ids: list[int] = []
        page: list[tuple[int, bytes]] = []
        for status in statuses:
            try:
                status_id = int(status["id"])
            except (KeyError, TypeError, ValueError):
                continue  # not a status: nothing to store, nothing to page by
            ids.append(status_id)
            if status_id not in seen:
                page.append((status_id, backfill_line(stream, status)))
        page.sort()  # oldest first, as they were published
        if page:
            if not await store([line for _, line in page]):
                return FillResult("some" if stored else "none", stored, pages,
                                  "the archive refused the statuses")
            for status_id, _ in page:
                seen.add(status_id)
            stored += len(page)
        newest = max(ids, default=min_id)
        if newest <= min_id:  # an instance that does not page forward: stop, do not loop
            return FillResult("some" if stored else "none", stored, pages,
                              "the timeline did not page forward from min_id")
        min_id = newest
        await progressed(newest)
        if newest >= until:
            return FillResult("all", stored, pages)
