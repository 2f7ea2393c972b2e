"""JSON log lines that survive logrotate.

structlog renders; the stdlib's WatchedFileHandler writes. structlog's own file writer would
keep writing into a rotated file forever, so the file is a stdlib handler that
notices a rename by itself and is also reopened explicitly on SIGHUP (logrotate's postrotate).

The file's lines are JSON by default (timestamp, level, event and stream first), or with
`log_format = "console"` the readable lines of `sfmd.logline`, which a terminal gets too.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from sfmd import logline

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


#: Seconds between two looks at whether the log file was renamed (see `_WatchedFile`).
WATCH_INTERVAL = 1.0


class _WatchedFile(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler that stats its file at most once every `interval` seconds instead
    of before every line. A stat waits behind the disk's journal while many files are
    fsynced: when 5,000 streams stopped, the stat before each of their 15,000 lines was a
    fifth of the event loop's time. Lines written in the moment between a rename and the
    next look go to the renamed file, whole and in order; SIGHUP still reopens at once."""

    def __init__(self, filename: Path, encoding: str, interval: float = WATCH_INTERVAL) -> None:
        super().__init__(filename, encoding=encoding)
        self._interval = interval
        self._looked = time.monotonic()

    def reopenIfNeeded(self) -> None:
        now = time.monotonic()
        if now - self._looked < self._interval:
            return
        self._looked = now
        super().reopenIfNeeded()


class LogFiles:
    """The log handlers sfmd installed, so a signal handler can reopen them."""

    def __init__(self, handlers: list[logging.handlers.WatchedFileHandler]) -> None:
        self.handlers = handlers

    def reopen(self) -> None:
        for handler in self.handlers:
            handler.acquire()
            try:
                if handler.stream:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()


def setup_logging(
    log_file: Path | None,
    *,
    stderr: bool | None = None,
    level: int = logging.INFO,
    log_format: str = "json",
    watch_interval: float = WATCH_INTERVAL,
) -> LogFiles:
    """Send every log event as one line to `log_file` (JSON, or readable with
    `log_format="console"`), and readably to a terminal.

    `stderr=None` means: echo to stderr only when it is a terminal (or when there is no file).
    `watch_interval`: how often the file is looked at for a rename (`_WatchedFile`).
    """
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # No line shows where it was logged from (the JSON and console lines are structlog's
    # event alone), so the stdlib is told not to look it up: finding the caller walked the
    # stack for every record, 40 % of a line's cost (42 against 24 µs), and at a boundary
    # every stream logs a published file. The logging HOWTO's "Optimization" section names
    # this switch.
    logging._srcfile = None
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.setLevel(level)

    files: list[logging.handlers.WatchedFileHandler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _WatchedFile(log_file, encoding="utf-8", interval=watch_interval)
        handler.setFormatter(_formatter(_console if log_format == "console" else _json))
        root.addHandler(handler)
        files.append(handler)
    if stderr is None:
        stderr = log_file is None or sys.stderr.isatty()
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(_formatter(_console if sys.stderr.isatty() else _json))
        root.addHandler(console)
    # aiohttp's access log is not an operator event; oauthlib logs the access token at
    # DEBUG while signing, and no secret may ever reach a log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("oauthlib").setLevel(logging.WARNING)
    return LogFiles(files)


_json_renderer = structlog.processors.JSONRenderer()


def _json(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
    """JSON with timestamp, level, event and stream first: raw lines scan left to right."""
    rendered: str = _json_renderer(logger, name, logline.ordered(event))
    return rendered


def _console(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
    return logline.render(event)


def _formatter(renderer: structlog.typing.Processor) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )


def get_logger(**bound: object) -> structlog.stdlib.BoundLogger:
    """A lazy logger: safe at import time, it takes the configuration in force when it logs."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("sfmd", **bound)
    return logger
