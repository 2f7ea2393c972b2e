"""sfmd: a long-running Twitter stream collector."""

__version__ = "0.1.0"
