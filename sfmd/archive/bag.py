"""A BagIt bag of a stream's published files over a period, for a preservation system.

The bag's payload is the period's files, at their paths under `data_dir`, and the stream's
manifest lines for the period (`{name}/manifest.jsonl`), so the gaps and provenance travel with
the files. `bag-info.txt` says what was collected, how and when (the provenance summed up),
and the Library of Congress's `bagit` library writes and checks the bag itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import bagit

from sfmd import __version__
from sfmd.archive.coverage import parse_iso
from sfmd.archive.errors import ArchiveError
from sfmd.archive.timeline import manifest_entries, report


def make_bag(data_dir: Path, name: str, since: float, until: float, out: Path) -> bagit.Bag:
    """Bag the files of stream `name` whose interval begins within [since, until) into `out`
    (a new or empty folder). Raises ArchiveError, with nothing left behind, if it cannot."""
    stream_dir = data_dir / name
    if not (stream_dir / "manifest.jsonl").exists():
        raise ArchiveError(f"stream {name!r} has no manifest under {data_dir}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArchiveError(f"{out} exists and is not an empty folder; bag into a new one")
    if not since < until:
        raise ArchiveError("--since must be before --until")
    entries = [e for e in manifest_entries(stream_dir)
               if parse_iso(e["end"]) > since and parse_iso(e["start"]) < until]
    files = [e for e in entries if e["file"] is not None and since <= parse_iso(e["start"])]
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for entry in files:
            target = out / entry["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data_dir / entry["file"], target)
        (out / name).mkdir(exist_ok=True)
        (out / name / "manifest.jsonl").write_text(
            "".join(json.dumps(e) + "\n" for e in entries)
        )
        info = bag_info(name, entries, files, report(stream_dir, since, until).to_json())
        return bagit.make_bag(str(out), info, checksums=["sha256", "sha512"])
    except (OSError, bagit.BagError) as e:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise ArchiveError(f"cannot make the bag in {out}: {e}") from None


def bag_info(
    name: str, entries: list[dict[str, Any]], files: list[dict[str, Any]],
    coverage: dict[str, Any],
) -> dict[str, Any]:
    """`bag-info.txt`: the period, the counts, the coverage, and every request in effect."""
    requests: list[str] = []
    writers: list[str] = []
    for entry in entries:
        provenance = entry.get("provenance") or {}
        writer = " ".join(f"{k}={provenance[k]}" for k in ("host", "sfmd") if k in provenance)
        if writer and writer not in writers:
            writers.append(writer)
        for request in provenance.get("requests", ()):
            asked = {k: v for k, v in request.items() if k != "since"}
            text = json.dumps(asked, sort_keys=True)
            if text not in requests:
                requests.append(text)
    return {
        "Source-Organization": "sfmd",
        "External-Description": f"Stream {name!r} collected by sfmd: {len(files)} files "
        f"from {coverage['since']} to {coverage['until']}, with their manifest lines "
        f"({name}/manifest.jsonl: counts, sha256, gaps, provenance).",
        "External-Identifier": name,
        "Bag-Software-Agent": f"sfmd {__version__} (bagit {bagit.VERSION})",
        "Sfmd-Stream": name,
        "Sfmd-Period": f"{coverage['since']}/{coverage['until']}",
        "Sfmd-Files": str(len(files)),
        "Sfmd-Messages": str(sum(int(e.get("messages", 0)) for e in files)),
        "Sfmd-Connected-Percent": str(coverage["connected_percent"]),
        "Sfmd-Gaps": str(len(coverage["gaps"])),
        "Sfmd-Collected-By": writers or ["unknown (lines from before coverage)"],
        "Sfmd-Request": requests or ["unknown (lines from before coverage)"],
    }
