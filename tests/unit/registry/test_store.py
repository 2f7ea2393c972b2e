"""The registry file: written whole before a change returns, refused when it cannot be
trusted (sfmd.registry.store)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from sfmd.registry import (
    Registry,
    RegistryError,
    StreamSpec,
    ValidationError,
    apply_patch,
    validate_stream,
    with_people_ids,
)
from sfmd.registry import spec as spec_module
from tests.helpers.specs import CREDS, filt, ids, ok

# --- the registry file -----------------------------------------------------------------------


def spec_of(name: str, credential: str = "default", active: bool = True) -> StreamSpec:
    return ok(filt(name=name, credential=credential, active=active))


def test_a_missing_file_is_an_empty_registry(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path / "state")
    assert registry.list() == []
    assert registry.path == tmp_path / "state" / "streams.json"
    assert not registry.path.exists()


def test_changes_are_on_disk_before_returning_and_load_back(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path / "new" / "state")  # folders made on first write
    registry.add(spec_of("zeta", "default"))
    registry.add(spec_of("alpha", "research"))
    document = json.loads(registry.path.read_text())
    assert document["version"] == 1
    assert [s["name"] for s in document["streams"]] == ["alpha", "zeta"]
    assert document["streams"][0] == registry.get("alpha").to_record()

    registry.replace(dataclasses.replace(registry.get("zeta"), track=("changed",)))
    registry.remove("alpha")
    again = Registry.load(registry.path.parent, credentials=CREDS)
    assert (
        again.list()
        == registry.list()
        == [dataclasses.replace(spec_of("zeta"), track=("changed",))]
    )
    assert os.listdir(registry.path.parent) == ["streams.json"]  # no temp file left


def test_the_first_change_after_loading_encodes_only_the_changed_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stream's line is encoded as the registry loads: the first change after start-up
    encoding every stream's at once was the slowest request of a minute at 5,000 streams."""
    registry = Registry.load(tmp_path)
    for spec in (spec_of("a"), spec_of("b", "research"), spec_of("c", active=False)):
        registry.add(spec)
    loaded = Registry.load(tmp_path, credentials=None)
    encoded: list[Any] = []
    real_dumps = spec_module.json.dumps

    def counted(value: Any, **kwargs: Any) -> str:
        encoded.append(value)
        return real_dumps(value, **kwargs)

    monkeypatch.setattr(spec_module.json, "dumps", counted)
    loaded.replace(dataclasses.replace(loaded.get("b"), track=("changed",)))
    assert [record["name"] for record in encoded] == ["b"]
    assert json.loads(loaded.path.read_text())["streams"][1]["track"] == ["changed"]


def test_the_listing_follows_every_change_and_is_the_callers_own(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path / "state")
    registry.add(spec_of("zeta"))
    first = registry.list()  # listed once: the order is kept until the next change
    registry.add(spec_of("alpha", "research"))
    assert [s.name for s in registry.list()] == ["alpha", "zeta"]
    changed = dataclasses.replace(registry.get("zeta"), track=("changed",))
    registry.replace(changed)
    assert registry.list()[1] is changed
    registry.remove("alpha")
    listed = registry.list()
    listed.clear()  # a caller's copy: the registry's own order is untouched
    assert registry.list() == [changed] and [s.name for s in first] == ["zeta"]


def test_get_replace_remove_of_an_unknown_name_raise_key_error(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path)
    with pytest.raises(KeyError):
        registry.get("nope")
    with pytest.raises(KeyError):
        registry.replace(spec_of("nope"))
    with pytest.raises(KeyError):
        registry.remove("nope")
    assert not registry.path.exists()


def test_adding_a_taken_name_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("news"))
    before = registry.path.read_bytes()
    with pytest.raises(ValidationError) as caught:
        registry.add(spec_of("news", "research"))
    assert caught.value.code == "name_taken"
    assert registry.path.read_bytes() == before
    assert registry.get("news").credential == "default"


def test_one_active_stream_per_credential_is_checked_on_request(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("first"))
    with pytest.raises(ValidationError) as caught:
        registry.check_credential_free(spec_of("second"))
    assert caught.value.code == "credential_in_use"
    assert caught.value.field == "credential"
    assert "in use by active stream 'first'" in caught.value.message

    registry.check_credential_free(spec_of("second", active=False))  # inactive may share it
    registry.check_credential_free(spec_of("second", "research"))
    registry.check_credential_free(dataclasses.replace(registry.get("first"), track=("x",)))
    registry.add(spec_of("second", active=False))
    registry.replace(dataclasses.replace(registry.get("first"), active=False))
    registry.check_credential_free(dataclasses.replace(registry.get("second"), active=True))
    assert registry.holder_of(registry.get("first")) is None


