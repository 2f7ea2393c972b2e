"""The TOML config file: every key, its default, its rule and its doc in one table (`KEYS`).

A bad value stops start-up with a message naming the key: a daemon that starts on a config it
half understood fails much later, far from the cause. Adding a key is one `Key(...)` line in
`KEYS` plus the matching field on its section's dataclass (a test checks the two agree).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sfmd.errors import SfmdError

#: The stop budget (SIGTERM to exit 0, promised in the README); the clean-stop timeout must
#: leave room in it.
STOP_BUDGET = 10.0

#: Longest AF_UNIX socket path Linux accepts (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


#: Where commands that read sfmd's files look for its config when not told: $SFMD_CONFIG,
#: else the packaged units' path.
CONFIG_ENV = "SFMD_CONFIG"
DEFAULT_CONFIG = "/etc/sfm/sfmd.toml"


class ConfigError(SfmdError):
    """The config file is missing, unreadable or holds a bad key; the message names the key."""


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: Path
    state_dir: Path
    log_dir: Path
    control_socket: Path
    socket_mode: int
    save_interval: int
    publish_spread: float
    compress: bool
    compress_level: int
    compress_window: int
    log_format: str


@dataclass(frozen=True)
class TwitterConfig:
    stream_url: str
    rest_url: str
    credentials_file: Path
    default_credential: str
    delimited: bool
    api_url: str
    v2_tweet_fields: tuple[str, ...]
    v2_expansions: tuple[str, ...]
    v2_user_fields: tuple[str, ...]
    v2_media_fields: tuple[str, ...]
    v2_place_fields: tuple[str, ...]
    v2_poll_fields: tuple[str, ...]
    v2_prune_foreign_rules: bool


@dataclass(frozen=True)
class TimingConfig:
    stall_timeout: float
    tcp_backoff_step: float
    tcp_backoff_max: float
    http_backoff_start: float
    http_backoff_max: float
    ratelimit_backoff_start: float
    ratelimit_backoff_max: float
    connect_timeout: float
    flush_interval: float
    shutdown_timeout: float
    start_jitter: float
    reconcile_interval: float
    status_interval: float
    gc_interval: float
    log_fold_interval: float
    trim_interval: float
    warm_interval: float  # 0: pages are never moved on ahead of a request
    warm_window: float


@dataclass(frozen=True)
class BlueskyConfig:
    jetstream_url: str
    compress: bool
    rewind: float
    idle_timeout: float


@dataclass(frozen=True)
class MastodonConfig:
    fill_overlap: float
    idle_timeout: float
    fill_max_pages: int


@dataclass(frozen=True)
class SupervisorConfig:
    server_url: str
    conf_dir: Path
    program_prefix: str
    user: str


@dataclass(frozen=True)
class ClusterConfig:
    nats_url: str  # "" = one host, no NATS; else comma-separated nats:// (or tls://) URLs
    host_id: str
    lease_ttl: float
    poll_interval: float  # how often the hosts and the registry are read again
    checkpoint_interval: float  # resume points are saved at most this often per stream


@dataclass(frozen=True)
class Config:
    path: Path | None  # the file it came from (absolute), None for `default_config`
    daemon: DaemonConfig
    twitter: TwitterConfig
    timing: TimingConfig
    supervisor: SupervisorConfig
    bluesky: BlueskyConfig
    mastodon: MastodonConfig
    cluster: ClusterConfig


SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig,
    "twitter": TwitterConfig,
    "timing": TimingConfig,
    "supervisor": SupervisorConfig,
    "bluesky": BlueskyConfig,
    "mastodon": MastodonConfig,
    "cluster": ClusterConfig,
}


class _Bad(Exception):
    """A value broke its key's rule; the text completes "[table] key ...", e.g. "must be ..."."""


# A parser turns the TOML value into the typed value, resolving paths against `base`.
Parser = Callable[[Any, Path], Any]


@dataclass(frozen=True)
class Key:
    table: str
    name: str
    default: Any  # as written in TOML
    parse: Parser
    doc: str
    local: str | None = None  # for paths: the default under `default_config`'s base_dir
    shown: bool = True  # False: a bad value is not echoed back (it may hold a password)


