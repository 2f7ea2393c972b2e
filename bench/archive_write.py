"""How fast one Archive stores tweet-sized messages, and how long the event loop ever stalls.

Run by hand: `python bench/archive_write.py [--seconds S] [--batch N] [--dir DIR]`. A stream
hands the archive what one socket read held, so messages arrive in batches of a few dozen.
The count includes close(): the last file's flush, fsync and rename.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from sfmd.archive import Archive
from sfmd.sources.twitter.framing import count_tweets

WORDS = (
    "the a stream tweet data archive python rain sun city vote game music news love "
    "today tomorrow happy great new live watch first time people world"
).split()


def fake_tweet(rng: random.Random, size: int = 4800) -> bytes:
    """A tweet-like JSON object of about `size` bytes: varied ids and text, repeated keys."""
    tweet = {
        "created_at": "Wed Oct 10 20:19:24 +0000 2018",
        "id": rng.getrandbits(62),
        "id_str": "",
        "text": " ".join(rng.choice(WORDS) for _ in range(30)),
        "user": {"id": rng.getrandbits(40), "screen_name": f"user{rng.randrange(10**6)}"},
        "entities": {"hashtags": [], "urls": [], "user_mentions": []},
        "lang": "en",
    }
    tweet["id_str"] = str(tweet["id"])
    raw = json.dumps(tweet)
    pad = max(0, size - len(raw) - 20)
    filler = " ".join(rng.choice(WORDS) for _ in range(pad // 5))[:pad]
    return json.dumps({**tweet, "extended": filler}).encode()


async def run(directory: Path, compress: bool, level: int, seconds: float, batch: int) -> None:
    rng = random.Random(1)
    pool = [fake_tweet(rng) for _ in range(2000)]
    archive = Archive(
        directory, f"bench{int(compress)}{level}", save_interval=3600,
        compress=compress, compress_level=level, count=count_tweets,
    )  # fmt: skip
    await archive.open()
    lag = 0.0
    stop = False

    async def ticker() -> None:  # the longest the loop was unable to run a 1 ms timer
        nonlocal lag
        while not stop:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lag = max(lag, time.perf_counter() - before - 0.001)

    tick = asyncio.create_task(ticker())
    sent = 0
    began = time.perf_counter()
    i = 0
    while time.perf_counter() - began < seconds:
        messages = pool[i : i + batch] or pool[:batch]
        i = (i + batch) % len(pool)
        await archive.write(messages, len(messages))
        sent += len(messages)
        await asyncio.sleep(0)  # a stream returns to the loop for every socket read
    published = await archive.close()
    elapsed = time.perf_counter() - began
    stop = True
    await tick
    assert published is not None and published.messages == sent
    stored = published.path.stat().st_size
    print(
        f"compress={compress!s:5} level={level}  {sent / elapsed:9,.0f} messages/s  "
        f"{published.bytes / elapsed / 1e6:6.0f} MB/s in  ratio {published.bytes / stored:4.1f}  "
        f"max loop stall {lag * 1000:5.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=50, help="messages per write() call")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a real disk)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for compress, level in ((False, 0), (True, 1), (True, 6)):
            directory = Path(tmp, f"run{int(compress)}{level}")
            asyncio.run(run(directory, compress, level, args.seconds, args.batch))
            shutil.rmtree(directory)  # a full tmpfs would skew the next run


if __name__ == "__main__":
    main()
