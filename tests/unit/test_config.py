"""The config file: defaults, the shipped example, and a refusal naming the key for each rule."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

import pytest

from sfmd.config import (
    KEYS,
    SECTIONS,
    Config,
    ConfigError,
    default_config,
    load_config,
    render_toml,
)
from tests.helpers.paths import REPO

EXAMPLE = REPO / "etc" / "sfmd.toml"

# The documented config block (README and etc/sfmd.toml), verbatim: the defaults must be
# exactly these values.
CONTRACT_TOML = """
[daemon]
data_dir = "/var/lib/sfm/data"        # stream output
state_dir = "/var/lib/sfm/state"      # the stream registry, survives restarts
log_dir = "/var/log/sfm"              # sfmd.log (and one log per isolated stream)
control_socket = "/run/sfm/sfmd.sock" # HTTP over a Unix socket
socket_mode = "0660"
save_interval = 900                   # seconds; files rotate on UTC boundaries of this
compress = true                       # gzip output

[twitter]
stream_url = "https://stream.twitter.com/1.1"   # point it at `sfmd fakeapi` for tests
rest_url = "https://api.twitter.com/1.1"        # users/lookup, to turn `people` into ids
credentials_file = "/etc/sfm/credentials.toml"
default_credential = "default"        # what a sample stream uses unless told otherwise

[timing]                              # Twitter's published rules are the defaults
stall_timeout = 90                    # seconds with no byte at all, keep-alives included
tcp_backoff_step = 0.25               # linear, per consecutive network error
tcp_backoff_max = 16
http_backoff_start = 5                # exponential, doubling, per consecutive HTTP error
http_backoff_max = 320
ratelimit_backoff_start = 60          # HTTP 420 / 429, exponential, doubling
ratelimit_backoff_max = 960

