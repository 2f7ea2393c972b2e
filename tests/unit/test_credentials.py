"""The credentials file: refused when unsafe or malformed, and never printed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sfmd.credentials import CredentialsError, credentials_problems, load_credentials

GOOD = """
[default]
consumer_key = "ck-secret-1"
consumer_secret = "cs-secret-2"
access_token = "at-secret-3"
access_token_secret = "ats-secret-4"

[app]
bearer_token = "bt-secret-5"
"""
SECRETS = [f"secret-{i}" for i in range(1, 6)]


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_loads_and_hides_every_secret(tmp_path: Path) -> None:
    creds = load_credentials(write(tmp_path, GOOD))
    assert set(creds) == {"default", "app"}
    assert creds["default"].has_oauth1 and not creds["app"].has_oauth1
    assert creds["app"].bearer_token == "bt-secret-5"
    shown = repr(creds) + str(creds) + str(creds["default"]) + repr(list(creds.values()))
    assert not any(s in shown for s in SECRETS)
    assert sorted(creds["default"].secrets()) == sorted(
        ["ck-secret-1", "cs-secret-2", "at-secret-3", "ats-secret-4"]
    )


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_loose_mode_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, GOOD, mode)
    with pytest.raises(CredentialsError, match="chmod 600"):
        load_credentials(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_strict_modes_are_fine(tmp_path: Path, mode: int) -> None:
    assert "default" in load_credentials(write(tmp_path, GOOD, mode))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[x]\nconsumer_key = "k-secret-9"\n', "missing consumer_secret"),
        ('[x]\nconsumer_key = "k"\nfoo = "bar-secret-9"\n', "unknown key"),
        ("x = 1\n", "must be a table"),
        ("[x]\n", "holds no keys"),
        ('[x]\nbearer_token = ""\n', "non-empty string"),
        ('[x]\nbearer_token = 5\n', "non-empty string"),
        ('[x\nconsumer_key="k-secret-9"', "not valid TOML"),
    ],
)
def test_malformed_files_name_the_problem_not_the_value(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(CredentialsError, match=message) as info:
        load_credentials(write(tmp_path, text))
    assert "secret-9" not in str(info.value)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"credentials\.toml\.example"):
        load_credentials(tmp_path / "nope.toml")


def test_a_file_of_mastodon_accounts_needs_no_twitter_default(tmp_path: Path) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text('[fedi]\nmastodon_instance = "https://example.social/"\n'
                    'mastodon_token = "t-SECRET"\n')
    os.chmod(path, 0o600)
    credentials = load_credentials(path)
    assert credentials["fedi"].has_mastodon and not credentials["fedi"].has_oauth1
    assert credentials["fedi"].mastodon_instance == "https://example.social"
    assert "t-SECRET" in credentials["fedi"].secrets() and "t-SECRET" not in repr(
        credentials["fedi"])
    assert credentials_problems(credentials, "default", path) == []
    # With Twitter keys in the file, the default must be one of them again.
    path.write_text(path.read_text() + '[tw]\nbearer_token = "b-SECRET"\n')
    problems = credentials_problems(load_credentials(path), "default", path)
    assert len(problems) == 1 and "default_credential" in problems[0]


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('mastodon_token = "t"\n', "needs both"),
        ('mastodon_instance = "https://example.social"\n', "needs both"),
        ('mastodon_instance = "example.social"\nmastodon_token = "t"\n', "no path"),
        ('mastodon_instance = "https://example.social/api"\nmastodon_token = "t"\n', "no path"),
    ],
)
def test_a_half_or_wrong_mastodon_account_is_refused(tmp_path: Path, table: str,
                                                      says: str) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text("[fedi]\n" + table)
    os.chmod(path, 0o600)
    with pytest.raises(CredentialsError) as e:
        load_credentials(path)
    assert says in str(e.value) and "[fedi]" in str(e.value)
