"""`sfmctl`: the admin client for sfmd's control socket.

A short-lived command, so it stays light: the standard library's http.client over an AF_UNIX
socket, and none of the daemon's modules (sfmd.config only when --config is given). Every
rule about what a stream may be lives in the daemon; sfmctl turns friendly options into the
API's JSON, shows the answer, and maps the outcome to an exit code:

    0  done
    1  the daemon refused (its message on stderr), answered oddly, or could not be reached
    2  usage error: bad options, or a --config file that cannot be read
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn
from urllib.parse import quote

from sfmd import logline
from sfmd.argtypes import moment
from sfmd.config import CONFIG_ENV, DEFAULT_CONFIG
from sfmd.errors import SfmdError
from sfmd.status import IDLE, SUMMARY_ORDER, TROUBLED

if TYPE_CHECKING:
    from sfmd.archive.timeline import Report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_SOCKET = "/run/sfm/sfmd.sock"
SOCKET_ENV = "SFMCTL_SOCKET"
DEFAULT_TIMEOUT = 30.0

#: Settings whose values are lists; an option given only as '' clears its list.
LIST_FIELDS = ("track", "follow", "locations", "people", "language", "collections", "dids")
#: The option of each list setting, where their names differ.
LIST_OPTIONS = {"collections": "collection", "dids": "did"}



class CtlError(SfmdError):
    """The command could not be carried out; `message` is what the operator reads."""

    def __init__(self, message: str, code: str | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.body = body  # the daemon's error body, for --json

    def line(self) -> str:
        suffix = f" ({self.code})" if self.code else ""
        return f"sfmctl: {self.message}{suffix}"


class UsageError(Exception):
    """A mistake in the invocation that argparse cannot see (exit 2)."""


# --- talking to the daemon -------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("sfmd", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """One request per call, each on its own connection: simple, and sfmctl makes few."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer (None for 204); CtlError for anything else."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as e:
            raise CtlError(self._unreachable(e)) from None
        except http.client.HTTPException as e:
            raise CtlError(
                f"{self.socket_path} did not answer in HTTP ({type(e).__name__}); "
                "is it sfmd's control socket?"
            ) from None
        finally:
            conn.close()
        return self._decode(method, path, resp.status, raw)

    def _unreachable(self, error: OSError) -> str:
        where = f"cannot reach sfmd at {self.socket_path}"
        hint = "; is sfmd running? (point sfmctl at its socket with --socket or --config)"
        if isinstance(error, FileNotFoundError):
            return f"{where}: no such socket{hint}"
        if isinstance(error, ConnectionRefusedError):
            return f"{where}: nothing is listening there{hint}"
        if isinstance(error, PermissionError):
            return (
                f"{where}: permission denied; the socket's mode lets only its owner and group "
                "in (see daemon.socket_mode)"
            )
        if isinstance(error, TimeoutError):
            return f"{where}: no answer within {self.timeout:g} s; sfmd may be overloaded or hung"
        return f"{where}: {error.strerror or error}{hint}"

    def _decode(self, method: str, path: str, status: int, raw: bytes) -> Any:
        if status == 204:
            return None
        try:
            answer = json.loads(raw) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = None
        if 200 <= status < 300 and answer is not None:
            return answer
        if isinstance(answer, dict) and "message" in answer:
            raise CtlError(str(answer["message"]), str(answer.get("error", status)), answer)
        snippet = " ".join(raw[:200].decode("utf-8", "replace").split())
        raise CtlError(f"unexpected answer to {method} {path}: HTTP {status} {snippet}".rstrip())


def resolve_socket(socket_arg: str | None, config_arg: str | None) -> str:
    """--socket, else the --config file's daemon.control_socket, else $SFMCTL_SOCKET, else
    the documented default: explicit beats implicit."""
    if socket_arg:
        return socket_arg
    if config_arg:
        from sfmd.config import ConfigError, load_config  # only here: keeps start-up light

        try:
            return str(load_config(config_arg).daemon.control_socket)
        except ConfigError as e:
            raise UsageError(str(e)) from None
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def stream_path(name: str, action: str = "") -> str:
    return f"/streams/{quote(name, safe='')}" + (f"/{action}" if action else "")


# --- option values ---------------------------------------------------------------------------


def _split(value: str, separators: str) -> list[str]:
    return [part.strip() for part in re.split(separators, value) if part.strip()]


def phrases(value: str) -> list[str]:
    """Track phrases: commas separate them (as on Twitter's wire); spaces stay inside (AND)."""
    return _split(value, ",")


def words(value: str) -> list[str]:
    """Ids and codes: commas or spaces separate them."""
    return _split(value, r"[,\s]+")


def screen_names(value: str) -> list[str]:
    """Screen names, with or without their @."""
    return [name.removeprefix("@") for name in words(value)]


