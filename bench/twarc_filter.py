"""twarc 2.14's v1 `filter`, run against `sfmd fakeapi`: the collector sfmd is measured against.

Run by bench/compare.py as its own process (or by hand):
`python bench/twarc_filter.py --api URL --credentials FILE --credential NAME --track WORD
--output FILE --messages N [--lean]`.

Nothing of twarc is reimplemented. By default this runs twarc's own command line,
`twarc.command.main()` with `filter WORD --output FILE --log FILE --skip_key_validation`, so each
tweet goes through exactly what `twarc filter` does: `requests`' `iter_lines(chunk_size=1024)`,
`json.loads`, the protected-user check, `json.dumps` into the output file and one
`archived ID` log line. `--lean` instead loops over `Twarc.filter()` and writes
`json.dumps(tweet)` lines itself, without the per-tweet log line: twarc's library at its
fastest, the most generous comparison.

Two things are added around twarc, neither in its per-message path:
- a requests transport adapter, mounted on twarc's session for `https://stream.twitter.com/`,
  sends each request to the fake API instead. twarc (through requests_oauthlib) has already
  signed it for stream.twitter.com, which the fake API accepts.
- `Twarc.filter` is cut after N messages, since a stream never ends by itself. The clock
  stops when twarc's loop has written the N-th tweet and its output file is closed.

The keys come from the credentials file and reach twarc through the environment variables
its CLI reads (CONSUMER_KEY, ...), set inside this process only: never on a command line.
The report, one JSON line on stdout: `done` (CLOCK_MONOTONIC, comparable with the fake API's
log), `cpu` and `sys` (user+sys, and sys alone, seconds from sending the request), `rss_mb`
(peak), `messages` (lines in the output file).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # sfmd from this checkout

from sfmd.credentials import load_credentials

TWITTER_STREAM = "https://stream.twitter.com/"

#: os.times() when the stream request left, so CPU excludes imports and set-up.
_sent_at: list[os.times_result] = []


class ToFakeAPI(HTTPAdapter):
    """Sends requests signed for stream.twitter.com to the fake API's host and port."""

    def __init__(self, api: str) -> None:
        super().__init__()
        parts = urlsplit(api)
        self.scheme, self.netloc = parts.scheme, parts.netloc

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        request.url = urlunsplit((self.scheme, self.netloc, parts.path, parts.query, ""))
        if not _sent_at:
            _sent_at.append(os.times())
        return super().send(request, **kwargs)


def patch_twarc(api: str, messages: int) -> None:
    """Mount the adapter on every session twarc creates; stop `filter` after N messages."""
    from twarc.client import Twarc

    connect = Twarc.connect
    stream = Twarc.filter

    def connect_to_fake(self: Twarc) -> None:
        connect(self)
        self.client.mount(TWITTER_STREAM, ToFakeAPI(api))

    def first_n(self: Twarc, *args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from itertools.islice(stream(self, *args, **kwargs), messages)

    Twarc.connect = connect_to_fake  # type: ignore[method-assign]
    Twarc.filter = first_n  # type: ignore[method-assign]


def run_cli(track: str, output: Path, log: Path) -> None:
    """twarc's own `twarc filter`, argument parsing and output loop included."""
    if importlib.util.find_spec("six") is None:
        # twarc 2.14's CLI imports `six` (for its CSV output) without declaring it, and
        # python-dateutil 4 no longer brings it along; on Python 3 this is all it reads.
        six = types.ModuleType("six")
        six.string_types = (str,)  # type: ignore[attr-defined]
        sys.modules["six"] = six
    from twarc import command

    sys.argv = [
        "twarc", "filter", track, "--output", str(output), "--log", str(log),
        "--skip_key_validation",
    ]  # fmt: skip
    command.main()  # returns once the (cut) filter is exhausted; its file closes with it


def run_lean(track: str, output: Path) -> None:
    """twarc's client alone: the loop a script using `Twarc.filter()` would write."""
    from twarc.client import Twarc

    twarc = Twarc(validate_keys=False)  # keys from the environment, as the CLI reads them
    with output.open("w") as fh:
        for tweet in twarc.filter(track=track):
            print(json.dumps(tweet), file=fh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", required=True, help="the fake API's base URL")
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--credential", required=True, help="a table of the credentials file")
    parser.add_argument("--track", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--log", type=Path, help="twarc's log file (default: next to --output)")
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--lean", action="store_true", help="the client loop, no per-tweet log")
    args = parser.parse_args(argv)

    credential = load_credentials(args.credentials)[args.credential]
    os.environ.update(
        CONSUMER_KEY=credential.consumer_key,
        CONSUMER_SECRET=credential.consumer_secret,
        ACCESS_TOKEN=credential.access_token,
        ACCESS_TOKEN_SECRET=credential.access_token_secret,
    )
    patch_twarc(args.api, args.messages)
    if args.lean:
        run_lean(args.track, args.output)
    else:
        run_cli(args.track, args.output, args.log or args.output.with_suffix(".log"))
    done = time.monotonic()
    ended = os.times()
    began = _sent_at[0] if _sent_at else ended
    cpu = ended.user + ended.system - began.user - began.system
    with args.output.open("rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    report = {
        "done": done,
        "cpu": cpu,
        "sys": ended.system - began.system,
        "rss_mb": peak_rss_mb(),
        "messages": lines,
    }
    print(json.dumps(report))
    return 0


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
