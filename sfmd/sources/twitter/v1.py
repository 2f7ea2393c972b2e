"""Twitter's v1.1 streaming API as a `Dialect`: the signed request, the framing, and what a
batch of messages means.

The request is signed with the credential's OAuth 1.0a user keys: `POST statuses/filter.json`
with a form body, `GET statuses/sample.json`, always with `stall_warnings=true`, and with
`delimited=length` when configured. Messages are tweets (counted without parsing JSON, by
their first key) or notices: limit notices carry the undelivered count, stall warnings and
disconnect messages are logged, and a disconnect message announces the end of the
connection.
"""

from __future__ import annotations

from typing import Any

from sfmd.sources.backoff import Failure
from sfmd.sources.twitter import oauth
from sfmd.sources.twitter.framing import (
    LengthFramer,
    LineFramer,
    MessageKind,
    count_tweets,
    disconnect_reason,
    parse_notice,
    triage,
)
from sfmd.sources.twitter.stream import Ended, Framer, Request, StreamTarget
from sfmd.status import StreamStatus

# Disconnects that mean a person or a second collector is involved: reconnecting at once
# would only fight the other connection, so these wait at the HTTP rate without a reset.
STICKY_DISCONNECTS = (2, 6, 7)


class V1:
    url_setting = "twitter.stream_url"
    #: How the archive recounts a recovered file's tweets: as `examine` counts them live.
    count = staticmethod(count_tweets)

    def __init__(self, stream_url: str, *, delimited: bool = False) -> None:
        self.stream_url = stream_url.rstrip("/")
        self.delimited = delimited

    def request(self, target: StreamTarget) -> Request:
        params = dict(target.params)
        params["stall_warnings"] = "true"
        if self.delimited:
            params["delimited"] = "length"
        url = f"{self.stream_url}/statuses/{target.endpoint}.json"
        method = "POST" if target.endpoint == "filter" else "GET"
        signed_url, headers, body = oauth.sign(target.credential, method, url, params)
        return method, signed_url, headers, body

    def framer(self) -> Framer:
        return LengthFramer() if self.delimited else LineFramer()

    def examine(
        self, messages: list[bytes], log: Any, status: StreamStatus
    ) -> tuple[int, Ended | None]:
        tweets, others = triage(messages)  # no per-message Python work for tweets
        ending = None
        for kind, message in others:
            if kind is MessageKind.DELETE:
                continue
            disconnect = _notice(kind, message, log, status)
            if disconnect is not None:
                code = disconnect.get("code")
                ending = Ended(
                    Failure.HTTP if code in STICKY_DISCONNECTS else Failure.NETWORK,
                    f"disconnect message code {code}: {disconnect_reason(code)}",
                    reset_ok=code not in STICKY_DISCONNECTS,
                )
        return tweets, ending


def _notice(
    kind: MessageKind, message: bytes, log: Any, status: StreamStatus
) -> dict[str, Any] | None:
    """Log a control message; return the disconnect payload if it is one."""
    if kind is MessageKind.OTHER:
        if not message.lstrip().startswith(b"{"):
            log.warning("malformed_message", bytes=len(message))
        return None
    notice = parse_notice(message)
    body = notice.get(kind.value)
    if not isinstance(body, dict):
        log.warning("malformed_message", kind=kind.value, bytes=len(message))
        return None
    if kind is MessageKind.LIMIT:
        track = body.get("track")
        if isinstance(track, int):
            status.limit_undelivered = max(status.limit_undelivered, track)
        log.info("limit_notice", undelivered=track)
    elif kind is MessageKind.WARNING:
        log.warning(
            "stall_warning",
            code=body.get("code"),
            percent_full=body.get("percent_full"),
            message=str(body.get("message", ""))[:200],
        )
    elif kind is MessageKind.DISCONNECT:
        code = body.get("code")
        log.warning(
            "disconnect_message",
            code=code,
            meaning=disconnect_reason(code),
            reason=str(body.get("reason", ""))[:200],
        )
        return body
    return None
