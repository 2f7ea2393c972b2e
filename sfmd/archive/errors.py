"""The one exception the archive raises to its callers."""


class ArchiveError(Exception):
    """A write or publish failed (disk full, permission...); the message says what and where."""
