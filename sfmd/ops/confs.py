"""supervisord `[program:...]` confs for process-isolated streams: rendering and safe writing.

One bad conf file makes supervisord refuse to re-read its whole configuration, for every
program on the machine, not only ours. So a conf sfmd writes must be impossible to misread:
every value is checked against supervisor's parsing traps (`%` expansion, ` ;`/` #` starting a
comment even inside quotes, continuation lines, shell-like splitting of `command=`), and a file
appears in the include glob only complete (written under a hidden temp name, fsynced, renamed).

sfmd owns exactly the files `{conf_dir}/{program_prefix}{name}.conf` whose first line is
`MARKER`; it never rewrites or removes anything else, even in a folder it shares.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from sfmd.durable import fsync_dir, write_atomically
from sfmd.errors import SfmdError

#: The first line of every conf sfmd writes; a file without it is never touched.
MARKER = "; managed by sfmd: do not edit"

#: Seconds a stream process must stay up to count as started. `sfmd stream` fails on its
#: start-up checks (unknown stream, credential held elsewhere) well within this.
STARTSECS = 5
#: Quick failures retried (1 s, 2 s, ... apart) before supervisord marks the program FATAL;
#: the daemon's reconciler starts a FATAL stream again on its next pass.
STARTRETRIES = 10
#: Seconds between SIGTERM and SIGKILL: above the 10 s sfmd takes at most to publish and exit.
STOPWAITSECS = 20
#: supervisord's capture of a stream's stdout/stderr: only start-up errors and tracebacks land
#: there (the stream writes its JSON log itself), so it stays small.
CAPTURE_MAXBYTES = "1MB"
CAPTURE_BACKUPS = 3

#: Stream names as the registry allows them; anything else is refused before it nears a conf.
STREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: `[supervisor] program_prefix` as the config allows it.
PROGRAM_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: `[supervisor] user` as the config allows it.
USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Printable ASCII: supervisord reads conf files in the locale's encoding, which may be ASCII,
#: and a conf it cannot decode breaks every program's reload.
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
#: A `;` or `#` after whitespace starts a comment anywhere in a value, quotes or not.
_COMMENT = re.compile(r"\s[;#]")
#: supervisord replaces this text in every value of an included file before `%` expansion,
#: escaped or not; a value holding it cannot be written safely.
_HERE = "%(here)s"


class ConfError(SfmdError, ValueError):
    """A value cannot be put in a supervisor conf safely; the message says which and why."""


def program_name(prefix: str, name: str) -> str:
    """supervisord's program (and group) name for stream `name`."""
    if not PROGRAM_PREFIX.fullmatch(prefix):
        raise ConfError(f"program prefix {prefix!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    if not STREAM_NAME.fullmatch(name):
        raise ConfError(
            f"stream name {name!r} must be 1-64 characters of a-z 0-9 _ -, "
            "starting with a letter or digit"
        )
    return f"{prefix}{name}"


def conf_path(conf_dir: Path, prefix: str, name: str) -> Path:
    return conf_dir / f"{program_name(prefix, name)}.conf"


def render_program(
    name: str,
    *,
    config_path: Path,
    sfmd_command: Sequence[str] | str,
    program_prefix: str,
    user: str,
    log_dir: Path,
    environment: Mapping[str, str] | None = None,
) -> str:
    """The conf that runs `sfmd stream NAME --config FILE` under supervisord.

    Only the stream's name and the config path reach the command line: the filter itself is
    read from the registry by the process, so no tracked phrase ever lands in a conf, a `ps`
    listing or supervisord's log. `sfmd_command` is how to run sfmd (an argv list, or a
    command line to split), e.g. `[sys.executable, "-m", "sfmd"]`.
    """
    program = program_name(program_prefix, name)
    if not USER_NAME.fullmatch(user):
        raise ConfError(f"user {user!r} must be a user name of 1-32 of A-Z a-z 0-9 _ . -")
    base = shlex.split(sfmd_command) if isinstance(sfmd_command, str) else list(sfmd_command)
    if not base or not all(base):
        raise ConfError("the sfmd command must name a program (an empty argument was given)")
    config_path = _absolute("config path", config_path)
    log_dir = _absolute("log_dir", log_dir)
    argv = [*base, "stream", name, "--config", str(config_path)]
    command = " ".join(shlex.quote(arg) for arg in argv)
    lines = [
        MARKER,
        f"; stream {name}: run by sfmd's reconciler; rewritten or removed when the stream changes",
        f"[program:{program}]",
        _setting("command", command, "the sfmd command"),
        f"user={user}",
        _setting("directory", str(config_path.parent), "the config file's folder"),
        # sfmd stream backs off on its own and never exits on a transient error: any exit is
        # worth a restart.
        "autostart=true",
        "autorestart=true",
        f"startsecs={STARTSECS}",
        f"startretries={STARTRETRIES}",
        "stopsignal=TERM",
        f"stopwaitsecs={STOPWAITSECS}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        # supervisord expands `%` in log paths twice.
        _setting("stdout_logfile", str(log_dir / f"stream-{name}.out"), "log_dir", expansions=2),
        f"stdout_logfile_maxbytes={CAPTURE_MAXBYTES}",
        f"stdout_logfile_backups={CAPTURE_BACKUPS}",
    ]
    if environment:
        lines.append(_setting("environment", _environment(environment), "environment"))
    return "\n".join(lines) + "\n"


def _absolute(what: str, path: Path) -> Path:
    if not path.is_absolute():
        raise ConfError(f"{what} {str(path)!r} must be absolute: supervisord has its own cwd")
    return Path(os.path.normpath(path))


def _setting(key: str, value: str, what: str, *, expansions: int = 1) -> str:
    """`key=value` with `value` escaped for supervisor, or ConfError naming `what`."""
    if not _PRINTABLE.fullmatch(value):
        raise ConfError(
            f"{what} must be printable ASCII to go in a supervisor conf (no newline, tab or "
            f"non-ASCII character), got {value!r}"
        )
    if _COMMENT.search(value):
        raise ConfError(
            f"{what} cannot go in a supervisor conf: a space followed by ';' or '#' starts a "
            f"comment there, even inside quotes; got {value!r}"
        )
    if _HERE in value:
        raise ConfError(f"{what} cannot go in a supervisor conf: it holds {_HERE!r}")
    if value != value.strip():
        raise ConfError(f"{what} cannot start or end with a space in a supervisor conf")
    return f"{key}={value.replace('%', '%' * 2**expansions)}"


def _environment(environment: Mapping[str, str]) -> str:
    """KEY="value",... as supervisor's (non-POSIX shlex) parser reads it back."""
    pairs = []
    for key, value in sorted(environment.items()):
        if not ENV_KEY.fullmatch(key):
            raise ConfError(f"environment key {key!r} must be a shell variable name")
        if '"' in value or value[:1] == "'" or value[-1:] == "'":
            raise ConfError(
                f"environment value of {key} cannot hold a double quote or start or end "
                "with a single quote in a supervisor conf"
            )
        pairs.append(f'{key}="{value}"')
    return ",".join(pairs)


# --- files -----------------------------------------------------------------------------------


def _temp_prefix(path: Path) -> str:
    # Hidden and ending in .tmp: matched by no include glob (`*.conf`, `*.ini`, even `*`).
    return f".{path.name}."


def is_ours(path: Path) -> bool:
    """True if `path` is a conf sfmd wrote (its first line is MARKER)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().rstrip("\n") == MARKER
    except OSError:  # gone, a folder, unreadable: not a conf sfmd wrote
        return False


def write_conf(path: Path, text: str) -> bool:
    """Put `text` at `path` atomically; False if it already held exactly that.

    Refuses to replace a file sfmd did not write: a hand-made conf with our name stays.
    """
    if not text.startswith(MARKER + "\n"):
        raise ConfError("refusing to write a conf without sfmd's marker line")
    try:
        if path.read_text(encoding="ascii", errors="replace") == text:
            return False
    except FileNotFoundError:
        pass
    else:
        if not is_ours(path):
            raise ConfError(
                f"{path} exists and was not written by sfmd (no marker line): "
                "rename that program or change [supervisor] program_prefix"
            )
    write_atomically(path, text.encode("ascii"), temp_prefix=_temp_prefix(path), mode=0o644)
    return True


def remove_conf(path: Path) -> bool:
    """Remove `path` if sfmd wrote it; False if it was already gone or is not ours."""
    if not is_ours(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)
        return True
    return False


def owned_confs(conf_dir: Path, prefix: str) -> dict[str, Path]:
    """stream name → conf path, for every conf in `conf_dir` that sfmd wrote with `prefix`."""
    found: dict[str, Path] = {}
    try:
        entries = list(conf_dir.iterdir())
    except FileNotFoundError:
        return found
    for path in entries:
        if not (path.name.startswith(prefix) and path.name.endswith(".conf")):
            continue
        name = path.name[len(prefix) : -len(".conf")]
        if STREAM_NAME.fullmatch(name) and is_ours(path):
            found[name] = path
    return found


def sync_confs(
    conf_dir: Path, prefix: str, wanted: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """Make our confs in `conf_dir` exactly `wanted` (stream name → conf text).

    Returns the names written and the names removed; unchanged files are not touched, and
    files sfmd did not write are never touched at all. Temp files left by a crash are removed.
    """
    conf_dir.mkdir(parents=True, exist_ok=True)
    for leftover in conf_dir.iterdir():
        if leftover.name.startswith(f".{prefix}") and leftover.name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    written = [
        name
        for name, text in sorted(wanted.items())
        if write_conf(conf_path(conf_dir, prefix, name), text)
    ]
    removed = [
        name
        for name, path in sorted(owned_confs(conf_dir, prefix).items())
        if name not in wanted and remove_conf(path)
    ]
    return written, removed


def check_host(user: str, log_dir: Path) -> None:
    """Refuse what would make supervisord reject the conf as a whole, and so every program's
    reload: a user this machine does not know, a log folder that does not exist (created here).
    """
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ConfError(
            f"[supervisor] user {user!r} does not exist on this machine; supervisord would "
            "refuse the conf (and with it every program's reload)"
        ) from None
    log_dir.mkdir(parents=True, exist_ok=True)
