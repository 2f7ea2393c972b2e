"""What lands on disk: interval files published atomically, with a fixity manifest."""

from sfmd.archive.deflate import Deflate
from sfmd.archive.errors import ArchiveError
from sfmd.archive.manifest import MANIFEST_NAME, PublishedFile, append_manifest, read_manifest
from sfmd.archive.naming import PART_SUFFIX, FileName, interval_start, iso_utc, spread_offset
from sfmd.archive.recovery import CountItems, recover_part
from sfmd.archive.writer import Archive

__all__ = [
    "MANIFEST_NAME",
    "PART_SUFFIX",
    "Archive",
    "ArchiveError",
    "CountItems",
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
