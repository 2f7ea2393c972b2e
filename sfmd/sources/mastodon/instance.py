"""One Mastodon account at its instance, over REST: where its streaming server is, and its
timelines' pages, within the account's rate limit.

Every REST call of an account goes through one `Instance`, one call at a time, so the rate
limit (`X-RateLimit-Remaining` / `-Reset` on every answer, 300 calls per 5 minutes on a stock
instance) is honoured across all of the account's streams: with nothing left, or after a
429, no call is sent before the reset (and never sooner than `min_wait`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

from sfmd.credentials import Credential
from sfmd.logs import get_logger

STREAMING_PATH = "/api/v1/streaming"


class InstanceError(Exception):
    """The instance refused a call or could not be reached; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _reset_at(value: str | None) -> float | None:
    """`X-RateLimit-Reset` (an ISO time) as a Unix time."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Instance:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        credential: Credential,
        *,
        timeout: float,
        min_wait: float = 1.0,
        connection: str = "",
    ) -> None:
        self.session = session
        self.base = URL(credential.mastodon_instance)
        self._headers = {"Authorization": f"Bearer {credential.mastodon_token}"}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.min_wait = min_wait
        self.log = get_logger(connection=connection) if connection else get_logger()
        self._lock = asyncio.Lock()
        self._remaining: int | None = None
        self._reset: float | None = None  # Unix time

    @property
    def auth_headers(self) -> dict[str, str]:
        return dict(self._headers)

    async def streaming_url(self) -> str:
        """The streaming socket's URL, from `configuration.urls.streaming` (often another
        host); the instance's own host when it names none."""
        data = await self._get_json("/api/v2/instance", {})
        streaming: Any = None
        if isinstance(data, dict):
            streaming = ((data.get("configuration") or {}).get("urls") or {}).get("streaming")
        if not isinstance(streaming, str) or not streaming.startswith(
                ("ws://", "wss://", "http://", "https://")):
            scheme = "wss" if self.base.scheme == "https" else "ws"
            streaming = str(self.base.with_scheme(scheme).with_path("/"))
        url = URL(streaming)
        if url.scheme in ("http", "https"):
            url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        return str(url.with_path(url.path.rstrip("/") + STREAMING_PATH))

    async def page(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """One page of a timeline (a list of Status entities)."""
        data = await self._get_json(path, params)
        if not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
            raise InstanceError(f"{path} did not answer a list of statuses")
        return data

    async def _get_json(self, path: str, params: dict[str, str]) -> Any:
        async with self._lock:  # one call at a time per account: the limit is the account's
            while True:
                await self._wait_for_limit()
                url = self.base.with_path(path)
                try:
                    async with self.session.get(
                        url, params=params, headers=self._headers, timeout=self.timeout
                    ) as resp:
                        self._note_limit(resp)
                        if resp.status == 429:
                            self._remaining = 0
                            self.log.warning("rate_limited", path=path,
                                             reset=resp.headers.get("X-RateLimit-Reset"))
                            continue
                        if resp.status != 200:
                            raise InstanceError(
                                f"{path} answered HTTP {resp.status}: "
                                f"{(await _error_text(resp))[:200]}", resp.status)
                        return await resp.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    raise InstanceError(f"{path}: {type(e).__name__}: {e}") from None

    def _note_limit(self, resp: aiohttp.ClientResponse) -> None:
        remaining = resp.headers.get("X-RateLimit-Remaining")
        if remaining is not None and remaining.isdigit():
            self._remaining = int(remaining)
        reset = _reset_at(resp.headers.get("X-RateLimit-Reset"))
        if reset is not None:
            self._reset = reset

    async def _wait_for_limit(self) -> None:
        if self._remaining is None or self._remaining > 0:
            return
        wait = max(self.min_wait, (self._reset or 0.0) - time.time())
        self.log.info("rate_limit_wait", seconds=round(wait, 3))
        await asyncio.sleep(wait)
        self._remaining = None  # the reset has passed: the next answer says what is left


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    """The instance's `{"error": ...}`, or the start of its body."""
    try:
        body = await resp.json(content_type=None)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except (ValueError, aiohttp.ClientError):
        pass
    return resp.reason or ""
