"""Fixtures every test folder may use: credentials, a fake API on a real loopback socket, and
a collector put back as it was.

Helpers (waits, configs, the daemon, its clients) are in `tests.helpers`; only fixtures are
here, so no test module imports a conftest.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sfmd.credentials import Credential, load_credentials
from sfmd.fake import FakeAPI
from tests.helpers.config import write_credentials_file


@pytest.fixture
def credentials_file(tmp_path: Path) -> Path:
    return write_credentials_file(tmp_path)


@pytest.fixture
def credentials(credentials_file: Path) -> dict[str, Credential]:
    return load_credentials(credentials_file)


@pytest.fixture
async def fake_api(credentials: dict[str, Credential]) -> AsyncIterator[FakeAPI]:
    api = FakeAPI(credentials, record_bytes=True, keepalive_interval=0.25, message_size=600)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """For a test that freezes the collector: unfrozen after it, the thresholds put back."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
