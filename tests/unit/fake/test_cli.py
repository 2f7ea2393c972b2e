"""`sfmd fakeapi` keeps its own collector from pausing the connections it paces."""

from __future__ import annotations

import asyncio
import gc

import pytest

from sfmd.fake import cli
from tests.helpers.heap import Node
from tests.helpers.waits import wait_until

pytestmark = pytest.mark.usefixtures("unfrozen")


def frozen(obj: object) -> bool:
    """Tracked by the collector but in no generation it walks: `gc.freeze` put it there."""
    return gc.is_tracked(obj) and all(o is not obj for o in gc.get_objects())


async def test_what_lives_is_frozen_again_and_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "FREEZE_INTERVAL", 0.05)
    collector = asyncio.create_task(cli._keep_collections_short())
    try:
        await wait_until(lambda: gc.get_freeze_count() > 0, what="the first settle")
        later = Node()  # what a connection made since holds
        assert not frozen(later)
        await wait_until(lambda: frozen(later), what="a later freeze")
    finally:
        collector.cancel()