# --- parsers ---------------------------------------------------------------------------------


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Bad("must be a non-empty path string")
    return Path(os.path.normpath(base / value))


def _socket_path(value: Any, base: Path) -> Path:
    path = _path(value, base)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise _Bad(
            f"resolves to {str(path)!r}, longer than the {MAX_SOCKET_PATH} bytes a Unix "
            "socket path may have; choose a shorter path"
        )
    return path


def _flag(value: Any, base: Path) -> bool:
    if not isinstance(value, bool):
        raise _Bad("must be true or false")
    return value


def _text(pattern: str, rule: str) -> Parser:
    regex = re.compile(pattern)

    def parse(value: Any, base: Path) -> str:
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise _Bad(f"must be {rule}")
        return value

    return parse


def _url_of(schemes: tuple[str, ...], what: str, example: str) -> Parser:
    """A URL of one of `schemes`; a trailing slash is dropped so callers can append
    `/path`. `what` names it in the message ("an http:// or https:// base URL")."""
    rule = f'must be {what} like "{example}"'

    def parse(value: Any, base: Path) -> str:
        if not isinstance(value, str):
            raise _Bad(rule)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise _Bad(rule) from None
        if parts.scheme not in schemes or not parts.hostname:
            raise _Bad(rule)
        if parts.query or parts.fragment:
            raise _Bad(f"{rule}, without ?query or #fragment")
        return value.rstrip("/")

    return parse


_url = _url_of(
    ("http", "https"), "an http:// or https:// base URL", "https://stream.twitter.com/1.1"
)
_websocket_url = _url_of(
    ("ws", "wss"), "a ws:// or wss:// URL", "wss://jetstream2.us-east.bsky.network/subscribe"
)


def _supervisor_url(value: Any, base: Path) -> str:
    rule = 'must be "unix:///absolute/path.sock" or an http:// URL of supervisord\'s XML-RPC'
    if isinstance(value, str) and value.startswith("unix://"):
        if not value.startswith("unix:///") or len(value) == len("unix:///"):
            raise _Bad(rule)
        return value
    try:
        return _url(value, base)
    except _Bad:
        raise _Bad(rule) from None


def _names(value: Any, base: Path) -> tuple[str, ...]:
    """A list of v2 field or expansion names, as the API spells them (joined by commas)."""
    rule = 'must be a list of names like ["author_id", "created_at"] (may be empty)'
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.]{1,64}", v) for v in value
    ):
        raise _Bad(rule)
    return tuple(dict.fromkeys(value))


V2_TWEET_FIELDS = (
    "attachments", "author_id", "context_annotations", "conversation_id", "created_at",
    "edit_controls", "edit_history_tweet_ids", "entities", "geo", "id", "in_reply_to_user_id",
    "lang", "possibly_sensitive", "public_metrics", "referenced_tweets", "reply_settings",
    "source", "text", "withheld",
)
V2_EXPANSIONS = (
    "author_id", "in_reply_to_user_id", "referenced_tweets.id",
    "referenced_tweets.id.author_id", "entities.mentions.username", "attachments.poll_ids",
    "attachments.media_keys", "geo.place_id", "edit_history_tweet_ids",
)
V2_USER_FIELDS = (
    "created_at", "description", "entities", "id", "location", "name", "pinned_tweet_id",
    "profile_image_url", "protected", "public_metrics", "url", "username", "verified",
    "verified_type", "withheld",
)
V2_MEDIA_FIELDS = (
    "alt_text", "duration_ms", "height", "media_key", "preview_image_url", "public_metrics",
    "type", "url", "variants", "width",
)
V2_PLACE_FIELDS = (
    "contained_within", "country", "country_code", "full_name", "geo", "id", "name",
    "place_type",
)
V2_POLL_FIELDS = ("duration_minutes", "end_datetime", "id", "options", "voting_status")