def scan(streams: dict[str, StreamSpec], spec: StreamSpec) -> StreamSpec | None:
    """Who holds `spec`'s slot, read from every stream: what `Holders` must agree with."""
    if not spec.exclusive:
        return None
    held = [o for o in streams.values() if o.active and o.slot == spec.slot and o.name != spec.name]
    return min(held, key=lambda o: o.name) if held else None


def test_the_holders_of_each_slot_follow_every_change(tmp_path: Path) -> None:
    """A registry's holders are kept change by change; after any sequence of adds, replaces
    and removes they name what reading every stream would (a hand-edited registry may hold
    several active streams on one credential: the first by name is named)."""
    rng = random.Random(3)
    credentials = ["default", "research"]
    streams = {f"s{i}": spec_of(f"s{i}", rng.choice(credentials), rng.random() < 0.5)
               for i in range(6)}
    registry = Registry(tmp_path / "streams.json", streams)
    for _ in range(200):
        name = f"s{rng.randrange(9)}"
        if name in streams and rng.random() < 0.3:
            registry.remove(name)
            del streams[name]
        else:
            spec = spec_of(name, rng.choice(credentials), rng.random() < 0.6)
            (registry.replace if name in streams else registry.add)(spec)
            streams[name] = spec
        for other in credentials:
            probe = spec_of("probe", other)
            assert registry.holder_of(probe) == scan(streams, probe)
        for spec in streams.values():
            assert registry.holder_of(spec) == scan(streams, spec)
    assert Registry.load(tmp_path).holder_of(spec_of("probe")) == scan(streams, spec_of("probe"))


def test_the_registry_stores_a_conflict_it_is_given(tmp_path: Path) -> None:
    """The credential locks hold the rule at run time; the registry does not second-guess."""
    registry = Registry.load(tmp_path)
    registry.add(spec_of("first"))
    registry.add(spec_of("second"))
    assert [s.name for s in Registry.load(tmp_path).list()] == ["first", "second"]


def _failing(*args: object, **kwargs: object) -> None:
    raise OSError(5, "Input/output error (simulated)")


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_memory_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("keep"))
    before_file = registry.path.read_bytes()
    before_memory = registry.list()

    if step == "write":
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, f: Any) -> None:
                self.f = f

            def __enter__(self) -> Full:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> None:
                self.f.write(data[: len(data) // 2])
                raise OSError(28, "No space left on device (simulated)")

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, step, _failing)

    with pytest.raises(OSError, match="simulated"):
        registry.add(spec_of("lost", "research"))
    with pytest.raises(OSError, match="simulated"):
        registry.remove("keep")
    monkeypatch.undo()

    assert registry.path.read_bytes() == before_file
    assert registry.list() == before_memory
    assert os.listdir(tmp_path) == ["streams.json"]  # the temp file was cleaned up
    assert Registry.load(tmp_path).list() == before_memory


def test_a_failed_folder_sync_propagates_and_leaves_memory_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("keep"))
    real_fsync = os.fsync

    def fsync_files_only(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(5, "Input/output error (simulated)")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_files_only)
    with pytest.raises(OSError, match="simulated"):
        registry.add(spec_of("maybe", "research"))
    assert [s.name for s in registry.list()] == ["keep"]


def test_a_reader_always_sees_a_whole_file_while_a_writer_rewrites_it(tmp_path: Path) -> None:
    writer = Registry.load(tmp_path)
    writer.add(spec_of("base"))
    errors: list[Exception] = []
    reads = 0
    done = threading.Event()

    def read_until_done() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                json.loads(writer.path.read_bytes())
                reads += 1
            except Exception as e:  # any failure is the finding
                errors.append(e)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for i in range(30):  # big enough files that a torn write would be seen
            writer.replace(dataclasses.replace(writer.get("base"), track=ids(100 + i * 7)))
    finally:
        done.set()
        reader.join(timeout=5)
    assert not errors, errors[:3]
    assert reads > 0


# --- a registry file that cannot be trusted --------------------------------------------------


