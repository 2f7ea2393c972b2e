"""Argument types the two command lines (`sfmd`, `sfmctl`) share.

A module of its own so that the daemon's command line does not load sfmctl's (about 0.4 MB
of the daemon's memory) for one parser.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime


def moment(text: str) -> float:
    """An ISO 8601 date or date and time, as epoch seconds; UTC unless it names a zone."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 moment, e.g. 2026-12-04 or 2026-12-04T12:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
