"""What `sfmd` (the daemon's command) keeps out of its memory; imported by `cli` first.

structlog imports `rich`, where it is installed, for its development console's tracebacks.
sfmd never uses that console, and rich cost the daemon 8.4 MB (a fifth of what 1,000
streams take). So structlog is imported here, before anything else imports it, with rich
hidden from that one import; anything importing rich afterwards gets it as usual. sfmctl
does not import structlog at all.

frozenlist (aiohttp's signal lists, walked once per request at most) is imported here in
its pure-Python form: its compiled form is C++, and loading it maps the C++ runtime
(libstdc++) into the process, 1.0 MB of the daemon's resident memory for lists that hold
nothing on sfmd's paths. The switch is frozenlist's own environment variable, set for that
one import only, so nothing sfmd starts inherits it.
"""

from __future__ import annotations

import os
import sys

if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]

if "frozenlist" not in sys.modules:
    _SWITCH = "FROZENLIST_NO_EXTENSIONS"
    _before = os.environ.get(_SWITCH)
    os.environ[_SWITCH] = "1"
    try:
        import frozenlist  # noqa: F401
    finally:
        if _before is None:
            del os.environ[_SWITCH]
        else:
            os.environ[_SWITCH] = _before
