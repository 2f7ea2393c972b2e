"""The credentials file: OAuth keys by name, loaded once, never printed.

Secrets live only in `Credential` objects whose repr shows the name alone, so a stray
log line or traceback cannot leak them.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from sfmd.errors import SfmdError

OAUTH1_KEYS = ("consumer_key", "consumer_secret", "access_token", "access_token_secret")
OPTIONAL_KEYS = ("bearer_token",)
#: A Mastodon account's keys, given together: the instance's URL (not secret) and the user
#: access token (secret).
MASTODON_KEYS = ("mastodon_instance", "mastodon_token")
SECRET_KEYS = (*OAUTH1_KEYS, *OPTIONAL_KEYS, "mastodon_token")
ALL_KEYS = (*OAUTH1_KEYS, *OPTIONAL_KEYS, *MASTODON_KEYS)


class CredentialsError(SfmdError):
    """The credentials file is missing, unsafe or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class Credential:
    """One named set of keys. Every secret field is hidden from repr and comparison output."""

    name: str
    consumer_key: str = field(repr=False, default="")
    consumer_secret: str = field(repr=False, default="")
    access_token: str = field(repr=False, default="")
    access_token_secret: str = field(repr=False, default="")
    bearer_token: str = field(repr=False, default="")
    mastodon_instance: str = ""
    mastodon_token: str = field(repr=False, default="")

    @property
    def has_oauth1(self) -> bool:
        return all(getattr(self, key) for key in OAUTH1_KEYS)

    @property
    def has_mastodon(self) -> bool:
        return bool(self.mastodon_instance and self.mastodon_token)

    def placeholders(self) -> list[str]:
        """The keys still holding the example file's REPLACE-WITH-... text (names only)."""
        return [key for key in ALL_KEYS
                if str(getattr(self, key) or "").startswith("REPLACE-WITH-")]

    def secrets(self) -> list[str]:
        """Every secret value, for tests and redaction: none of these may ever be printed."""
        values = [getattr(self, key) for key in SECRET_KEYS]
        return [v for v in values if v]

    def __str__(self) -> str:
        return self.name


def check_file_mode(path: Path) -> None:
    """Refuse a credentials file that group or others can read or write."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise CredentialsError(
            f"credentials file {path} has mode {mode:04o}; it holds secrets and must be "
            f"0600 or stricter: run `chmod 600 {path}`"
        )


def load_credentials(
    path: str | os.PathLike[str], *, check_mode: bool = True
) -> dict[str, Credential]:
    """Read and check the credentials file; the error names the table and key, never a value."""
    path = Path(path)
    try:
        if check_mode:
            check_file_mode(path)
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise CredentialsError(
            f"credentials file {path} does not exist; copy etc/credentials.toml.example there "
            "and fill in your keys"
        ) from None
    except PermissionError:
        raise CredentialsError(f"credentials file {path} cannot be read by this user") from None
    except IsADirectoryError:
        raise CredentialsError(
            f"credentials file {path} is a folder; point [twitter] credentials_file at the file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        # The decoder's message quotes a position, not the text, so no secret leaks here.
        raise CredentialsError(f"credentials file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:  # its message would quote the bytes: say less
        raise CredentialsError(
            f"credentials file {path} is not valid TOML: the file is not UTF-8 text"
        ) from None

    creds: dict[str, Credential] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise CredentialsError(
                f"credentials file {path}: `{name}` must be a table like [{name}] holding "
                f"{', '.join(OAUTH1_KEYS)}"
            )
        unknown = sorted(set(table) - set(ALL_KEYS))
        if unknown:
            raise CredentialsError(
                f"credentials file {path}: [{name}] has unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(ALL_KEYS)}"
            )
        for key, value in table.items():
            if not isinstance(value, str) or not value:
                raise CredentialsError(
                    f"credentials file {path}: [{name}] {key} must be a non-empty string"
                )
        present = [k for k in OAUTH1_KEYS if k in table]
        if present and len(present) != len(OAUTH1_KEYS):
            missing = [k for k in OAUTH1_KEYS if k not in table]
            raise CredentialsError(
                f"credentials file {path}: [{name}] is missing {', '.join(missing)}; "
                "OAuth 1.0a needs all four keys"
            )
        mastodon = [k for k in MASTODON_KEYS if k in table]
        if len(mastodon) == 1:
            missing = [k for k in MASTODON_KEYS if k not in table]
            raise CredentialsError(
                f"credentials file {path}: [{name}] has {mastodon[0]} but not {missing[0]}; "
                "a Mastodon account needs both"
            )
        instance = table.get("mastodon_instance", "")
        if instance and not instance.startswith("REPLACE-WITH-") and not (
            instance.startswith(("https://", "http://")) and "/" not in
            instance.split("://", 1)[1].rstrip("/")
        ):
            raise CredentialsError(
                f"credentials file {path}: [{name}] mastodon_instance must be the instance's "
                "address, like https://mastodon.social (no path)"
            )
        if not present and "bearer_token" not in table and not mastodon:
            raise CredentialsError(
                f"credentials file {path}: [{name}] holds no keys; give the four OAuth 1.0a "
                "keys (and/or bearer_token for API v2), or mastodon_instance and "
                "mastodon_token for a Mastodon account"
            )
        if instance:
            table = {**table, "mastodon_instance": instance.rstrip("/")}
        creds[name] = Credential(name=name, **table)
    return creds


def credentials_problems(
    credentials: dict[str, Credential], default_credential: str, path: Path
) -> list[str]:
    """What stops `sfmd run`: a default credential the file lacks, and keys still holding the
    example's placeholders. Names and keys only, never a value."""
    problems = []
    # A file without Twitter keys (Bluesky and Mastodon only, or empty) needs no default:
    # only Twitter streams fall back to it.
    twitter = [c for c in credentials.values() if c.has_oauth1 or c.bearer_token]
    if twitter and default_credential not in credentials:
        known = ", ".join(sorted(credentials)) or "none"
        problems.append(f"[twitter] default_credential {default_credential!r} is not in "
                        f"{path} (known: {known})")
    for name, credential in sorted(credentials.items()):
        placeholders = credential.placeholders()
        if placeholders:
            problems.append(f"credential {name!r} in {path} still holds the example's "
                            f"placeholder in {', '.join(placeholders)}: put the real keys there, "
                            "or delete the lines of keys you do not have")
    return problems
