"""File names, intervals and the publication spread (sfmd.archive.naming)."""

from __future__ import annotations

from pathlib import Path

from sfmd.archive import FileName, interval_start, spread_offset


def test_names_and_intervals() -> None:
    assert interval_start(1_700_000_123.9, 900) == 1_700_000_100
    assert interval_start(1_700_000_100, 900) == 1_700_000_100
    name = FileName("my-stream", 1_700_000_100, 0, True)
    assert name.filename == "my-stream-20231114T221500Z.jsonl.gz"
    assert name.directory(Path("d")) == Path("d/2023/11/14")
    assert name.with_seq(2).filename == "my-stream-20231114T221500Z.2.jsonl.gz"
    assert FileName("x", 0, 1, False).filename == "x-19700101T000000Z.1.jsonl"
    for text in (name.filename, name.with_seq(12).filename, "x-19700101T000000Z.1.jsonl"):
        parsed = FileName.parse(text)
        assert parsed is not None and parsed.filename == text
    for junk in (
        "manifest.jsonl",
        "x-20231314T220000Z.jsonl",  # month 13
        "x-20231114T220000Z.01.jsonl",
        "x-20231114T220000.jsonl",
        "-20231114T220000Z.jsonl",
        "x-20231114T220000Z.jsonl.part",
    ):
        assert FileName.parse(junk) is None, junk


def test_spread_offsets_are_fixed_per_name_and_fill_the_window() -> None:
    offsets = [spread_offset(f"s{i:04d}", 2.0) for i in range(1000)]
    assert offsets == [spread_offset(f"s{i:04d}", 2.0) for i in range(1000)]
    assert all(0 <= o < 2.0 for o in offsets)
    # Spread out, not bunched: every tenth of the window holds some streams.
    assert {int(o * 5) for o in offsets} == set(range(10))
    assert spread_offset("s0001", 0.0) == 0.0
