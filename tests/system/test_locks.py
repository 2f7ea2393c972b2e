"""A credential lock held by another process refuses and names it, and dies with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sfmd.locks import CredentialBusy, CredentialLock


def test_lock_held_by_another_process_and_freed_when_it_dies(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sfmd.locks import CredentialLock\n"
        f"CredentialLock(Path({str(tmp_path)!r}), 'default').acquire('other')\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        lock = CredentialLock(tmp_path, "default")
        with pytest.raises(CredentialBusy, match=f"pid {proc.pid}"):
            lock.acquire("mine")
    finally:
        proc.kill()
        proc.wait()
    lock.acquire("mine")  # the kernel dropped the dead holder's lock
    lock.release()
