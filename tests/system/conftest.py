"""Everything under tests/system runs real processes, sockets or supervisord: it is marked
`system`, so `pytest -m "not system"` (or `pytest tests/unit`) is the quick run.

The supervisord fixtures are here, not in tests/conftest.py, because only system tests
start one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.supervisord import Supervisord

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected under this folder `system`."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.system)


@pytest.fixture
def idle_supervisord() -> Iterator[Supervisord]:
    """A supervisord not started yet: set it up, then `.start()`. Stopped and removed after."""
    sd = Supervisord(Path(tempfile.mkdtemp(prefix="sd-")))
    try:
        yield sd
    finally:
        sd.stop()
        shutil.rmtree(sd.root, ignore_errors=True)


@pytest.fixture
def supervisord(idle_supervisord: Supervisord) -> Supervisord:
    """A running supervisord, stopped (with its programs) after the test."""
    idle_supervisord.start()
    return idle_supervisord
