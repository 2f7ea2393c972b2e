"""What `sfmd` (the daemon's command) keeps out of its memory; imported by `cli` first.

structlog imports `rich`, where it is installed, for its development console's tracebacks.
sfmd never uses that console, and rich cost the daemon 8.4 MB (a fifth of what 1,000
streams take). So structlog is imported here, before anything else imports it, with rich
hidden from that one import; anything importing rich afterwards gets it as usual. sfmctl
does not import structlog at all.
"""

from __future__ import annotations

import sys

if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
