"""OAuth 1.0a request signing through oauthlib, never by hand (a hand-rolled signature is the
classic source of 401s).

The Authorization header carries the consumer key and the access token, so callers must
never log the headers this returns.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

import oauthlib.oauth1

from sfmd.credentials import Credential
from sfmd.errors import SfmdError

FORM = "application/x-www-form-urlencoded"


class CredentialUnusable(SfmdError):
    """The credential lacks the keys this API needs; the message names what is missing."""


def encode_params(params: dict[str, str]) -> str:
    """RFC 3986 percent-encoding, as OAuth signs it (a space is %20, never +)."""
    return urlencode(params, quote_via=quote, safe="")


def sign(
    credential: Credential, method: str, url: str, params: dict[str, str]
) -> tuple[str, dict[str, str], str | None]:
    """Return (url, headers, body) for a signed request: a form body for POST, a query for GET."""
    if not credential.has_oauth1:
        raise CredentialUnusable(
            f"credential '{credential.name}' has no OAuth 1.0a keys (consumer_key, "
            "consumer_secret, access_token, access_token_secret); v1.1 streams need them"
        )
    client = oauthlib.oauth1.Client(
        credential.consumer_key,
        client_secret=credential.consumer_secret,
        resource_owner_key=credential.access_token,
        resource_owner_secret=credential.access_token_secret,
    )
    encoded = encode_params(params)
    if method == "POST":
        return client.sign(url, "POST", encoded, {"Content-Type": FORM})
    if encoded:
        url = f"{url}?{encoded}"
    signed_url, headers, _ = client.sign(url, method)
    return signed_url, headers, None
