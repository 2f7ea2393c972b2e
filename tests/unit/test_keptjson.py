"""JSON kept between requests is held at its own size, not in orjson's working buffer
(sfmd.keptjson)."""

from __future__ import annotations

import tracemalloc

import orjson

from sfmd.keptjson import kept_json

VALUE = "/var/lib/sfmd/data/sample-00001/2026/12/06/sample-00001-20261206T040000Z.jsonl.gz.part"


def held(make: object, count: int = 200) -> float:
    """Bytes held per result of `make()` while `count` of them are kept."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(count)]  # type: ignore[operator]
        return (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()


def test_kept_json_is_what_orjson_writes() -> None:
    for value in (VALUE, None, {"a": [1, "é\n\u2028"], "b": 1.5}, "x" * 3000):
        assert kept_json(value) == orjson.dumps(value)
        assert type(kept_json(value)) is bytes


def test_kept_json_holds_no_more_than_its_size() -> None:
    size = len(orjson.dumps(VALUE))
    assert held(lambda: kept_json(VALUE)) < size + 200
    assert held(lambda: kept_json({"text": "x" * 3000})) < 3000 + 300
