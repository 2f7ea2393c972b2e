"""Quiet streams' batches written together on a shared tick (sfmd.archive.tick), on real
files."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfmd.archive import tick
from sfmd.archive.naming import interval_start
from sfmd.archive.partfile import _PartFile
from tests.helpers.archive import Clock, batch, make_archive, tweet
from tests.helpers.waits import wait_until


@given(
    first=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    flush=st.sampled_from([0.02, 0.1, 1.0, 5.0]),
)
def test_a_tick_is_never_after_the_flush_deadline_nor_much_before(
    first: float, flush: float
) -> None:
    at = tick.tick_at(first, flush)
    assert first + flush - flush / tick.TICKS_PER_FLUSH - 1e-6 <= at <= first + flush + 1e-9


async def test_many_quiet_archives_share_worker_trips_and_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each archive's one message reaches its .part within the flush interval, in far fewer
    worker trips than archives."""
    trips: list[int] = []
    real_run = tick._run

    def counting_run(works: list[tick.Work]) -> list[BaseException | None]:
        trips.append(len(works))
        return real_run(works)

    monkeypatch.setattr(tick, "_run", counting_run)
    n = 150
    archives = [
        make_archive(tmp_path / f"d{i}", compress=True, flush_interval=0.2) for i in range(n)
    ]
    for archive in archives:
        await archive.open()
        await archive.write(batch(f"first{archive.data_dir.name}", 1), 1)
    # The first message opens each file (the writer task's work); later ones are the plain
    # case the tick writes.
    def first_on_disk() -> bool:
        return all(
            a.current_file is not None and a.current_file.exists()
            and a.current_file.stat().st_size > 0
            for a in archives
        )

    await wait_until(first_on_disk, timeout=5)
    trips.clear()
    loop = asyncio.get_running_loop()
    began = loop.time()
    for archive in archives:
        await archive.write(batch(archive.data_dir.name, 1), 1)

    def all_on_disk() -> bool:
        for archive in archives:
            part = archive.current_file
            assert part is not None
            data = zlib.decompressobj(31).decompress(part.read_bytes())
            if data != b"".join(
                m + b"\n" for m in [*batch(f"first{archive.data_dir.name}", 1),
                                     *batch(archive.data_dir.name, 1)]
            ):
                return False
        return True

    await wait_until(all_on_disk, timeout=5)
    assert loop.time() - began < 0.2 + 0.5  # the flush interval, and slack for a busy machine
    assert sum(trips) == n
    assert len(trips) <= 2 * -(-n // tick.TRIP_SIZE) + 2  # a tick or two, a few trips each
    for archive in archives:
        await archive.close()


async def test_a_disk_failure_at_the_tick_is_retried_like_the_writers_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the disk refuses at the tick is kept, the file cut back to its last whole
    batch, write() refuses more while it waits, and the retry stores it exactly once."""
    archive = make_archive(tmp_path, compress=False, flush_interval=0.1)
    await archive.open()
    await archive.write([b"one"], 1)
    await wait_until(lambda: archive.current_file is not None, timeout=5)
    first = archive.current_file
    assert first is not None
    await wait_until(lambda: first.exists() and first.read_bytes() == b"one\n", timeout=5)

    real_append = _PartFile.append
    refused: list[bytes] = []

    def failing_append(self: _PartFile, data: bytes, messages: int, tweets: int) -> None:
        if not refused:
            refused.append(data)
            raise OSError(28, "No space left on device")
        real_append(self, data, messages, tweets)

    monkeypatch.setattr(_PartFile, "append", failing_append)
    await archive.write([b"two"], 1)
    await wait_until(lambda: archive.error is None and refused != [], timeout=5)
    published = await archive.close()
    assert published is not None
    stored = b"".join(p.read_bytes() for p in sorted(tmp_path.rglob("*.jsonl")))
    assert stored.count(b"one\n") == 1
    assert stored.count(b"two\n") == 1
    assert refused == [b"two\n"]


async def test_the_flush_bound_holds_across_a_boundary_while_the_old_file_waits(
    tmp_path: Path,
) -> None:
    """A boundary turns the file over (the writer task's work, not the tick's) and the old
    file waits for its turn in the publish spread: meanwhile each message still reaches its
    file on disk within the flush interval, not at the writer's next wake-up for the
    publish (seconds later) or for the clock (`_max_sleep`, 5 s here)."""
    save, flush = 600, 0.1
    clock = Clock()
    clock.align(save, into=save - 0.3)  # 0.3 s before a boundary
    boundary = interval_start(clock(), save) + save
    # Stream "s1" publishes 4.7 s after the boundary with a 60 s spread.
    archive = make_archive(tmp_path, save_interval=save, clock=clock, flush_interval=flush,
                           publish_spread=60)
    await archive.open()
    sent = [tweet("across", i) for i in range(24)]
    for message in sent:  # every 50 ms, from 0.3 s before the boundary to 0.9 s after it
        await archive.write([message], 1)
        await asyncio.sleep(0.05)  # pacing the messages, not waiting for the archive

    def on_disk() -> bytes:
        return b"".join(zlib.decompressobj(31).decompress(p.read_bytes())
                        for p in sorted(tmp_path.rglob("*.jsonl.gz.part")))

    everything = b"".join(m + b"\n" for m in sent)
    # 2 s: the flush interval and slack for a busy machine, well before the wake-ups above.
    await wait_until(lambda: on_disk() == everything, timeout=2.0,
                     what="every message in its .part within the flush interval")
    assert clock() < boundary + 4.0  # the old file is still waiting: its publish did not help
    assert len(list(tmp_path.rglob("*.jsonl.gz.part"))) == 2  # the old file and the new one
    published = await archive.close()
    assert published is not None
