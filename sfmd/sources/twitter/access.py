"""What a Twitter stream needs of its credential, said as a reason a person can act on.

Checked when a change is admitted and again at every reconcile, for every way a stream runs:
a credential can lose a key, or vanish from the file, while sfmd is down.
"""

from __future__ import annotations

from collections.abc import Mapping

from sfmd.credentials import Credential
from sfmd.registry import StreamSpec
from sfmd.sources.twitter.v2 import bearer_problem


def credential_problem(spec: StreamSpec, credentials: Mapping[str, Credential]) -> str | None:
    """Why `spec`'s credential cannot serve it, or None when it can."""
    credential = credentials.get(spec.credential)
    if credential is None:
        known = ", ".join(sorted(credentials)) or "none"
        return (
            f"credential {spec.credential!r} is not in the credentials file (known: {known}); "
            "add it there and reload sfmd (sfmctl reload, or SIGHUP), or give the stream "
            "another credential"
        )
    if spec.api == "v2":
        return bearer_problem(credential)
    if not credential.has_oauth1 and not credential.bearer_token:
        return (
            f"credential {spec.credential!r} holds no Twitter keys (only a Mastodon account); "
            "v1.1 streams need the four OAuth 1.0a keys"
        )
    if not credential.has_oauth1:
        return (
            f"credential {spec.credential!r} has only a bearer_token; v1.1 streams need the "
            'four OAuth 1.0a keys (or make it a v2 stream)'
        )
    return None