def boxes(value: str) -> list[list[float | int]]:
    """`west,south,east,north`, or several boxes' numbers in a row (Twitter's own form)."""
    parts = words(value)
    if len(parts) % 4:
        raise argparse.ArgumentTypeError(
            f"a box is 4 numbers west,south,east,north; got {len(parts)} in {value!r}"
        )
    numbers: list[float | int] = []
    for part in parts:
        try:
            numbers.append(int(part) if re.fullmatch(r"-?\d+", part) else float(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number (in {value!r})") from None
    return [numbers[i : i + 4] for i in range(0, len(numbers), 4)]


def _glue_values(argv: Sequence[str]) -> list[str]:
    """`--locations -74,40,-73,41` reads as an option to argparse; join it to its value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--locations" and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"--locations={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the options name; a list option given only as '' becomes []."""
    body: dict[str, Any] = {}
    for field in LIST_FIELDS:
        given = getattr(args, LIST_OPTIONS.get(field, field), None)
        if given is not None:
            body[field] = [item for values in given for item in values]
    rules = getattr(args, "rule", None)
    if rules is not None:
        body["rules"] = [{"value": value} for value in rules if value != ""]
    for field in ("credential", "isolation", "api", "source", "endpoint", "kind", "tag", "list"):
        value = getattr(args, field, None)
        if value is not None:
            body[field] = value
    if getattr(args, "inactive", False):
        body["active"] = False
    return body


# --- showing answers -------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """Like `3m12s`: the two largest units, as supervisorctl-style tables show uptime."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def since(iso: str | None, now: datetime | None = None) -> str:
    if not iso:
        return "-"
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return "?"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return duration(((now or datetime.now(UTC)) - then).total_seconds())


def rates(
    before: list[dict[str, Any]], after: list[dict[str, Any]], seconds: float
) -> dict[str, float]:
    """Messages per second between two samples; a stream whose counter went back (restarted)
    or that is new has no rate rather than a wrong one."""
    first = {s["name"]: s["status"]["messages"] for s in before}
    out: dict[str, float] = {}
    for s in after:
        old = first.get(s["name"])
        delta = s["status"]["messages"] - old if old is not None else -1
        if delta >= 0 and seconds > 0:
            out[s["name"]] = delta / seconds
    return out


def table(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns; the last one unpadded so long file names do not pad every row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


def source_label(stream: dict[str, Any]) -> str:
    """Which network and wire a stream uses, read from the STREAM itself: its `source`, and
    its `api` where the source has several (Twitter's v1.1 and v2), e.g. `twitter/v2` or
    `bluesky`. Nothing here lists the sources, so a new one shows without a change; the
    label has no space, so `awk` and `split()` still see one word per column."""
    source = str(stream.get("source") or "twitter")  # streams made before sources existed
    api = stream.get("api")
    return f"{source}/{api}" if api else source


def shared_connections(streams: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[str]]]:
    """Each shared connection the streams use (`status.connection`), once, with its members
    among them, in the order first met."""
    seen: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for s in streams:
        connection = s["status"].get("connection")
        if isinstance(connection, dict) and connection.get("name"):
            seen.setdefault(connection["name"], (connection, []))[1].append(s["name"])
    return list(seen.values())


def render_connections(streams: list[dict[str, Any]]) -> list[str]:
    """The shared connections' table under `status`: one socket serves several streams (all
    v2 filters of a credential), so its state and counters are its own, not any member's."""
    shared = shared_connections(streams)
    if not shared:
        return []
    rows = [["CONNECTION", "STATE", "MESSAGES", "UNROUTED", "ERRORS", "RECONNECTS", "RULES",
             "STREAMS"]]
    notes: list[list[str]] = []
    for connection, members in shared:
        rows.append([
            str(connection["name"]),
            str(connection.get("state", "-")),
            *(str(connection.get(key, "-")) for key in ("messages", "unrouted", "errors",
                                                         "reconnects", "rules")),
            ",".join(members),
        ])
        extra = []
        if connection.get("rules_problem"):
            extra.append(f"    rules problem: {connection['rules_problem']}")
        foreign = connection.get("foreign_rules") or []
        if foreign:
            extra.append(f"    foreign rules: {len(foreign)} held at the API that no stream "
                         "owns (sfmctl show NAME lists them)")
        notes.append(extra)
    lines = table(rows)
    out = ["", lines[0]]
    for line, extra in zip(lines[1:], notes, strict=True):
        out += [line.rstrip(), *extra]
    return out


def render_status(
    streams: list[dict[str, Any]], rate: dict[str, float] | None, now: datetime | None = None
) -> str:
    """The `status` table, then the shared connections; `rate` None means one sample, so
    MSG/S shows '-'."""
    if not streams:
        return "no streams"
    # Cluster mode names the host that runs each stream.
    clustered = any("host" in s for s in streams)
    header = ["NAME", "SOURCE", "KIND", *(["HOST"] if clustered else []), "STATE", "SINCE",
              "TWEETS", "MSG/S", "RECONNECTS", "CURRENT FILE"]
    rows = [header]
    for s in streams:
        st = s["status"]
        r = (rate or {}).get(s["name"]) if st["state"] not in IDLE else None
        rows.append([
            s["name"],
            source_label(s),
            s["kind"],
            *([s.get("host") or "-"] if clustered else []),
            st["state"],
            # Down: since the outage began, not since the latest retry.
            since(st.get("down_since") or st.get("since"), now),
            str(st["tweets"]),
            f"{r:.1f}" if r is not None else "-",
            str(st["reconnects"]),
            os.path.basename(st["current_file"]) if st.get("current_file") else "-",
        ])
    lines = table(rows)
    out = [lines[0]]
    for s, line in zip(streams, lines[1:], strict=True):
        out.append(line.rstrip())
        error = s["status"].get("last_error")
        if error and s["status"]["state"] in TROUBLED:
            out.append(f"    last error: {error}")
            down = outage(s["status"], now)
            if down:
                out.append(f"    {down}")
    out += render_connections(streams)
    return "\n".join(out)


def outage(status: dict[str, Any], now: datetime | None = None) -> str | None:
    """"down 5m12s (since ...), next attempt in 12s (at ...)" for a stream that is down."""
    down_since = status.get("down_since")
    if not down_since:
        return None
    text = f"down {since(down_since, now)} (since {down_since})"
    next_attempt = status.get("next_attempt")
    if next_attempt:
        text += f", next attempt in {until(next_attempt, now)} (at {next_attempt})"
    return text


def until(iso: str, now: datetime | None = None) -> str:
    """How long until `iso`, as `duration` writes it ("0s" once due)."""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return "?"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return duration((then - (now or datetime.now(UTC))).total_seconds())


def render_list(streams: list[dict[str, Any]]) -> str:
    if not streams:
        return "no streams"
    rows = [["NAME", "SOURCE", "KIND", "STATE"]]
    rows += [[s["name"], source_label(s), s["kind"], s["status"]["state"]] for s in streams]
    return "\n".join(line.rstrip() for line in table(rows))


def _items(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values) if values else "-"


#: Settings shown by `show` only when set: each belongs to one of Twitter's APIs or to its
#: filters, and the STREAM carries the others too, empty.
_V1_FILTER = ("track", "follow", "locations", "people", "language")
_ONLY_WHEN_SET = {
    ("v1.1", "filter"): ("rules",),
    ("v2", "filter"): _V1_FILTER,
    ("v1.1", "sample"): (*_V1_FILTER, "rules"),
    ("v2", "sample"): (*_V1_FILTER, "rules"),
}
#: Keys of a STREAM that `show` folds into others (`people`) or shows apart (`status`).
_NOT_SETTINGS = ("status", "people_ids", "people_unresolved")
#: What an empty setting means, where it is not "none".
_EMPTY_MEANS = {
    "collections": "(all)",
    "dids": "(all)",
    "endpoint": "(the configured jetstream_url)",
}


def _value(value: Any) -> list[str]:
    """Any JSON value as the lines `show` prints: one line for a scalar or a list of
    scalars, one line per item for a list of objects (v2 rules)."""
    if value is None or value == "" or value == []:
        return ["-"]
    if isinstance(value, bool):
        return ["yes" if value else "no"]
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value):
            return [_rule_text(v) for v in value]
        return [_items(value)]
    if isinstance(value, dict):
        return [", ".join(f"{k} {_value(v)[0]}" for k, v in value.items()) or "-"]
    return [str(value)]


def _rule_text(rule: dict[str, Any]) -> str:
    """A v2 rule as `show` prints it: its value, then anything else it holds (an id, a tag)."""
    if "value" not in rule:
        return json.dumps(rule, ensure_ascii=False)
    rest = ", ".join(f"{k} {v}" for k, v in rule.items() if k != "value")
    return f"{rule['value']}" + (f"  ({rest})" if rest else "")


def _setting(stream: dict[str, Any], key: str) -> list[str]:
    value = stream[key]
    if key == "locations":
        return [_items([",".join(f"{c:g}" for c in box) for box in value]).replace(", ", "  ")]
    if key == "people":
        ids = stream.get("people_ids", {})
        unresolved = set(stream.get("people_unresolved", []))
        return [_items([
            f"{p} (not found)" if p in unresolved else f"{p} (id {ids[p]})" if p in ids else p
            for p in value
        ])]
    if key in _EMPTY_MEANS and value in ("", [], None):
        return [_EMPTY_MEANS[key]]
    return _value(value)


def render_show(stream: dict[str, Any], now: datetime | None = None) -> str:
    """Every setting the STREAM holds, in the API's order (so a source's own fields, such as
    Bluesky's `collections` or a Mastodon `tag`, show without a change here), then its
    status, then its shared connection or supervisord process if it has one."""
    hidden = _ONLY_WHEN_SET.get((str(stream.get("api")), str(stream.get("kind"))), ())
    first = [key for key in ("name", "source", "api", "kind") if key in stream]
    pairs: list[tuple[str, list[str]]] = []
    for key in [*first, *(key for key in stream if key not in first)]:
        if key in _NOT_SETTINGS or (key in hidden and not stream[key]):
            continue
        pairs.append((key, _setting(stream, key)))
    st = stream["status"]
    pairs += [
        ("state", [st["state"]]),
        ("since", [f"{st.get('since') or '-'} ({since(st.get('since'), now)} ago)"]),
        ("reconnects", [reconnects_text(st)]),
        ("down", [outage(st, now) or "-"]),
    ]
    shown_apart = {"state", "since", "connection", "process", "reconnects",
                   "reconnects_after_failure", "reconnects_planned", "down_since",
                   "next_attempt"}
    pairs += [(key, _value(value)) for key, value in st.items() if key not in shown_apart]
    connection = st.get("connection")
    if isinstance(connection, dict):
        pairs.append(("connection", [
            f"{connection.get('name')} (shared), {connection.get('state')}, "
            f"{connection.get('messages')} messages, {connection.get('unrouted')} unrouted, "
            f"{connection.get('errors')} errors, {connection.get('reconnects')} reconnects, "
            + (f"{connection.get('rules')} channels subscribed"
               if stream.get("source") == "mastodon"
               else f"{connection.get('rules')} rules at the API")
        ]))
        if connection.get("rules_problem"):
            pairs.append(("rules_problem", [str(connection["rules_problem"])]))
        if connection.get("foreign_rules"):
            pairs.append(("foreign_rules", _value(connection["foreign_rules"])))
    process = st.get("process")
    if isinstance(process, dict):
        pairs.append(("process", _value(process)))
    width = max(len(key) for key, _ in pairs) + 1
    out: list[str] = []
    for key, values in pairs:
        out.append(f"{(key + ':').ljust(width)} {values[0]}")
        out += [f"{'':{width}} {more}" for more in values[1:]]
    return "\n".join(out)


def reconnects_text(status: dict[str, Any]) -> str:
    """"5 (3 after a failure, 2 planned)": a filter change is not trouble."""
    total = status["reconnects"]
    failed, planned = status.get("reconnects_after_failure"), status.get("reconnects_planned")
    if failed is None or planned is None:
        return str(total)
    return f"{total} ({failed} after a failure, {planned} planned)"


def warn_unresolved(stream: dict[str, Any]) -> None:
    missing = stream.get("people_unresolved") or []
    if missing:
        print(
            f"sfmctl: warning: not found on Twitter: {', '.join(missing)} (not followed)",
            file=sys.stderr,
        )


def print_json(answer: Any) -> None:
    if answer is not None:
        print(json.dumps(answer, indent=2, ensure_ascii=False))


# --- the verbs -------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    """The table; exit 1 when a stream shown is failed or backing off, as `supervisorctl
    status` does for a program that is not running, so monitoring can call it."""
    started = time.monotonic()
    streams = client.call("GET", "/streams")["streams"]
    if args.json:
        shown = _only(streams, args.names)
        print_json({"streams": shown})
        return _health_code(shown)
    rate = None
    if not args.once:
        time.sleep(args.interval)  # the rate needs two samples some time apart
        later = client.call("GET", "/streams")["streams"]
        rate = rates(streams, later, time.monotonic() - started)
        streams = later
    shown = _only(streams, args.names)
    print(render_status(shown, rate))
    return _health_code(shown)


def _health_code(streams: list[dict[str, Any]]) -> int:
    troubled = any(s["status"]["state"] in TROUBLED for s in streams)
    return EXIT_FAILED if troubled else EXIT_OK


def _only(streams: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    if not names:
        return streams
    known = {s["name"] for s in streams}
    missing = [n for n in names if n not in known]
    if missing:
        raise CtlError(f"no such stream: {', '.join(missing)}", "not_found")
    return [s for s in streams if s["name"] in names]


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    answer = client.call("GET", "/streams")
    if args.json:
        print_json(answer)
    else:
        print(render_list(answer["streams"]))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, client: Client) -> int:
    answer = client.call("GET", stream_path(args.name))
    if args.json:
        print_json(answer)
    else:
        print(render_show(answer))
    return EXIT_OK


def _report(args: argparse.Namespace, answer: dict[str, Any], done: str) -> int:
    warn_unresolved(answer)
    if args.json:
        print_json(answer)
    else:
        active = "active" if answer.get("active") else "inactive"
        print(f"{answer['name']}: {done} ({answer['kind']}, {active}, {answer['status']['state']})")
    return EXIT_OK


#: The kind `sfmctl add` gives a stream of each source when --kind names none.
DEFAULT_KIND = {"twitter": "filter", "bluesky": "jetstream", "mastodon": "hashtag"}


def cmd_add(args: argparse.Namespace, client: Client) -> int:
    kind = DEFAULT_KIND[getattr(args, "source", None) or "twitter"]
    body = {"name": args.name, "kind": kind, **settings_from(args)}
    return _report(args, _create(client, body), "added")


def cmd_sample(args: argparse.Namespace, client: Client) -> int:
    body = {"name": args.name, "kind": "sample", **settings_from(args)}
    return _report(args, _create(client, body), "added")


def _create(client: Client, body: dict[str, Any]) -> Any:
    """POST /streams; a taken name's refusal says which command changes that stream (the
    API speaks to every client, so it names no command)."""
    try:
        return client.call("POST", "/streams", body)
    except CtlError as e:
        if e.code == "name_taken":
            e.message += f" (sfmctl modify {body['name']} ...)"
        raise


def cmd_modify(args: argparse.Namespace, client: Client) -> int:
    body = settings_from(args)
    if not body:
        raise UsageError("modify: nothing to change; give at least one option (see --help)")
    return _report(args, client.call("PATCH", stream_path(args.name), body), "modified")


def cmd_coverage(args: argparse.Namespace, client: Client) -> int:
    """Read from the files, not the socket: a report on downtime must work during it."""
    from sfmd.archive.timeline import report  # only here: keeps start-up light

    stream_dir = data_dir(args) / args.name
    if not (stream_dir / "manifest.jsonl").exists():
        raise CtlError(f"stream {args.name!r} has no manifest under {stream_dir.parent}")
    result = report(stream_dir, args.since, args.until)
    if args.json:
        print_json(result.to_json())
    else:
        print(render_coverage(result))
    return EXIT_OK


def data_dir(args: argparse.Namespace) -> Path:
    """--data-dir, else data_dir from --config, $SFMD_CONFIG or the usual config file."""
    if args.data_dir:
        return Path(args.data_dir)
    from sfmd.config import ConfigError, load_config

    path = args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        return load_config(path).daemon.data_dir
    except ConfigError as e:
        raise UsageError(f"{e} (or give --data-dir)") from None


def render_coverage(result: Report) -> str:
    """`sfmctl coverage`'s table: the connected share, every gap, the files per day."""
    percent = result.percent
    lines = [
        f"stream {result.stream}: {_utc_text(result.since)} to {_utc_text(result.until)}",
        f"connected {'-' if percent is None else f'{percent:.2f} %'} of the "
        f"{duration(result.recorded)} recorded "
        f"({duration(result.until - result.since - result.recorded)} not recorded)",
    ]
    if result.without_coverage:
        lines.append(f"{result.without_coverage} older lines hold no coverage: their gaps are "
                     "unknown")
    lines.append("")
    if result.gaps:
        lines += table([
            ["FROM", "TO", "LASTED", "REASON", "REFILLED", "ERROR"],
            *([g["from"], g["to"], duration(g["seconds"]), g["reason"],
               g.get("refilled", "none"), g.get("error") or ""] for g in result.gaps),
        ])
    else:
        lines.append("no gaps")
    lines.append("")
    lines += table([
        ["DAY", "FILES", "MESSAGES", "TWEETS", "GAPS"],
        *([d.day, str(d.files), str(d.messages), str(d.tweets), duration(d.gap_seconds)]
          for d in result.days),
    ])
    return "\n".join(lines)


def _utc_text(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_tail(args: argparse.Namespace, client: Client) -> int:
    """Read the log file, not the socket: like `coverage`, it must work while sfmd is down
    (that is when people read its log)."""
    path = log_file(args)
    try:
        with open(path, "rb") as f:
            for line in last_lines(f, args.lines, lambda raw: _wanted(raw, args.name)):
                _print_log_line(line, args.json)
            if args.follow:
                follow(f, path, args)
    except FileNotFoundError:
        raise CtlError(f"no log file at {path} (give --log, or --config for its log_dir)") from None
    except OSError as e:
        raise CtlError(f"cannot read the log {path}: {e.strerror or e}") from None
    return EXIT_OK


#: Seconds between looks at a followed log for new lines (and for a rotation).
TAIL_POLL = 0.2
#: Bytes read at a time from the end of a log, looking for its last lines.
TAIL_BLOCK = 1 << 16


def log_file(args: argparse.Namespace) -> Path:
    """--log, else sfmd.log in the log_dir of --config, $SFMD_CONFIG or the usual config."""
    if args.log:
        return Path(args.log)
    from sfmd.config import ConfigError, load_config

    path = args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        return load_config(path).daemon.log_dir / "sfmd.log"
    except ConfigError as e:
        raise UsageError(f"{e} (or give --log)") from None


def _event(raw: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _wanted(raw: bytes, name: str | None) -> bool:
    """A line of the named stream or shared connection (every line when none is named). A
    line that is not JSON is a console-format line: its third word names who."""
    if name is None:
        return bool(raw.strip())
    event = _event(raw)
    if event is None:
        words = raw.split(None, 3)
        return len(words) > 2 and words[2] == name.encode()
    return logline.who(event) == name


def _print_log_line(raw: bytes, as_json: bool) -> None:
    text = raw.decode("utf-8", "replace").rstrip("\n")
    event = None if as_json else _event(raw)
    print(logline.render(event) if event is not None else text, flush=True)


def last_lines(
    f: BinaryIO, count: int, wanted: Callable[[bytes], bool]
) -> list[bytes]:
    """The last `count` wanted lines of `f`, read backwards a block at a time (a log may be
    gigabytes); leaves `f` at its end, where following begins."""
    end = f.seek(0, os.SEEK_END)
    found: list[bytes] = []
    position, tail = end, b""
    while position > 0 and len(found) < count:
        step = min(TAIL_BLOCK, position)
        position -= step
        f.seek(position)
        block = f.read(step) + tail
        lines = block.split(b"\n")
        tail = lines.pop(0) if position > 0 else b""  # maybe cut: completed by the next read
        for line in reversed(lines):
            if line and wanted(line):
                found.append(line)
                if len(found) == count:
                    break
    if position == 0 and tail and len(found) < count and wanted(tail):
        found.append(tail)
    f.seek(end)
    return list(reversed(found))[-count:] if count else []


def follow(f: BinaryIO, path: Path, args: argparse.Namespace) -> None:
    """Print wanted lines as they are appended, until interrupted; a rotated or truncated
    log is reopened from its start, as `tail -F` does."""
    partial = b""
    while True:
        chunk = f.read()
        if chunk:
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            for line in lines:
                if _wanted(line, args.name):
                    _print_log_line(line, args.json)
            continue
        time.sleep(TAIL_POLL)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            continue  # between logrotate's rename and sfmd's reopen
        if now.st_ino != os.fstat(f.fileno()).st_ino or now.st_size < f.tell():
            f.close()
            f = open(path, "rb")
            partial = b""


def cmd_start(args: argparse.Namespace, client: Client) -> int:
    return _report(args, client.call("POST", stream_path(args.name, "start")), "started")


def cmd_stop(args: argparse.Namespace, client: Client) -> int:
    return _report(args, client.call("POST", stream_path(args.name, "stop")), "stopped")


def cmd_restart(args: argparse.Namespace, client: Client) -> int:
    """Stop and start in one request: nothing is left half-done if sfmctl is interrupted."""
    return _report(args, client.call("POST", stream_path(args.name, "restart")), "restarted")


def cmd_reload(args: argparse.Namespace, client: Client) -> int:
    """The credentials file read again; what changed, and how the streams on it stand."""
    answer = client.call("POST", "/reload")
    if args.json:
        print_json(answer)
        return EXIT_OK
    print(render_reload(answer))
    for stream in answer["streams"]:
        if stream["state"] == "failed":
            print(f"sfmctl: warning: stream {stream['name']} failed: {stream['last_error']}",
                  file=sys.stderr)
    config = answer.get("config") or {}
    if config.get("needs_restart"):
        print(f"sfmctl: warning: the config file changed ({', '.join(config['needs_restart'])}"
              "); reload does not apply it: restart sfmd for that", file=sys.stderr)
    if config.get("error"):
        print(f"sfmctl: warning: a restart would fail now: {config['error']}", file=sys.stderr)
    return EXIT_OK


def render_reload(answer: dict[str, Any]) -> str:
    changes = answer["credentials"]
    said = [f"{what} {', '.join(names)}" for what, names in changes.items() if names]
    lines = ["credentials reloaded: " + ("; ".join(said) if said else "no change")]
    for stream in answer["streams"]:
        lines.append(f"  {stream['name']} ({stream['credential']}): {stream['state']}")
    return "\n".join(lines)


def cmd_health(args: argparse.Namespace, client: Client) -> int:
    """One line for a monitoring check: exit 0 when sfmd answers and no stream is failed."""
    answer = client.call("GET", "/health")
    failed = answer.get("failed", [])
    if args.json:
        print_json(answer)
    else:
        states = answer.get("states", {})
        order = [s for s in SUMMARY_ORDER if s in states] + sorted(set(states) - set(SUMMARY_ORDER))
        counts = ", ".join(f"{states[s]} {s}" for s in order)
        verdict = f"{len(failed)} failed" if failed else "ok"
        print(f"sfmd {verdict}: {answer['streams']} streams"
              + (f" ({counts})" if counts else "") + f", up {duration(answer['uptime'])}")
        for stream in failed:
            print(f"    {stream['name']}: {stream['last_error'] or 'failed'}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_cluster(args: argparse.Namespace, client: Client) -> int:
    """The hosts with their heartbeats, then who holds which connection."""
    answer = client.call("GET", "/cluster")
    if args.json:
        print_json(answer)
    else:
        print(render_cluster(answer))
    return EXIT_OK


def render_cluster(answer: dict[str, Any], now: datetime | None = None) -> str:
    if not answer.get("enabled"):
        return "one host, no cluster ([cluster] nats_url is empty)"
    rows = [["HOST", "STARTED", "HEARTBEAT", "CONNECTIONS", "STREAMS", "DRAINING"]]
    for host in answer["hosts"]:
        name = host["host"] + (" (this host)" if host["host"] == answer["host"] else "")
        rows.append([name, host["started"], f"{since(host['heartbeat'], now)} ago",
                     str(host["connections"]), str(host["streams"]),
                     "yes" if host["draining"] else "no"])
    out = table(rows)
    connections = answer["connections"]
    out.append("")
    if not connections:
        out.append("no connection is held")
        return "\n".join(out)
    rows = [["CONNECTION", "HOST", "EPOCH", "PLACED"]]
    for c in connections:
        placed = c.get("placed")
        rows.append([c["slot"], c["host"], str(c["epoch"]),
                     "-" if placed in (None, c["host"]) else f"moving to {placed}"])
    out += table(rows)
    return "\n".join(line.rstrip() for line in out)


def cmd_drain(args: argparse.Namespace, client: Client) -> int:
    """Move a host's connections to the others (or, with --undo, let it take some again);
    with --wait, return once it holds none."""
    answer = client.call("POST", "/cluster/drain", {"host": args.host, "undo": args.undo})
    if args.json:
        print_json(answer)
    elif args.undo:
        print(f"{args.host}: no longer drained; placement gives it connections again")
    else:
        print(f"{args.host}: draining; its connections move to the other hosts")
    if args.wait and not args.undo:
        deadline = time.monotonic() + args.wait
        while True:
            report = client.call("GET", "/cluster")
            held = [c for c in report["connections"] if c["host"] == args.host]
            if not held:
                if not args.json:
                    print(f"{args.host}: holds no connection; it can be stopped")
                return EXIT_OK
            if time.monotonic() > deadline:
                raise CtlError(f"{args.host} still holds {len(held)} connections after "
                               f"{args.wait:g} s", "timeout")
            time.sleep(0.5)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    client.call("DELETE", stream_path(args.name))
    if not args.json:
        print(f"{args.name}: deleted (its published files stay)")
    return EXIT_OK


# --- the command line ------------------------------------------------------------------------


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def _common(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the verb; after it, they must not reset the first."""
    keep = {} if defaults else {"default": argparse.SUPPRESS}
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--socket", metavar="PATH", help=(
        f"the control socket (default: the --config file's daemon.control_socket, "
        f"else ${SOCKET_ENV}, else {DEFAULT_SOCKET})"), **keep)
    p.add_argument("--config", metavar="FILE", help="sfmd's config file, to find its socket",
                   **keep)
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer", **keep)
    p.add_argument("--timeout", type=_positive, metavar="S", help=(
        f"seconds to wait for the daemon's answer (default {DEFAULT_TIMEOUT:g})"),
        **(keep or {"default": DEFAULT_TIMEOUT}))
    return p


def _settings_options(
    p: argparse.ArgumentParser, *, filter_fields: bool, creating: bool = True
) -> None:
    if filter_fields:
        p.add_argument("--track", action="append", type=phrases, metavar="PHRASES", help=(
            "phrases to match, comma-separated or repeated; a space inside a phrase means AND"))
        p.add_argument("--follow", action="append", type=words, metavar="IDS",
                       help="numeric user ids, comma-separated or repeated")
        p.add_argument("--locations", action="append", type=boxes, metavar="W,S,E,N",
                       help="a bounding box, longitude first; repeat for several boxes")
        p.add_argument("--people", action="append", type=screen_names, metavar="NAMES",
                       help="screen names to follow (looked up by sfmd), comma-separated")
        p.add_argument("--language", action="append", type=words, metavar="CODES",
                       help="BCP 47 language codes, e.g. en,pt-BR")
        p.add_argument("--rule", action="append", metavar="RULE", help=(
            "a v2 filter rule, e.g. 'cats has:images' (repeat for several; not split on"
            " commas)"))
        p.add_argument("--collection", action="append", type=words, metavar="NSIDS", help=(
            "Bluesky: record collections, e.g. app.bsky.feed.post or app.bsky.*"))
        p.add_argument("--did", action="append", type=words, metavar="DIDS",
                       help="Bluesky: only these accounts' events, comma-separated")
        p.add_argument("--endpoint", metavar="URL", help=(
            "Bluesky: another Jetstream instance's ws(s)://.../subscribe"))
        p.add_argument("--tag", metavar="TAG", help=(
            "Mastodon hashtag streams: the hashtag (a leading # is dropped)"))
        p.add_argument("--list", metavar="ID", help="Mastodon list streams: the list's id")
    if creating and filter_fields:
        p.add_argument("--source", choices=("twitter", "bluesky", "mastodon"), help=(
            "the network (default twitter); bluesky makes a Jetstream stream, mastodon a"
            " hashtag stream unless --kind says otherwise"))
        p.add_argument("--kind", metavar="KIND", help=(
            "Mastodon: public, public:local, public:remote, hashtag (the default),"
            " hashtag:local, list or user (the account's home timeline)"))
    if creating:
        p.add_argument("--api", choices=("v1.1", "v2"), help="Twitter's API (default v1.1)")
    p.add_argument("--credential", metavar="C", help="the credential to connect with" + (
        " (default: sfmd's [twitter] default_credential)" if creating else ""))
    p.add_argument("--isolation", choices=("task", "process"), help=(
        "run as a task in sfmd" + (" (the default)" if creating else "")
        + " or as its own process under supervisord"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfmctl",
        description="Control a running sfmd through its control socket.",
        epilog="Exit status: 0 done; 1 sfmd refused or could not be reached; 2 usage error. "
        "List options take comma-separated values and may be repeated; give '' to clear a "
        "list in modify.",
        parents=[_common(defaults=True)],
    )
    common = _common(defaults=False)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, func: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(func=func)
        return p

    p = verb("status", cmd_status, "a table of every stream's state and counters")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these streams")
    p.add_argument("--interval", type=_positive, default=1.0, metavar="S",
                   help="seconds between the two samples MSG/S is measured over (default 1)")
    p.add_argument("--once", action="store_true", help="one sample, no wait; MSG/S shows '-'")

    verb("list", cmd_list, "stream names with their source, kind and state")

    p = verb("show", cmd_show, "one stream's settings and status")
    p.add_argument("name", metavar="NAME")

    p = verb("add", cmd_add, "create a filter stream (statuses/filter)")
    p.add_argument("name", metavar="NAME")
    _settings_options(p, filter_fields=True)
    p.add_argument("--inactive", action="store_true", help="create it stopped")

    p = verb("sample", cmd_sample, "create a sample stream (statuses/sample)")
    p.add_argument("name", metavar="NAME")
    _settings_options(p, filter_fields=False)
    p.add_argument("--inactive", action="store_true", help="create it stopped")

    p = verb("modify", cmd_modify, "change a stream's settings; only the options given change, "
             "a list option replaces the whole list, and '' empties it")
    p.add_argument("name", metavar="NAME")
    _settings_options(p, filter_fields=True, creating=False)

    p = verb("coverage", cmd_coverage, "a stream's connected time, gaps and files per day, "
             "read from its manifest (works while sfmd is down)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--since", type=moment, metavar="ISO", help="from this moment (UTC if no "
                   "zone is given; default: the manifest's first line)")
    p.add_argument("--until", type=moment, metavar="ISO", help="up to this moment (default: "
                   "the manifest's last line)")
    p.add_argument("--data-dir", metavar="DIR", help="sfmd's data_dir (default: the one in "
                   f"--config, ${CONFIG_ENV} or {DEFAULT_CONFIG})")

    p = verb("tail", cmd_tail, "the daemon's log, readable: the last lines, of one stream or "
             "all, then (with -f) new ones as they come; read from the file, so it works while "
             "sfmd is down")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this stream's lines (or a "
                   "shared connection's, e.g. v2-filter@CREDENTIAL)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines, across log rotations, until Ctrl-C")
    p.add_argument("-n", "--lines", type=_count, default=20, metavar="N",
                   help="how many of the last lines to print first (default 20)")
    p.add_argument("--log", metavar="FILE", help="the JSON log (default: sfmd.log in the "
                   f"log_dir of --config, ${CONFIG_ENV} or {DEFAULT_CONFIG})")

    for name, func, text in (
        ("start", cmd_start, "make a stream active"),
        ("stop", cmd_stop, "make a stream inactive; its open file is published"),
        ("restart", cmd_restart, "stop a stream and start it again (a new connection and "
         "file); an inactive stream is started"),
        ("delete", cmd_delete, "remove a stream; its published files stay"),
    ):
        p = verb(name, func, text)
        p.add_argument("name", metavar="NAME")

    verb("reload", cmd_reload, "read the credentials file again: streams whose keys changed "
         "reconnect, streams failed for a credential now fixed start (as SIGHUP does)")
    verb("health", cmd_health, "one line for monitoring: exit 0 when sfmd answers and no "
         "stream is failed, 1 otherwise")
    verb("cluster", cmd_cluster, "cluster mode: the hosts with their heartbeats, and which "
         "host holds which connection")
    p = verb("drain", cmd_drain, "cluster mode: move every connection off HOST before "
             "maintenance (a host that starts again takes connections again)")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--undo", action="store_true", help="let HOST take connections again")
    p.add_argument("--wait", type=_positive, metavar="S", help="wait up to S seconds until "
                   "HOST holds no connection (exit 1 if it still does)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_glue_values(sys.argv[1:] if argv is None else argv))
    try:
        client = Client(resolve_socket(args.socket, args.config), args.timeout)
        return int(args.func(args, client))
    except UsageError as e:
        _usage_exit(parser, str(e))
    except CtlError as e:
        if args.json and e.body is not None:
            print_json(e.body)
        print(e.line(), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sfmctl status | head -1`: the reader left; say nothing more, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _usage_exit(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.print_usage(sys.stderr)
    print(f"sfmctl: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
