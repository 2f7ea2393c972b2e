"""The control API's answers leave the daemon in as few writes as the kernel allows."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sfmd.control.api import room_for


def request_on(sock: socket.socket) -> Any:
    return SimpleNamespace(transport=SimpleNamespace(get_extra_info=lambda key: sock))


def test_a_big_answer_gets_a_send_buffer_to_hold_it() -> None:
    limit = int(Path("/proc/sys/net/core/wmem_max").read_text())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        before = ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        room_for(request_on(ours), 1000)  # fits already: nothing asked
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
        size = 3_300_000
        room_for(request_on(ours), size)
        # The kernel doubles what it is asked for (its bookkeeping) and caps it at wmem_max.
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= min(size, limit)
        if limit >= size:
            ours.setblocking(False)
            assert ours.send(b"x" * size) == size  # in one write