GOOD_ENTRY = {
    "name": "news",
    "kind": "filter",
    "track": ["news"],
    "follow": [],
    "locations": [],
    "people": [],
    "language": [],
    "credential": "default",
    "active": True,
    "isolation": "task",
}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "not valid JSON"),
        (b'{"version": 1, "streams": [', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[]", 'exactly "version" and "streams"'),
        (b'{"streams": []}', 'exactly "version" and "streams"'),
        (b'{"version": 1, "streams": [], "extra": 1}', 'exactly "version" and "streams"'),
        (b'{"version": 2, "streams": []}', "has version 2"),
        (b'{"version": 1, "streams": {}}', '"streams" must be an array'),
        (
            json.dumps({"version": 1, "streams": [{**GOOD_ENTRY, "track": ["a,b"]}]}).encode(),
            "stream 1 ('news') is refused: track: phrase 1 'a,b'",
        ),
        (
            json.dumps({"version": 1, "streams": [{**GOOD_ENTRY, "surprise": 1}]}).encode(),
            "unknown field 'surprise'",
        ),
        (
            json.dumps(
                {
                    "version": 1,
                    "streams": [{k: v for k, v in GOOD_ENTRY.items() if k != "credential"}],
                }
            ).encode(),
            "credential is required",
        ),
        (json.dumps({"version": 1, "streams": [GOOD_ENTRY, 5]}).encode(), "stream 2 is refused"),
        (
            json.dumps({"version": 1, "streams": [GOOD_ENTRY, GOOD_ENTRY]}).encode(),
            "stream 2 ('news') repeats the name",
        ),
        (
            json.dumps({"version": 1, "streams": [{**GOOD_ENTRY, "credential": "old"}]}).encode(),
            "credential 'old' is not in the credentials file; known: default, research",
        ),
    ],
)
def test_a_corrupt_registry_file_is_refused_naming_file_and_problem(
    tmp_path: Path, content: bytes, words: str
) -> None:
    (tmp_path / "streams.json").write_bytes(content)
    with pytest.raises(RegistryError) as caught:
        Registry.load(tmp_path, credentials=CREDS)
    message = str(caught.value)
    assert str(tmp_path / "streams.json") in message
    assert words in message


def test_a_valid_hand_written_file_loads(tmp_path: Path) -> None:
    (tmp_path / "streams.json").write_text(json.dumps({"version": 1, "streams": [GOOD_ENTRY]}))
    loaded = Registry.load(tmp_path, credentials=CREDS).get("news").to_dict()
    # Written before v2 and Bluesky existed: their settings take their defaults.
    assert loaded == {**GOOD_ENTRY, "api": "v1.1", "rules": [], "source": "twitter"}


def test_an_unreadable_registry_is_refused(tmp_path: Path) -> None:
    (tmp_path / "streams.json").mkdir()
    with pytest.raises(RegistryError, match="cannot be read"):
        Registry.load(tmp_path)


def test_people_ids_are_kept_in_the_file_and_join_follow_on_the_wire(tmp_path: Path) -> None:
    spec = validate_stream(
        {"name": "p", "kind": "filter", "follow": ["5"], "people": ["Alice", "nosuch", "bob"]},
        credentials=CREDS,
        default_credential="default",
    )
    spec = with_people_ids(spec, {"Alice": "11", "bob": "5"})
    assert spec.people_unresolved == ["nosuch"]
    assert spec.wire_params()["follow"] == "5,11"  # an id already followed is sent once
    registry = Registry(tmp_path / "streams.json")
    registry.add(spec)
    loaded = Registry.load(tmp_path, credentials=CREDS).get("p")
    assert loaded == spec
    assert loaded.to_record()["people_ids"] == {"Alice": "11", "bob": "5"}
    # A patch that leaves people alone keeps the ids; one that changes them drops the old ones.
    assert apply_patch(spec, {"track": ["x"]}).people_ids == spec.people_ids
    assert apply_patch(spec, {"people": ["carol"]}).people_ids == ()


def test_a_hand_edited_people_ids_must_be_ids(tmp_path: Path) -> None:
    entry = {**GOOD_ENTRY, "people_ids": {"alice": "not-a-number"}}
    (tmp_path / "streams.json").write_text(json.dumps({"version": 1, "streams": [entry]}))
    with pytest.raises(RegistryError, match="people_ids"):
        Registry.load(tmp_path, credentials=CREDS)


def test_leftovers_of_interrupted_writes_are_removed_on_request(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path)
    registry.add(spec_of("first"))
    leftover = tmp_path / f".{registry.path.name}.abc123.tmp"
    leftover.write_text("{half")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("keep")
    assert Registry.load(tmp_path).remove_leftovers() == [leftover]
    assert not leftover.exists() and unrelated.exists()
    assert [s.name for s in Registry.load(tmp_path).list()] == ["first"]