def _integer(low: int, high: int | None = None) -> Parser:
    if high is None:
        rule = f"must be a whole number of at least {low}"
    else:
        rule = f"must be a whole number from {low} to {high}"

    def parse(value: Any, base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(rule)
        if value < low or (high is not None and value > high):
            raise _Bad(rule)
        return value

    return parse


def _choice(*choices: str) -> Parser:
    rule = "must be one of " + ", ".join(f'"{c}"' for c in choices)

    def parse(value: Any, base: Path) -> str:
        if value not in choices:
            raise _Bad(rule)
        return str(value)

    return parse


def _save_interval(value: Any, base: Path) -> int:
    seconds = _integer(1)(value, base)
    if 86400 % seconds:
        raise _Bad(
            "must divide 86400 (one day) evenly, so files rotate on the same UTC boundaries "
            "every day (e.g. 60, 300, 900, 3600)"
        )
    return seconds


def _duration(*, allow_zero: bool) -> Parser:
    rule = "must be a number of seconds, 0 or more" if allow_zero else (
        "must be a positive number (seconds)"
    )

    def parse(value: Any, base: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(rule)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise _Bad(rule)
        return float(value)

    return parse


_seconds = _duration(allow_zero=False)
_seconds_or_zero = _duration(allow_zero=True)


def _shutdown_timeout(value: Any, base: Path) -> float:
    seconds = _seconds(value, base)
    if seconds >= STOP_BUDGET:
        raise _Bad(f"must be under {STOP_BUDGET:g} seconds, the budget for a clean stop")
    return seconds


def _nats_urls(value: Any, base: Path) -> str:
    """Empty (one host, no NATS), or one or more NATS server URLs separated by commas (the
    nodes of a NATS cluster; the client fails over between them). A password in a URL would be
    copied into every rendered config and could reach a log, so URLs may not carry one."""
    rule = (
        'must be "" (one host) or nats:// URLs separated by commas, like '
        '"nats://10.0.0.1:4222,nats://10.0.0.2:4222"'
    )
    if not isinstance(value, str):
        raise _Bad(rule)
    if not value.strip():
        return ""
    urls = []
    for part in value.split(","):
        part = part.strip()
        try:
            parts = urlsplit(part)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise _Bad(rule) from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise _Bad(rule)
        if parts.username is not None or parts.password is not None:
            raise _Bad("must not carry a user or password (user:password@host)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _Bad(f"{rule}, without a path, ?query or #fragment")
        urls.append(part.rstrip("/"))
    return ",".join(urls)


def _host_id(value: Any, base: Path) -> str:
    """This host's name in the cluster; empty means the hostname, read once at start-up."""
    rule = "must be 1-64 characters of A-Z a-z 0-9 _ . - (empty: the hostname)"
    if not isinstance(value, str):
        raise _Bad(rule)
    name = value or socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        if value:
            raise _Bad(rule)
        raise _Bad(f"is empty and the hostname {name!r} is not usable: set host_id; it {rule}")
    return name


def _lease_ttl(value: Any, base: Path) -> float:
    seconds = _seconds(value, base)
    if seconds < 1:
        raise _Bad("must be at least 1 second (renewals run at a third of it)")
    return seconds


def _octal_mode(value: Any, base: Path) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        raise _Bad('must be an octal permission string like "0660" (quoted, so it stays octal)')
    mode = int(value, 8)
    if mode & 0o600 != 0o600:
        raise _Bad("must give the owner read and write (0600 at least): clients connect by writing")
    return mode


# --- the table -------------------------------------------------------------------------------

# fmt: off
KEYS: tuple[Key, ...] = (
    Key("daemon", "data_dir", "/var/lib/sfm/data", _path,
        "stream output: {data_dir}/{name}/{YYYY}/{MM}/{DD}/...", local="data"),
    Key("daemon", "state_dir", "/var/lib/sfm/state", _path,
        "the stream registry (streams.json) and credential locks; survives restarts",
        local="state"),
    Key("daemon", "log_dir", "/var/log/sfm", _path,
        "sfmd.log, and one log per process-isolated stream", local="log"),
    Key("daemon", "control_socket", "/run/sfm/sfmd.sock", _socket_path,
        "the control API: HTTP over this Unix socket (sfmctl --socket)", local="sfmd.sock"),
    Key("daemon", "socket_mode", "0660", _octal_mode,
        "permissions of the control socket; whoever can write to it controls sfmd"),
    Key("daemon", "save_interval", 900, _save_interval,
        "seconds; files rotate on UTC boundaries of this, so it must divide 86400"),
    Key("daemon", "publish_spread", 10.0, _seconds_or_zero,
        "seconds after a boundary over which streams publish their files, each at a fixed "
        "offset from its name, so 1,000 streams do not publish in one burst; at most "
        "save_interval / 10; 0 publishes every file on the boundary"),
    Key("daemon", "compress", True, _flag, "gzip the output files (.jsonl.gz, else .jsonl)"),
    Key("daemon", "compress_level", 6, _integer(1, 9),
        "gzip level 1 (fastest) to 9 (smallest); 6 is gzip's own default"),
    Key("daemon", "compress_window", 12, _integer(10, 15),
        "gzip window as a power of two: 12 (4 KiB) holds about 30 KB per open file and makes "
        "files about 2 % bigger than 15 (zlib's default, about 256 KB per open file)"),
    Key("daemon", "log_format", "json", _choice("json", "console"),
        "sfmd.log's lines: json (one object per line, for machines and `sfmctl tail`) or "
        "console (time, level, stream and event first, for people reading the file)"),
    Key("twitter", "stream_url", "https://stream.twitter.com/1.1", _url,
        "the v1.1 streaming API; point it at `sfmd fakeapi` for tests"),
    Key("twitter", "rest_url", "https://api.twitter.com/1.1", _url,
        "the v1.1 REST API, for users/lookup (turns `people` into follow ids)"),
    Key("twitter", "credentials_file", "/etc/sfm/credentials.toml", _path,
        "named OAuth keys; must be mode 0600 or stricter", local="credentials.toml"),
    Key("twitter", "default_credential", "default",
        _text(r"[^\x00-\x1f\x7f-\x9f]{1,64}", "a credential name of 1-64 characters"),
        "what a stream uses when it names no credential"),
    Key("twitter", "delimited", False, _flag,
        "ask for delimited=length framing (a byte count before each message)"),
    Key("twitter", "api_url", "https://api.twitter.com", _url,
        "the v2 API (/2/tweets/search/stream, /2/tweets/sample/stream, the rules API)"),
    # The v2 defaults ask for everything, as twarc2 does: a collector keeps what it can get.
    Key("twitter", "v2_tweet_fields", V2_TWEET_FIELDS, _names, "v2 tweet.fields"),
    Key("twitter", "v2_expansions", V2_EXPANSIONS, _names, "v2 expansions"),
    Key("twitter", "v2_user_fields", V2_USER_FIELDS, _names, "v2 user.fields"),
    Key("twitter", "v2_media_fields", V2_MEDIA_FIELDS, _names, "v2 media.fields"),
    Key("twitter", "v2_place_fields", V2_PLACE_FIELDS, _names, "v2 place.fields"),
    Key("twitter", "v2_poll_fields", V2_POLL_FIELDS, _names, "v2 poll.fields"),
    Key("twitter", "v2_prune_foreign_rules", False, _flag,
        "delete rules on the API that no sfmd stream owns (otherwise only reported)"),
    Key("timing", "stall_timeout", 90, _seconds,
        "seconds with no byte at all, keep-alives included, before reconnecting"),
    Key("timing", "tcp_backoff_step", 0.25, _seconds,
        "network errors: wait this much longer per consecutive error (linear)"),
    Key("timing", "tcp_backoff_max", 16, _seconds, "cap on the network-error wait"),
    Key("timing", "http_backoff_start", 5, _seconds,
        "HTTP errors: first wait, doubling per consecutive error"),
    Key("timing", "http_backoff_max", 320, _seconds, "cap on the HTTP-error wait"),
    Key("timing", "ratelimit_backoff_start", 60, _seconds,
        "HTTP 420/429: first wait, doubling per consecutive refusal"),
    Key("timing", "ratelimit_backoff_max", 960, _seconds, "cap on the rate-limit wait"),
    Key("timing", "connect_timeout", 30, _seconds,
        "seconds to open a connection and receive the response headers"),
    Key("timing", "flush_interval", 1.0, _seconds,
        "seconds between pushes of buffered output to the OS"),
    Key("timing", "shutdown_timeout", 8, _shutdown_timeout,
        "budget for the clean stop on SIGTERM; must stay under the promised 10 s"),
    Key("timing", "start_jitter", 5, _seconds_or_zero,
        "at daemon start-up, streams connect at random moments over this many seconds"),
    Key("timing", "reconcile_interval", 30, _seconds,
        "seconds between the daemon's checks that running streams match the registry"),
    Key("timing", "status_interval", 2, _seconds,
        "seconds between status reports of a process-isolated stream to the daemon"),
    Key("timing", "gc_interval", 3600, _seconds,
        "seconds between full garbage collections; after start-up and after each, what the "
        "streams hold is frozen so that routine collections do not pause the daemon"),
    Key("timing", "log_fold_interval", 60, _seconds,
        "a stream failing again the same way within this many seconds is not logged again; "
        "one line then sums up the repeats (\"... 12 more in 60 s\")"),
    Key("timing", "trim_interval", 5, _seconds,
        "seconds between hand-backs of freed memory to the system (glibc's malloc_trim)"),
    Key("timing", "warm_interval", 1.0, _seconds_or_zero,
        "while GET /streams or /metrics is asked for often, what it keeps of each stream is "
        "moved on this often in the background, so a request has only that long's changes "
        "to write; 0 turns it off"),
    Key("timing", "warm_window", 5, _seconds,
        "a page counts as asked for often for this many seconds after each request"),
    Key("supervisor", "server_url", "unix:///var/run/supervisor.sock", _supervisor_url,
        "supervisord's XML-RPC endpoint (unix:///path or http://host:port)"),
    Key("supervisor", "conf_dir", "/etc/supervisor/conf.d", _path,
        "where per-stream [program:...] confs are written", local="supervisor"),
    Key("supervisor", "program_prefix", "sfm-stream-",
        _text(r"[A-Za-z0-9_.-]{1,64}", "1-64 characters of A-Z a-z 0-9 _ . - (a program name)"),
        "supervisor program name = prefix + stream name"),
    Key("supervisor", "user", "sfm",
        _text(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", "a user name of 1-32 of A-Z a-z 0-9 _ . -"),
        "the Unix user isolated streams run as"),
    Key("bluesky", "jetstream_url", "wss://jetstream2.us-east.bsky.network/subscribe",
        _websocket_url, "the Jetstream instance's v1 /subscribe (a stream may name another)"),
    Key("bluesky", "compress", True, _flag,
        "ask for zstd frames (about 56 % smaller on the wire); sfmd ships the dictionary"),
    Key("bluesky", "rewind", 10, _seconds,
        "seconds the cursor goes back on every reconnect; events already stored are dropped"),
    Key("bluesky", "idle_timeout", 60, _seconds,
        "seconds with no frame at all (pings included) after which the socket counts as dead"),
    Key("mastodon", "fill_overlap", 60, _seconds,
        "seconds of status-id time a gap fill re-reads below the resume point (late posts)"),
    Key("mastodon", "idle_timeout", 90, _seconds,
        "seconds with no frame and no ping after which the streaming socket counts as dead"),
    Key("mastodon", "fill_max_pages", 250, _integer(1),
        "pages of 40 statuses one gap fill reads at most; a longer gap is recorded as partly"
        " refilled"),
    Key("cluster", "nats_url", "", _nats_urls,
        "empty: one host, no NATS; else the NATS server(s) whose JetStream holds the "
        "registry, the leases and the resume points (comma-separated for a NATS cluster)",
        shown=False),
    Key("cluster", "host_id", "", _host_id,
        "this host's name in the cluster, unique per host; empty: the hostname"),
    Key("cluster", "lease_ttl", 15, _lease_ttl,
        "seconds a connection's lease lives without renewal; a holder renews at a third of "
        "it and stops the connection before it can expire; others take over after it"),
    Key("cluster", "poll_interval", 1.0, _seconds,
        "seconds between reads of the live hosts, the leases' placement and the registry: "
        "how soon a host sees a dead host's connections free, or another host's change"),
    Key("cluster", "checkpoint_interval", 1.0, _seconds,
        "seconds between saves of a stream's resume point (when its files were flushed "
        "since); a takeover may store again what came within it"),
)
# fmt: on

#: (key, key it must be at least): a cap below its start would make the backoff shrink.
AT_LEAST: tuple[tuple[str, str], ...] = (
    ("timing.tcp_backoff_max", "timing.tcp_backoff_step"),
    ("timing.http_backoff_max", "timing.http_backoff_start"),
    ("timing.ratelimit_backoff_max", "timing.ratelimit_backoff_start"),
)


# --- loading ---------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, check and resolve the config file; every mistake raises ConfigError."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except (PermissionError, IsADirectoryError) as e:
        raise ConfigError(f"{source}: config file cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not valid TOML: the file is not UTF-8 text") from None
    absolute = Path(os.path.abspath(path))
    return _build(data, base=absolute.parent, source=source, path=absolute)


def default_config(base_dir: Path) -> Config:
    """Every default, with the paths under base_dir: for demos and tests."""
    tables: dict[str, dict[str, Any]] = {}
    for key in KEYS:
        if key.local is not None:
            tables.setdefault(key.table, {})[key.name] = key.local
    return _build(tables, base=Path(os.path.abspath(base_dir)), source="default config", path=None)


def _build(data: Mapping[str, Any], *, base: Path, source: str, path: Path | None) -> Config:
    _refuse_unknown(data, source)
    values: dict[str, Any] = {}
    for key in KEYS:
        raw = data.get(key.table, {}).get(key.name, key.default)
        try:
            values[f"{key.table}.{key.name}"] = key.parse(raw, base)
        except _Bad as e:
            got = f", got {_show(raw)}" if key.shown else ""
            raise ConfigError(f"{source}: [{key.table}] {key.name} {e}{got}") from None
    for high, low in AT_LEAST:
        if values[high] < values[low]:
            table, name = high.split(".")
            raise ConfigError(
                f"{source}: [{table}] {name} must be at least {low.split('.')[1]} "
                f"({values[low]:g}), got {values[high]:g}"
            )
    sections = {
        table: cls(**{f.name: values[f"{table}.{f.name}"] for f in fields(cls)})
        for table, cls in SECTIONS.items()
    }
    return Config(path=path, **sections)


def _refuse_unknown(data: Mapping[str, Any], source: str) -> None:
    for table, content in data.items():
        if table not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown table [{table}]{_did_you_mean(table, SECTIONS)}; "
                f"known tables: {', '.join(f'[{t}]' for t in SECTIONS)}"
            )
        if not isinstance(content, dict):
            raise ConfigError(f"{source}: [{table}] must be a table, got {_show(content)}")
        known = [k.name for k in KEYS if k.table == table]
        for name in content:
            if name not in known:
                raise ConfigError(
                    f"{source}: [{table}] unknown key {name!r}{_did_you_mean(name, known)}; "
                    f"known keys: {', '.join(known)}"
                )


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib  # here, not at the top: only a mistyped key needs it (0.2 MB resident)

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- writing ---------------------------------------------------------------------------------


def render_toml(config: Config) -> str:
    """The config as a TOML file that loads back equal (paths absolute): for demos and children."""
    lines: list[str] = []
    for table in SECTIONS:
        lines.append(f"[{table}]")
        section = getattr(config, table)
        for key in (k for k in KEYS if k.table == table):
            lines.append(f"{key.name} = {_toml_value(key, getattr(section, key.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(key: Key, value: Any) -> str:
    if key.parse is _octal_mode:
        return f'"{value:04o}"'
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # JSON's escapes are all valid TOML; TOML also wants DEL escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
