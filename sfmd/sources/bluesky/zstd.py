"""Jetstream's compression: each event one zstd frame made with a fixed dictionary.

The dictionary ships with sfmd (`legacy_subscribe.zdict`, see NOTICE.md beside it); its
sha256 is checked when it is loaded, so a damaged copy fails loudly instead of producing
garbage. Decompression caps its output: a frame that would inflate past `max_output` is
refused (a decompression bomb), never allocated.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

import zstandard

DICTIONARY_SHA256 = "b8d77b46933aceecbdd5275a01241efc985c970c78162b8150cf67a26522f70c"
#: The largest event sfmd takes: Jetstream's own events stay far below (a few KB, the largest
#: seen about 12 KB); anything bigger is refused as a bomb.
MAX_EVENT_BYTES = 1 << 20


class Refused(ValueError):
    """A frame that is not a valid zstd frame of an event, or that inflates too far."""


@functools.cache
def dictionary() -> zstandard.ZstdCompressionDict:
    data = resources.files(__package__).joinpath("legacy_subscribe.zdict").read_bytes()
    if hashlib.sha256(data).hexdigest() != DICTIONARY_SHA256:
        raise RuntimeError("sfmd's copy of Jetstream's zstd dictionary is damaged: reinstall")
    return zstandard.ZstdCompressionDict(data)


def decompressor() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(dict_data=dictionary())


def compressor(level: int = 3) -> zstandard.ZstdCompressor:
    """What a Jetstream instance compresses with (the fake instance uses it)."""
    return zstandard.ZstdCompressor(level=level, dict_data=dictionary())


def inflate(
    frame: bytes, decompressor: zstandard.ZstdDecompressor, max_output: int = MAX_EVENT_BYTES
) -> bytes:
    """One event's JSON text from its frame; `Refused` for a bomb or a broken frame."""
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise Refused(f"not a zstd frame: {e}") from None
    if size > max_output:
        raise Refused(f"the frame says it inflates to {size} bytes (the cap is {max_output})")
    try:
        # A frame that does not state its size is inflated with the cap as the limit.
        return decompressor.decompress(frame, max_output_size=max_output)
    except zstandard.ZstdError as e:
        raise Refused(f"cannot inflate: {e}") from None
