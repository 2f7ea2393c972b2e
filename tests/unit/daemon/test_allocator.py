"""glibc's allocator: the arena cap and the trim (this machine's C library is glibc)."""

from __future__ import annotations

import os

import pytest

from sfmd.daemon import allocator


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def test_the_arenas_are_capped_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert allocator.cap_arenas() is _glibc()


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.cap_arenas() is False


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_trim_gives_freed_pages_back() -> None:
    if not _glibc():
        assert allocator.trim() is False
        return
    # 80 MB of blocks below malloc's mmap threshold, each followed by a small block that
    # stays: freeing the big ones leaves holes glibc keeps resident, which only a trim
    # hands back.
    big, pins = [], []
    for _ in range(1_600):
        big.append(bytes(50_000))
        pins.append(bytes(1_000))
    del big
    before = _rss()
    assert allocator.trim() is True
    assert before - _rss() > 40 << 20
    del pins
