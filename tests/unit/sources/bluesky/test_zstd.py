"""Jetstream's zstd frames: the shipped dictionary, a round trip, and bombs refused."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest
import zstandard

from sfmd.sources.bluesky import zstd

EVENT = b'{"did":"did:plc:abc","time_us":1725911162329308,"kind":"commit","commit":{}}'


def test_the_shipped_dictionary_is_jetstream_s() -> None:
    data = resources.files("sfmd.sources.bluesky").joinpath("legacy_subscribe.zdict")
    assert hashlib.sha256(data.read_bytes()).hexdigest() == zstd.DICTIONARY_SHA256
    assert zstd.dictionary().dict_id() == 1612007021


def test_an_event_round_trips_and_is_smaller_with_the_dictionary() -> None:
    frame = zstd.compressor().compress(EVENT)
    assert zstd.inflate(frame, zstd.decompressor()) == EVENT
    assert len(frame) < len(zstandard.ZstdCompressor().compress(EVENT))


@pytest.mark.parametrize("says_its_size", [True, False])
def test_a_bomb_is_refused_without_inflating_it(says_its_size: bool) -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=says_its_size).compress(b"a" * (4 << 20))
    with pytest.raises(zstd.Refused):
        zstd.inflate(bomb, zstd.decompressor(), max_output=1 << 20)


def test_a_frame_that_is_not_zstd_is_refused() -> None:
    with pytest.raises(zstd.Refused):
        zstd.inflate(b'{"not": "zstd"}', zstd.decompressor())
