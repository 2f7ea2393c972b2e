"""What lands on disk: interval files published atomically, with a fixity manifest."""

from sfmd.archive.writer import (
    MANIFEST_NAME,
    PART_SUFFIX,
    Archive,
    ArchiveError,
    Deflate,
    FileName,
    PublishedFile,
    append_manifest,
    interval_start,
    iso_utc,
    read_manifest,
    recover_part,
    spread_offset,
)

__all__ = [
    "MANIFEST_NAME",
    "PART_SUFFIX",
    "Archive",
    "ArchiveError",
    "Deflate",
    "FileName",
    "PublishedFile",
    "append_manifest",
    "interval_start",
    "iso_utc",
    "read_manifest",
    "recover_part",
    "spread_offset",
]
