"""sfmd: a long-running Twitter stream collector."""

import sys as _sys

__version__ = "0.1.0"

# structlog imports `rich`, where it is installed, for its development console's tracebacks.
# sfmd never uses that console, and rich cost the daemon 8.4 MB of its memory (a fifth of
# what 1,000 streams take). So structlog is imported here first, with rich hidden from that
# one import; anything importing rich afterwards gets it as usual.
if "structlog" not in _sys.modules and "rich" not in _sys.modules:
    _sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails
    try:
        import structlog as _structlog  # noqa: F401
    finally:
        del _sys.modules["rich"]
