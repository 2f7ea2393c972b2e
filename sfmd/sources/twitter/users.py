"""SFM's `people`: screen names turned into follow ids through the REST call users/lookup.

Twitter's filter endpoint follows ids, not names; archivists think in names. The lookup is
signed with the stream's own credential, 100 names a call, and names Twitter does not know
are reported back rather than silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import aiohttp

from sfmd.credentials import Credential
from sfmd.errors import Unreachable
from sfmd.sources.twitter import oauth

BATCH = 100  # users/lookup takes at most 100 screen names per call


class LookupFailed(Unreachable):
    """users/lookup could not answer (network, credentials, limits); the message says which."""

    code = "lookup_failed"


async def lookup_ids(
    session: aiohttp.ClientSession,
    rest_url: str,
    credential: Credential,
    screen_names: Sequence[str],
    *,
    request_timeout: float = 30.0,
) -> dict[str, str]:
    """Map each screen name Twitter knows (as given, case kept) to its id string."""
    url = f"{rest_url.rstrip('/')}/users/lookup.json"
    wanted = {name.lower(): name for name in screen_names}
    found: dict[str, str] = {}
    names = list(wanted.values())
    for start in range(0, len(names), BATCH):
        batch = names[start : start + BATCH]
        for user in await _lookup(session, url, credential, batch, request_timeout):
            key = str(user.get("screen_name", "")).lower()
            user_id = user.get("id_str")
            if key in wanted and isinstance(user_id, str) and user_id.isdigit():
                found[wanted[key]] = user_id
    return found


async def _lookup(
    session: aiohttp.ClientSession,
    url: str,
    credential: Credential,
    names: list[str],
    request_timeout: float,
) -> list[dict[str, object]]:
    params = {"screen_name": ",".join(names), "include_entities": "false"}
    signed_url, headers, body = oauth.sign(credential, "POST", url, params)
    try:
        async with session.post(
            signed_url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=request_timeout),
        ) as resp:
            raw = await resp.read()
            if resp.status == 404:
                return []  # code 17: none of these names exist
            if resp.status != 200:
                snippet = " ".join(raw[:200].decode("utf-8", "replace").split())
                raise LookupFailed(
                    f"users/lookup answered HTTP {resp.status} ({snippet}); "
                    "check the credential and twitter.rest_url"
                )
    except (aiohttp.ClientError, TimeoutError) as e:
        raise LookupFailed(
            f"users/lookup could not be reached at {url}: {type(e).__name__}"
        ) from None
    try:
        users = json.loads(raw)
    except ValueError:
        raise LookupFailed("users/lookup answered something that is not JSON") from None
    if not isinstance(users, list):
        raise LookupFailed("users/lookup answered JSON that is not a list of users")
    return [u for u in users if isinstance(u, dict)]
