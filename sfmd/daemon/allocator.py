"""Keeping glibc's allocator from holding memory the daemon no longer uses.

Python takes its small objects from arenas of its own, but everything larger than 512 bytes
(every message, every batch joined for writing, every compressed block) comes from the C
library's `malloc`. glibc gives each thread that allocates an arena of its own, up to eight
per core, and keeps what is freed in each for that thread's next allocation. The archive's
worker threads join and compress batches, so each of them ends up holding its own pool of
freed blocks: at 5,000 streams nine arenas held 21.5 MB. Two arenas serve the loop and the
workers as well (their time goes to zlib, writes and fsync, not to malloc's lock), and a trim
every few seconds (`trim_interval`) hands the freed pages back to the system.

Elsewhere (musl, macOS) nothing is done. `MALLOC_ARENA_MAX` in the environment wins: glibc
reads it itself.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's `mallopt` parameter for the arena cap (malloc.h).
M_ARENA_MAX = -8
#: Arenas: one for the event loop, one shared by the worker threads.
ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # only glibc answers this
            return None
        return ctypes.CDLL("libc.so.6")
    except (ValueError, OSError, AttributeError):
        return None


_LIBC = _glibc()


def cap_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's arenas; call before the worker threads start. True if capped here."""
    if _LIBC is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give freed pages back to the system (`malloc_trim(0)`); a few ms at 5,000 streams,
    so call it from a worker thread. True if anything was given back."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
