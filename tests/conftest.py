"""Fixtures every test folder may use: credentials and a fake API on a real loopback socket.

Helpers (waits, configs, the daemon, its clients) are in `tests.helpers`; only fixtures are
here, so no test module imports a conftest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