[supervisor]                          # only for streams with isolation = "process"
server_url = "unix:///var/run/supervisor.sock"
conf_dir = "/etc/supervisor/conf.d"   # where per-stream confs are written
program_prefix = "sfm-stream-"
user = "sfm"
"""


def write(folder: Path, text: str, name: str = "sfmd.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def sections(config: Config) -> dict[str, object]:
    return {table: getattr(config, table) for table in SECTIONS}


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


# --- defaults and the shipped example --------------------------------------------------------


def test_an_empty_file_gives_the_contracts_defaults(tmp_path: Path) -> None:
    empty = load_config(write(tmp_path, ""))
    contract = load_config(write(tmp_path, CONTRACT_TOML, "contract.toml"))
    assert sections(empty) == sections(contract)


def test_keys_beyond_the_contract_have_their_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.daemon.compress_level == 6
    assert config.daemon.socket_mode == 0o660
    assert config.twitter.delimited is False
    assert config.timing.connect_timeout == 30
    assert config.timing.flush_interval == 1.0
    assert config.timing.shutdown_timeout == 8


def test_the_shipped_example_loads_and_holds_every_key_at_its_default(tmp_path: Path) -> None:
    example = load_config(EXAMPLE)
    assert example.path == EXAMPLE
    assert sections(example) == sections(load_config(write(tmp_path, "")))
    with open(EXAMPLE, "rb") as f:
        written = {(t, k) for t, table in tomllib.load(f).items() for k in table}
    assert written == {(key.table, key.name) for key in KEYS}


def test_the_credentials_example_is_a_valid_credentials_file() -> None:
    from sfmd.credentials import load_credentials

    creds = load_credentials(EXAMPLE.with_name("credentials.toml.example"), check_mode=False)
    assert list(creds) == ["default"]


def test_each_section_dataclass_has_exactly_the_keys_of_its_table() -> None:
    for table, cls in SECTIONS.items():
        assert [f.name for f in dataclasses.fields(cls)] == [
            k.name for k in KEYS if k.table == table
        ]


def test_default_config_puts_every_path_under_base_dir(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    assert config.path is None
    paths = [
        config.daemon.data_dir,
        config.daemon.state_dir,
        config.daemon.log_dir,
        config.daemon.control_socket,
        config.twitter.credentials_file,
        config.supervisor.conf_dir,
    ]
    assert all(p.parent == tmp_path for p in paths), paths
    assert len(set(paths)) == len(paths)
    empty = load_config(write(tmp_path, ""))
    assert config.timing == empty.timing
    assert config.daemon.save_interval == empty.daemon.save_interval


def test_render_toml_loads_back_equal(tmp_path: Path) -> None:
    odd = tmp_path / 'we"ird\\dir'
    odd.mkdir()
    config = default_config(odd)
    again = load_config(write(tmp_path, render_toml(config)))
    assert sections(again) == sections(config)


# --- paths -----------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write(
        folder,
        '[daemon]\ndata_dir = "data"\nstate_dir = "../state"\ncontrol_socket = "./s.sock"\n'
        '[twitter]\ncredentials_file = "creds.toml"\n[supervisor]\nconf_dir = "conf.d"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(os.path.relpath(path, elsewhere))
    assert config.path == path
    assert config.daemon.data_dir == folder / "data"
    assert config.daemon.state_dir == tmp_path / "state"
    assert config.daemon.control_socket == folder / "s.sock"
    assert config.twitter.credentials_file == folder / "creds.toml"
    assert config.supervisor.conf_dir == folder / "conf.d"
    assert config.daemon.log_dir == Path("/var/log/sfm")  # absolute stays as written


def test_a_control_socket_path_too_long_for_af_unix_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, f'[daemon]\ncontrol_socket = "/{"s" * 107}"\n')
    assert "[daemon] control_socket" in message and "107 bytes" in message
    ok = load_config(write(tmp_path, f'[daemon]\ncontrol_socket = "/{"s" * 106}"\n'))
    assert len(str(ok.daemon.control_socket)) == 107


# --- the file itself -------------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_named(tmp_path: Path) -> None:
    message = refusal(tmp_path, "[daemon\n")
    assert "sfmd.toml: not valid TOML" in message


def test_a_folder_instead_of_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[deamon]\n", "unknown table [deamon] (did you mean 'daemon'?)"),
        ("[v2]\n", "unknown table [v2]; known tables: [daemon], [twitter], [timing]"),
        ("save_interval = 900\n", "unknown table [save_interval]"),
        ("[daemon]\nsave_intervall = 60\n", "[daemon] unknown key 'save_intervall' (did you mean"),
        ("[timing]\nstal = 1\n", "[timing] unknown key 'stal'"),
        ("[twitter.extra]\nx = 1\n", "[twitter] unknown key 'extra'"),
        ("daemon = 5\n", "[daemon] must be a table, got 5"),
    ],
)
def test_unknown_tables_and_keys_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(tmp_path, text)


# --- values ----------------------------------------------------------------------------------


def test_the_message_names_file_table_key_rule_and_value(tmp_path: Path) -> None:
    message = refusal(tmp_path, '[timing]\nstall_timeout = "abc"\n')
    assert message == (
        f"{tmp_path / 'sfmd.toml'}: [timing] stall_timeout must be a positive number (seconds), "
        "got 'abc'"
    )


BAD_VALUES = [
    ("timing", "stall_timeout", "-1", "positive number"),
    ("timing", "stall_timeout", "0", "positive number"),
    ("timing", "stall_timeout", "true", "positive number"),
    ("timing", "stall_timeout", "inf", "positive number"),
    ("timing", "stall_timeout", "nan", "positive number"),
    ("timing", "tcp_backoff_step", "-0.25", "positive number"),
    ("timing", "connect_timeout", "0", "positive number"),
    ("timing", "flush_interval", "-1.0", "positive number"),
    ("timing", "start_jitter", "-1", "0 or more"),
    ("timing", "start_jitter", "true", "0 or more"),
    ("timing", "reconcile_interval", "0", "positive number"),
    ("timing", "status_interval", "-2", "positive number"),
    ("timing", "shutdown_timeout", "10", "under 10 seconds"),
    ("timing", "shutdown_timeout", "0", "positive number"),
    ("daemon", "save_interval", "7", "divide 86400"),
    ("daemon", "save_interval", "86401", "divide 86400"),
    ("daemon", "save_interval", "0", "at least 1"),
    ("daemon", "save_interval", "900.0", "whole number"),
    ("daemon", "save_interval", '"900"', "whole number"),
    ("daemon", "socket_mode", "0o660", 'octal permission string like "0660"'),
    ("daemon", "socket_mode", "660", 'octal permission string like "0660"'),
    ("daemon", "socket_mode", '"0980"', "octal permission string"),
    ("daemon", "socket_mode", '"rw-rw----"', "octal permission string"),
    ("daemon", "socket_mode", '"01660"', "octal permission string"),
    ("daemon", "socket_mode", '"0460"', "owner read and write"),
    ("daemon", "compress", '"yes"', "true or false"),
    ("daemon", "compress", "1", "true or false"),
    ("daemon", "compress_level", "0", "from 1 to 9"),
    ("daemon", "compress_level", "10", "from 1 to 9"),
    ("daemon", "compress_level", "true", "from 1 to 9"),
    ("daemon", "data_dir", '""', "non-empty path"),
    ("daemon", "data_dir", "5", "non-empty path"),
    ("twitter", "stream_url", '"ftp://stream.twitter.com/1.1"', "http:// or https://"),
    ("twitter", "stream_url", '"stream.twitter.com/1.1"', "http:// or https://"),
    ("twitter", "stream_url", '"https://"', "http:// or https://"),
    ("twitter", "stream_url", '"http://localhost:99999/1.1"', "http:// or https://"),
    ("twitter", "rest_url", '"https://api.twitter.com/1.1?x=1"', "without ?query"),
    ("twitter", "rest_url", "1", "http:// or https://"),
    ("twitter", "default_credential", '""', "credential name"),
    ("twitter", "delimited", '"length"', "true or false"),
    ("supervisor", "server_url", '"unix://relative.sock"', "unix:///absolute"),
    ("supervisor", "server_url", '"unix:///"', "unix:///absolute"),
    ("supervisor", "server_url", '"ftp://host"', "unix:///absolute"),
    ("supervisor", "program_prefix", '"sfm stream"', "program name"),
    ("supervisor", "program_prefix", '"sfm:"', "program name"),
    ("supervisor", "program_prefix", '""', "program name"),
    ("supervisor", "user", '"sfm;rm"', "user name"),
    ("supervisor", "user", '"sfm #x"', "user name"),
]


@pytest.mark.parametrize(("table", "key", "value", "rule"), BAD_VALUES)
def test_a_bad_value_is_refused_naming_the_key(
    tmp_path: Path, table: str, key: str, value: str, rule: str
) -> None:
    message = refusal(tmp_path, f"[{table}]\n{key} = {value}\n")
    assert f"sfmd.toml: [{table}] {key} " in message
    assert rule in message


def test_save_interval_refusal_says_why(tmp_path: Path) -> None:
    message = refusal(tmp_path, "[daemon]\nsave_interval = 7\n")
    assert "UTC boundaries" in message and "got 7" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tcp_backoff_step = 2\ntcp_backoff_max = 1\n",
            "[timing] tcp_backoff_max must be at least",
        ),
        ("http_backoff_max = 4\n", "[timing] http_backoff_max must be at least http_backoff_start"),
        ("ratelimit_backoff_start = 1000\n", "[timing] ratelimit_backoff_max must be at least"),
    ],
)
def test_a_backoff_cap_below_its_start_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(tmp_path, "[timing]\n" + text)


GOOD_VALUES = [
    ("daemon", "save_interval", "1", 1),
    ("daemon", "save_interval", "2", 2),
    ("daemon", "save_interval", "86400", 86400),
    ("daemon", "compress_level", "1", 1),
    ("daemon", "compress_level", "9", 9),
    ("daemon", "socket_mode", '"600"', 0o600),
    ("daemon", "socket_mode", '"0777"', 0o777),
    ("timing", "stall_timeout", "0.01", 0.01),
    ("timing", "shutdown_timeout", "9.99", 9.99),
    ("timing", "tcp_backoff_max", "0.25", 0.25),  # equal to the step is fine
    (
        "twitter",
        "stream_url",
        '"https://stream.twitter.com/1.1/"',
        "https://stream.twitter.com/1.1",
    ),
    ("twitter", "stream_url", '"http://127.0.0.1:8080/1.1"', "http://127.0.0.1:8080/1.1"),
    ("twitter", "rest_url", '"http://localhost:1/1.1///"', "http://localhost:1/1.1"),
    ("twitter", "default_credential", '"research team"', "research team"),
    ("twitter", "delimited", "true", True),
    ("supervisor", "server_url", '"http://127.0.0.1:9001"', "http://127.0.0.1:9001"),
    ("supervisor", "server_url", '"unix:///tmp/s.sock"', "unix:///tmp/s.sock"),
    ("supervisor", "program_prefix", '"x"', "x"),
]


@pytest.mark.parametrize(("table", "key", "value", "expected"), GOOD_VALUES)
def test_boundary_values_are_accepted(
    tmp_path: Path, table: str, key: str, value: str, expected: object
) -> None:
    config = load_config(write(tmp_path, f"[{table}]\n{key} = {value}\n"))
    got = getattr(getattr(config, table), key)
    assert got == expected
    assert type(got) is type(expected)


def test_timings_are_floats_even_when_written_as_integers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[timing]\nstall_timeout = 2\n"))
    assert isinstance(config.timing.stall_timeout, float)


def test_start_jitter_may_be_zero(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[timing]\nstart_jitter = 0\n"))
    assert config.timing.start_jitter == 0.0


def test_cluster_defaults_are_one_host_named_by_the_hostname(tmp_path: Path) -> None:
    import socket

    cluster = load_config(write(tmp_path, "")).cluster
    assert cluster.nats_url == ""
    assert cluster.host_id == socket.gethostname()
    assert cluster.lease_ttl == 15.0


def test_cluster_keys_take_several_nats_urls_and_a_host_id(tmp_path: Path) -> None:
    text = (
        '[cluster]\nnats_url = "nats://10.0.0.1:4222, nats://10.0.0.2:4222/"\n'
        'host_id = "host-a.example"\nlease_ttl = 2.5\n'
    )
    cluster = load_config(write(tmp_path, text)).cluster
    assert cluster.nats_url == "nats://10.0.0.1:4222,nats://10.0.0.2:4222"
    assert cluster.host_id == "host-a.example"
    assert cluster.lease_ttl == 2.5


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('nats_url = "http://10.0.0.1:4222"', "[cluster] nats_url must be"),
        ('nats_url = "nats://"', "[cluster] nats_url must be"),
        ('host_id = "a b"', "[cluster] host_id must be 1-64 characters"),
        ("lease_ttl = 0.5", "[cluster] lease_ttl must be at least 1 second"),
    ],
)
def test_bad_cluster_keys_are_refused_naming_the_key(
    tmp_path: Path, line: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(write(tmp_path, f"[cluster]\n{line}\n"))


def test_a_nats_password_is_refused_and_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, '[cluster]\nnats_url = "nats://sfm:hunter2secret@10.0.0.1:4222"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "user or password" in str(caught.value)
    assert "hunter2secret" not in str(caught.value)
