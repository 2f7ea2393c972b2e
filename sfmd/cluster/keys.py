"""Names that may hold any character (slots carry credential names) as NATS KV keys.

A KV key is `[-/_=.A-Za-z0-9]+` and `.` separates subject tokens; credential names may hold
spaces, colons or any letter. So every byte outside `[A-Za-z0-9_-]` is written `=XX` (its
UTF-8 bytes in hex, like quoted-printable): readable for ordinary names, reversible for all,
one subject token always, and two different names never share a key.
"""

from __future__ import annotations

import re

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


def encode_key(name: str) -> str:
    """`name` as one KV key token; "" is refused (a key cannot be empty)."""
    if not name:
        raise ValueError("an empty name has no key")
    return "".join(chr(b) if b in _PLAIN else f"={b:02X}" for b in name.encode("utf-8"))


def decode_key(key: str) -> str:
    """The name `encode_key` turned into `key`."""
    raw = bytearray()
    index = 0
    while index < len(key):
        match = _ESCAPE.match(key, index)
        if match:
            raw.append(int(match.group(1), 16))
            index = match.end()
        else:
            raw.extend(key[index].encode("ascii"))
            index += 1
    return raw.decode("utf-8")
