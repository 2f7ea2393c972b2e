"""`sfmd fakeapi`: the simulated APIs as a command, for demos, tests and dry runs.

`sfmd.cli` hands `sfmd fakeapi ...` here without importing this package otherwise, so
`sfmd run` and `sfmd stream` never load the fakes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sfmd.fake import twitter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfmd fakeapi", description="the bundled simulated streaming API, on loopback"
    )
    twitter.add_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    return int(twitter.run(args))
