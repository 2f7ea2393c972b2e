"""Where the checkout's shipped files are, wherever a test module sits in the tree."""

from __future__ import annotations

from pathlib import Path

#: The repository root: etc/, docs/, systemd/, supervisor.d/ are read from here.
REPO = Path(__file__).resolve().parents[2]
