"""The stream registry's file: the daemon's desired state, one JSON file written atomically."""

from __future__ import annotations

import json
import operator
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from sfmd.durable import write_atomically
from sfmd.errors import SfmdError
from sfmd.registry.fields import ValidationError, _show
from sfmd.registry.spec import StreamSpec, _people_ids, validate_stream, with_people_ids

FILE_NAME = "streams.json"
FORMAT_VERSION = 1


class RegistryError(SfmdError):
    """The registry file cannot be read or trusted; the message names the file and the problem."""




class Registry:
    """The streams by name, and the file that holds them. Only this class writes that file.

    Every change is on disk (written, fsynced, renamed) before it shows in memory, so what the
    API answered is what a restart finds. The one-active-stream-per-credential rule is the
    caller's to ask for (`check_credential_free`, before add/replace): the registry stores what
    it is given, and the credential locks hold the rule at run time whatever the file says.
    """

    def __init__(self, path: Path, streams: Mapping[str, StreamSpec] | None = None) -> None:
        self.path = path
        self._streams: dict[str, StreamSpec] = dict(streams or {})
        self._holders = Holders(self._streams.values())
        # `list()`'s order, made once per version of `_streams` (a write makes a new dict):
        # every API read and reconcile pass lists the streams, and sorting 5,000 names took
        # a millisecond each time.
        self._listed: tuple[dict[str, StreamSpec], list[StreamSpec]] | None = None
        # Writes so far: a reconcile pass that saw version v and finds v + 1 knows the one
        # change it was told of is the only one.
        self.version = 0

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r}, {len(self._streams)} streams)"

    @classmethod
    def load(cls, state_dir: Path, *, credentials: Collection[str] | None = None) -> Registry:
        """Read the registry; a missing file is empty, anything doubtful is a RegistryError."""
        path = Path(state_dir) / FILE_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise RegistryError(f"registry {path} cannot be read: {e.strerror}") from None
        streams = parse(path, raw, credentials)
        # Each stream's line encoded now, at start-up, not by the first change: a change
        # writes every line, and encoding all 5,000 at once (77 ms holding the GIL) made the
        # first POST after start-up the slowest request of a benchmark's minute. A stream's
        # line then costs its 240 bytes or so from the start.
        for spec in streams.values():
            spec.registry_line  # noqa: B018 (a cached property, computed here)
        return cls(path, streams)

    def remove_leftovers(self) -> list[Path]:
        """Delete temp files of registry writes a crash interrupted (the registry itself is
        the old or the new one). Only the daemon, the one writer, may call this at start-up:
        anyone else could delete a write in progress."""
        leftovers = sorted(self.path.parent.glob(f".{self.path.name}.*.tmp"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return leftovers

    def get(self, name: str) -> StreamSpec:
        return self._streams[name]

    def list(self) -> list[StreamSpec]:
        """The streams in name order (a new list: the caller may keep or change it)."""
        if self._listed is None or self._listed[0] is not self._streams:
            streams = self._streams
            self._listed = (streams, [streams[name] for name in sorted(streams)])
        return list(self._listed[1])

    def __contains__(self, name: object) -> bool:
        return name in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, spec: StreamSpec) -> None:
        if spec.name in self._streams:
            raise ValidationError(
                "name_taken", "name", f"a stream named {spec.name!r} already exists"
            )
        self._commit(spec)

    def replace(self, spec: StreamSpec) -> None:
        """Store new settings for an existing stream (KeyError if there is none)."""
        if spec.name not in self._streams:
            raise KeyError(spec.name)
        self._commit(spec)

    def remove(self, name: str) -> None:
        streams = dict(self._streams)
        gone = streams.pop(name)
        self._write(streams, gone, None)

    def holder_of(self, spec: StreamSpec) -> StreamSpec | None:
        """Another active stream holding the connection `spec` would need, if any."""
        return self._holders.holder_of(spec)

    def check_credential_free(self, spec: StreamSpec) -> None:
        """Refuse making `spec` active on a credential another active stream holds (API 409)."""
        check_credential_free(self._holders, spec)

    def _commit(self, spec: StreamSpec) -> None:
        self._write({**self._streams, spec.name: spec}, self._streams.get(spec.name), spec)

    def _write(
        self, streams: dict[str, StreamSpec], old: StreamSpec | None, new: StreamSpec | None
    ) -> None:
        """Store `streams`, where one stream went from `old` to `new` (None: not there)."""
        write_atomically(self.path, render(streams))
        self._streams = streams
        self._holders = self._holders.after(old, new)
        self.version += 1


class Holders:
    """The active streams by the connection (slot) each needs: who holds a slot, found
    without reading every stream. At 5,000 streams that read was most of what a PATCH still
    did on the event loop, twice (admission, then again under the lock).

    Never changed in place: `after` makes the next one, so a reader holding this one sees
    the registry it was made for.
    """

    __slots__ = ("_by_slot",)

    def __init__(self, streams: Iterable[StreamSpec] = ()) -> None:
        by_slot: dict[str, list[StreamSpec]] = {}
        for spec in streams:
            if spec.active:
                by_slot.setdefault(spec.slot, []).append(spec)
        self._by_slot = {slot: _in_name_order(specs) for slot, specs in by_slot.items()}

    def holder_of(self, spec: StreamSpec) -> StreamSpec | None:
        """Another active stream holding the connection `spec` would need: the first by
        name, where a hand-edited registry has several."""
        if not spec.exclusive:
            return None
        for other in self._by_slot.get(spec.slot, ()):
            if other.name != spec.name:
                return other
        return None

    def after(self, old: StreamSpec | None, new: StreamSpec | None) -> Holders:
        """These holders once one stream went from `old` to `new` (None: not there)."""
        changed = Holders()
        changed._by_slot = by_slot = dict(self._by_slot)
        for gone in (old, new):  # `new` too: a spec of the same name is replaced
            if gone is not None and gone.active:
                left = tuple(s for s in by_slot.get(gone.slot, ()) if s.name != gone.name)
                if left:
                    by_slot[gone.slot] = left
                else:
                    by_slot.pop(gone.slot, None)
        if new is not None and new.active:
            by_slot[new.slot] = _in_name_order([*by_slot.get(new.slot, ()), new])
        return changed


def _in_name_order(specs: Iterable[StreamSpec]) -> tuple[StreamSpec, ...]:
    return tuple(sorted(specs, key=operator.attrgetter("name")))


def check_credential_free(holders: Holders, spec: StreamSpec) -> None:
    """Refuse making `spec` active on a credential another active stream holds (API 409)."""
    holder = holders.holder_of(spec) if spec.active else None
    if holder is not None:
        what = "the v2 sample connection of" if spec.api == "v2" else "credential"
        raise ValidationError(
            "credential_in_use",
            "credential",
            f"{what} {spec.credential!r} is in use by active stream {holder.name!r}; "
            "stop that stream or choose another credential",
        )


def render(streams: Mapping[str, StreamSpec]) -> bytes:
    """The registry document: the file's content, and the value of cluster mode's key."""
    # One stream per line: still easy to read and diff, and encoded by json's C encoder
    # (any `indent` falls back to the pure-Python one, ten times slower: 90 ms for 1,000
    # streams, all of it holding the GIL while API calls wait).
    lines = ",\n".join(streams[name].registry_line for name in sorted(streams))
    return f'{{"version": {FORMAT_VERSION}, "streams": [\n{lines}\n]}}\n'.encode()


def parse(
    path: Path | str, raw: bytes, credentials: Collection[str] | None = None
) -> dict[str, StreamSpec]:
    """The streams in a registry document read from `path` (the file, or the name of cluster
    mode's bucket key), or a RegistryError naming it: never drop a stream silently."""
    fix = "fix or restore it; sfmd will not guess which streams were meant"
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"registry {path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict) or set(data) != {"version", "streams"}:
        raise RegistryError(
            f'registry {path} must be an object with exactly "version" and "streams"; {fix}'
        )
    if data["version"] != FORMAT_VERSION:
        raise RegistryError(
            f"registry {path} has version {_show(data['version'])}; this sfmd reads version "
            f"{FORMAT_VERSION}"
        )
    if not isinstance(data["streams"], list):
        raise RegistryError(f'registry {path}: "streams" must be an array; {fix}')
    streams: dict[str, StreamSpec] = {}
    for index, entry in enumerate(data["streams"], start=1):
        label = f"stream {index}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" ({entry['name']!r})"
        try:
            ids: dict[str, str] = {}
            if isinstance(entry, dict) and "people_ids" in entry:
                entry = dict(entry)
                ids = _people_ids(entry.pop("people_ids"))
            spec = with_people_ids(validate_stream(entry, credentials=credentials), ids)
        except ValidationError as e:
            raise RegistryError(
                f"registry {path}: {label} is refused: {e.message}; {fix}"
            ) from None
        if spec.name in streams:
            raise RegistryError(f"registry {path}: {label} repeats the name; {fix}")
        streams[spec.name] = spec
    return streams
