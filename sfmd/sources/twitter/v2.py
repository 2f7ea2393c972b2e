"""Twitter API v2 streams as a `Dialect`: the request, and what a batch of messages means.

The connection's life (backoff, stall detection, graceful stop) is the same `Stream` as for
v1.1; three things differ. The request is a GET with the app's bearer token and the field
lists from the config. Messages are `{"data": ..., "includes": ..., "matching_rules": ...}`; an
object holding only `errors` is the API talking (logged and counted, and stored like any
message), and an operational disconnect, in either spelling the API uses (`title`
"operational-disconnect" or `disconnect_type` "OperationalDisconnect"), ends the connection:
reconnect as after a network error. 429 is rate limiting, as 420 was on v1.1.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from sfmd.config import TwitterConfig
from sfmd.credentials import Credential
from sfmd.sources.backoff import Failure
from sfmd.sources.twitter.framing import LineFramer
from sfmd.sources.twitter.stream import Ended, Framer, Request, StreamTarget
from sfmd.status import StreamStatus

PATHS = {"filter": "/2/tweets/search/stream", "sample": "/2/tweets/sample/stream"}
_TWEET_START = b'{"data"'


def stream_params(twitter: TwitterConfig) -> dict[str, str]:
    """The query every v2 stream connection sends: what each message should carry."""
    lists = {
        "tweet.fields": twitter.v2_tweet_fields,
        "expansions": twitter.v2_expansions,
        "user.fields": twitter.v2_user_fields,
        "media.fields": twitter.v2_media_fields,
        "place.fields": twitter.v2_place_fields,
        "poll.fields": twitter.v2_poll_fields,
    }
    return {key: ",".join(values) for key, values in lists.items() if values}


def bearer_problem(credential: Credential) -> str | None:
    """Why this credential cannot open a v2 stream, if it cannot."""
    if credential.bearer_token:
        return None
    return (
        f"credential {credential.name!r} has no bearer_token, which v2 streams need; "
        "add one to its table in the credentials file (and restart sfmd)"
    )


def _classify(message: bytes) -> tuple[bool, dict[str, Any] | None]:
    """Whether a message is a tweet, and the JSON object it holds: None when it holds no
    object, or when it is a tweet known by its first key without being decoded."""
    if message.startswith(_TWEET_START):
        return True, None
    try:
        body = json.loads(message)
    except ValueError:
        return False, None
    if not isinstance(body, dict):
        return False, None
    return "data" in body, body  # "data" with "errors" beside it is a tweet all the same


def count_tweets(messages: list[bytes]) -> int:
    """The number of tweets among `messages`, by the test `V2.examine` counts them with live:
    how the archive of the v2 sample stream recounts the lines of a file it recovers."""
    return sum(_classify(message)[0] for message in messages)


def is_operational_disconnect(error: Any) -> bool:
    return isinstance(error, dict) and (
        error.get("title") == "operational-disconnect"
        or error.get("disconnect_type") == "OperationalDisconnect"
    )


class V2:
    """A v2 filtered or sample stream; `api_url` is `twitter.api_url`."""

    url_setting = "twitter.api_url"
    #: How the archive recounts a recovered file's tweets: as `examine` counts them live.
    count = staticmethod(count_tweets)

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.errors = 0  # `errors` objects the API sent on this stream, for status and metrics

    def request(self, target: StreamTarget) -> Request:
        url = self.api_url + PATHS[target.endpoint]
        query = urlencode(target.params)
        headers = {"Authorization": f"Bearer {target.credential.bearer_token}"}
        return "GET", f"{url}?{query}" if query else url, headers, None

    def framer(self) -> Framer:
        return LineFramer()

    def examine(
        self, messages: list[bytes], log: Any, status: StreamStatus
    ) -> tuple[int, Ended | None]:
        tweets = 0
        ending: Ended | None = None
        for message in messages:
            if message.startswith(_TWEET_START):  # the test of `_classify`, without a call
                tweets += 1
                continue
            tweet, body = _classify(message)
            if tweet:
                tweets += 1  # a tweet with partial errors (say, a deleted quoted tweet)
                continue
            if body is None:
                log.warning("malformed_message", bytes=len(message))
                continue
            errors = body.get("errors")
            if not isinstance(errors, list):
                log.warning("unknown_message", keys=sorted(map(str, body))[:10])
                continue
            self.errors += len(errors)
            for error in errors[:5]:
                shown = error if isinstance(error, dict) else {"detail": error}
                log.warning(
                    "api_error_message",
                    title=str(shown.get("title", ""))[:100],
                    detail=str(shown.get("detail", ""))[:200],
                    type=str(shown.get("type", ""))[:200],
                )
            if any(is_operational_disconnect(e) for e in errors):
                ending = Ended(Failure.NETWORK, "operational disconnect from the API")
        return tweets, ending
