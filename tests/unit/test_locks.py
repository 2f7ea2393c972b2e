"""Credential locks hold across open files, in one process; tests/system/test_locks.py has
the holder in another process."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfmd.locks import CredentialBusy, CredentialLock


def test_second_holder_is_refused_and_named(tmp_path: Path) -> None:
    first = CredentialLock(tmp_path, "default")
    first.acquire("alpha")
    second = CredentialLock(tmp_path, "default")
    with pytest.raises(CredentialBusy, match="stream 'alpha'"):
        second.acquire("beta")
    first.release()
    second.acquire("beta")
    assert second.held
    second.release()


def test_other_credentials_are_independent_and_names_are_safe(tmp_path: Path) -> None:
    a = CredentialLock(tmp_path, "a/../b")
    b = CredentialLock(tmp_path, "b")
    a.acquire("x")
    b.acquire("y")
    assert a.path.parent == tmp_path
    a.release()
    b.release()


