"""The simulated Mastodon instance's statuses: who posted what, which timelines hold it, and
how the REST API pages through them. The instance's wire protocol is in `sfmd.fake.mastodon`.

A status is kept as a small record (its id, where it belongs, when it was posted, edited or
deleted); its JSON is rendered from `mastodon_seed` and its position whenever it is needed, so
the same status renders to the same bytes every time and a day of posts costs megabytes.

Ids are Mastodon's time-based snowflakes: `(unix_ms << 16) | sequence`, as strings on the
wire. A status posted live gets an id above every live id before it; a late-arriving remote
status (`older_than_ms`) gets one from its publish time, below ids already served, as a
real instance gives a remote post it fetches late.

Where a status belongs is named by the `stream` arrays the streaming API uses: `["public"]`,
`["public:local"]` or `["public:remote"]`, `["hashtag", tag]` and, for a local one,
`["hashtag:local", tag]` (tags lower-cased), `["list", id]`, `["user"]` (the home timeline).
Every token sees the same timelines: the fake has no blocks, mutes or filters.
"""

from __future__ import annotations

import bisect
import json
import random
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

#: The instance's own domain in statuses and accounts (the API itself is on loopback).
LOCAL_DOMAIN = "fake.mastodon.example"
REMOTE_DOMAINS = (
    "mastodon.social",
    "fosstodon.org",
    "hachyderm.io",
    "mstdn.jp",
    "chaos.social",
    "scholar.social",
    "digipres.club",
    "glammr.us",
)
LOCAL_ACCOUNTS = 60
REMOTE_ACCOUNTS = 240
#: The kinds of stream the fake serves, as `subscribe` names them.
KINDS = ("public", "public:local", "public:remote", "hashtag", "hashtag:local", "list", "user")
#: The most statuses held; past it the oldest posted are forgotten (log and timelines).
MAX_HELD = 250_000
_CACHE = 2048
_ID_SEQ = 0xFFFF
_WORDS = (
    "the a of to and in is it you that was for on are with as I they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these "
    "long make thing see two has look more day could go come did number sound no most people "
    "my over know water than call first who may down side been now find archive record museum "
    "library collection scan manuscript catalogue preservation digital federation instance "
    "toot boost thread morning coffee weekend photo garden cat dog café naïve 🐘 ✨ 📚 🎉"
).split()
_LANGS = ("en", "en", "en", "en", "de", "fr", "ja", "es", "nl")
_BLURHASH = "0123456789ABCDEFGHabcdefgh:;%"
_NOT_A_TAG_CHAR = re.compile(r"[^\w\u00b7\u200c]")


def normalize_tag(tag: str) -> str:
    """A hashtag as Mastodon matches it: NFKC, lower case, only word characters (so a
    leading '#' goes)."""
    return _NOT_A_TAG_CHAR.sub("", unicodedata.normalize("NFKC", tag).lower())


def snowflake(unix_ms: int, seq: int) -> int:
    return (unix_ms << 16) | (seq & _ID_SEQ)


def iso_ms(unix_ms: int) -> str:
    """Mastodon's timestamps: UTC, milliseconds, Z."""
    seconds, ms = divmod(unix_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


@dataclass
class Status:
    """One posted status: where it belongs and what happened to it, not its JSON."""

    id: int
    #: Its place in the instance's sequence: what its rendered text follows from.
    index: int
    local: bool
    tags: tuple[str, ...]
    lists: tuple[str, ...]
    home: bool
    #: When it was posted: wall clock (s) and the monotonic clock (s).
    posted_at: float
    monotonic: float
    #: Whether it went out on the streaming API (False: only in the REST timelines).
    streamed: bool
    edits: int = 0
    edited_at: float | None = None
    deleted_at: float | None = None
    norm_tags: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        self.norm_tags = frozenset(normalize_tag(t) for t in self.tags)

    def timelines(self) -> list[list[str]]:
        """The stream arrays of every timeline the status belongs to."""
        place = "local" if self.local else "remote"
        out = [["public"], [f"public:{place}"]]
        for tag in sorted(self.norm_tags):
            out.append(["hashtag", tag])
            if self.local:
                out.append(["hashtag:local", tag])
        out += [["list", lst] for lst in self.lists]
        if self.home:
            out.append(["user"])
        return out

    def belongs(self, kind: str, arg: str = "") -> bool:
        """Whether the status is in timeline `kind` (`arg`: a normalized tag or a list id)."""
        if kind == "public":
            return True
        if kind == "public:local":
            return self.local
        if kind == "public:remote":
            return not self.local
        if kind == "hashtag":
            return arg in self.norm_tags
        if kind == "hashtag:local":
            return self.local and arg in self.norm_tags
        if kind == "list":
            return arg in self.lists
        if kind == "user":
            return self.home
        return False

    def to_dict(self) -> dict[str, Any]:
        """The post log's view of it (ids as strings, as on the wire)."""
        return {
            "id": str(self.id),
            "timelines": self.timelines(),
            "local": self.local,
            "tags": list(self.tags),
            "lists": list(self.lists),
            "home": self.home,
            "posted_at": self.posted_at,
            "monotonic": self.monotonic,
            "streamed": self.streamed,
            "edits": self.edits,
            "edited_at": self.edited_at,
            "deleted_at": self.deleted_at,
        }


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Account:
    id: str
    username: str
    domain: str  # "" for a local account
    display_name: str
    created_ms: int
    followers: int
    following: int
    statuses: int
    note: str
    bot: bool

    @property
    def acct(self) -> str:
        return f"{self.username}@{self.domain}" if self.domain else self.username

    @property
    def home(self) -> str:
        return f"https://{self.domain or LOCAL_DOMAIN}"


class StatusMaker:
    """Renders a status as a Mastodon 4.x instance serves it: the same dict every time for the
    same seed, index and history (edits)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = random.Random(seed)
        self.local_accounts = [self._account(rng, "") for _ in range(LOCAL_ACCOUNTS)]
        self.remote_accounts = [
            self._account(rng, rng.choice(REMOTE_DOMAINS)) for _ in range(REMOTE_ACCOUNTS)
        ]

    def _account(self, rng: random.Random, domain: str) -> _Account:
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 11)))
        name += rng.choice(("", "", "_", "42", "_arch", "lib"))
        created_ms = rng.randrange(1_480_000_000_000, 1_760_000_000_000)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14)))
        return _Account(
            id=str(snowflake(created_ms, rng.randrange(_ID_SEQ))),
            username=name,
            domain=domain,
            display_name=name.replace("_", " ").title() + rng.choice(("", " 📚", " :verified:")),
            created_ms=created_ms,
            followers=rng.randrange(0, 20_000),
            following=rng.randrange(0, 2_000),
            statuses=rng.randrange(1, 50_000),
            note=f"<p>{words}</p>",
            bot=rng.random() < 0.05,
        )

    def render(self, status: Status) -> dict[str, Any]:
        rng = random.Random((self.seed << 40) ^ (status.index * 2654435761))
        pool = self.local_accounts if status.local else self.remote_accounts
        author = pool[rng.randrange(len(pool))]
        sid = str(status.id)
        created_ms = status.id >> 16
        if status.local:
            uri = f"https://{LOCAL_DOMAIN}/users/{author.username}/statuses/{sid}"
            url = f"https://{LOCAL_DOMAIN}/@{author.username}/{sid}"
        else:
            # A remote status keeps its home server's address.
            remote_id = rng.randrange(10**17, 10**18)
            uri = f"{author.home}/users/{author.username}/statuses/{remote_id}"
            url = f"{author.home}/@{author.username}/{remote_id}"
        mentions = []
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):
            other = self.remote_accounts[rng.randrange(len(self.remote_accounts))]
            mentions.append(
                {
                    "id": other.id,
                    "username": other.username,
                    "url": f"{other.home}/@{other.username}",
                    "acct": other.acct,
                }
            )
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.choice(
            (rng.randrange(4, 20), rng.randrange(10, 40))
        )))
        parts = [
            f'<span class="h-card" translate="no"><a href="{m["url"]}" class="u-url mention">'
            f'@<span>{m["username"]}</span></a></span>'
            for m in mentions
        ]
        parts.append(words)
        parts += [
            f'<a href="https://{LOCAL_DOMAIN}/tags/{normalize_tag(t)}" class="mention hashtag" '
            f'rel="tag">#<span>{t}</span></a>'
            for t in status.tags
        ]
        content = "<p>" + " ".join(parts) + "</p>"
        if status.edits:
            content += f"<p>Edit {status.edits}: {rng.choice(_WORDS)}</p>"
        media = [self._media(rng, author) for _ in range(
            rng.choice((0, 0, 0, 0, 0, 0, 0, 1, 1, 2))
        )]
        reply = rng.random() < 0.25
        language = rng.choice(_LANGS)
        return {
            "id": sid,
            "created_at": iso_ms(created_ms),
            "in_reply_to_id": str(rng.randrange(10**17, status.id)) if reply else None,
            "in_reply_to_account_id": (
                self.remote_accounts[rng.randrange(REMOTE_ACCOUNTS)].id if reply else None
            ),
            "sensitive": False,
            "spoiler_text": "",
            "visibility": "public",
            "language": language,
            "uri": uri,
            "url": url,
            "replies_count": rng.randrange(0, 5),
            "reblogs_count": rng.randrange(0, 20),
            "favourites_count": rng.randrange(0, 60),
            "quotes_count": 0,
            "edited_at": (
                None if status.edited_at is None else iso_ms(int(status.edited_at * 1000))
            ),
            "content": content,
            "reblog": None,
            "application": (
                {"name": "Web", "website": None} if status.local else None
            ),
            "account": self._account_json(author),
            "media_attachments": media,
            "mentions": mentions,
            "tags": [
                {"name": t, "url": f"https://{LOCAL_DOMAIN}/tags/{normalize_tag(t)}"}
                for t in status.tags
            ],
            "emojis": [],
            "quote": None,
            "card": None,
            "poll": None,
        }

    def _account_json(self, a: _Account) -> dict[str, Any]:
        day = time.strftime("%Y-%m-%d", time.gmtime(a.created_ms // 1000 + 86_400 * 30))
        avatar = f"https://files.{a.domain or LOCAL_DOMAIN}/accounts/avatars/{a.id}/original.png"
        header = f"https://files.{a.domain or LOCAL_DOMAIN}/accounts/headers/{a.id}/original.jpg"
        return {
            "id": a.id,
            "username": a.username,
            "acct": a.acct,
            "display_name": a.display_name,
            "locked": False,
            "bot": a.bot,
            "discoverable": True,
            "indexable": True,
            "group": False,
            "created_at": iso_ms(a.created_ms - a.created_ms % 86_400_000),
            "note": a.note,
            "url": f"{a.home}/@{a.username}",
            "uri": f"{a.home}/users/{a.username}",
            "avatar": avatar,
            "avatar_static": avatar,
            "header": header,
            "header_static": header,
            "followers_count": a.followers,
            "following_count": a.following,
            "statuses_count": a.statuses,
            "last_status_at": day,
            "hide_collections": False,
            "emojis": [],
            "fields": [
                {
                    "name": "Website",
                    "value": f'<a href="https://{a.username}.example.org" target="_blank" '
                    f'rel="nofollow noopener me" translate="no"><span class="invisible">'
                    f'https://</span><span class="">{a.username}.example.org</span>'
                    '<span class="invisible"></span></a>',
                    "verified_at": None,
                }
            ],
        }

    def _media(self, rng: random.Random, author: _Account) -> dict[str, Any]:
        mid = str(rng.randrange(10**17, 10**18))
        base = f"https://files.{author.domain or LOCAL_DOMAIN}/media_attachments/files/{mid}"
        width, height = rng.choice(((1200, 800), (1080, 1350), (2048, 1536), (640, 640)))
        return {
            "id": mid,
            "type": "image",
            "url": f"{base}/original/{mid[:16]}.jpeg",
            "preview_url": f"{base}/small/{mid[:16]}.jpeg",
            "remote_url": None if not author.domain else f"{base}/remote.jpeg",
            "preview_remote_url": None,
            "text_url": None,
            "meta": {
                "original": {"width": width, "height": height, "size": f"{width}x{height}",
                             "aspect": round(width / height, 6)},
                "small": {"width": 480, "height": round(480 * height / width),
                          "size": f"480x{round(480 * height / width)}",
                          "aspect": round(width / height, 6)},
            },
            "description": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(0, 25))),
            "blurhash": "U" + "".join(rng.choice(_BLURHASH) for _ in range(27)),
        }


def dumps(obj: Any) -> str:
    """Compact JSON with non-ASCII kept, as the streaming server (Node's JSON.stringify)
    writes it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def rails_dumps(obj: Any) -> str:
    """Compact JSON as Rails renders API answers: '<', '>' and '&' escaped as \\u003c etc.
    (only ever inside strings, so the replacement is safe)."""
    return (
        dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


# --------------------------------------------------------------------------- the store


class TimelineStore:
    """Every status the instance holds, by id (for the timelines) and in posting order (the
    post log)."""

    def __init__(self, seed: int) -> None:
        self._maker = StatusMaker(seed)
        self._log: list[Status] = []
        self._by_id: dict[int, Status] = {}
        self._ids: list[int] = []  # the ids in the timelines (not deleted), ascending
        self._last_live = 0
        self._seq = 0
        self._cache: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()

    @property
    def next_index(self) -> int:
        return self._seq

    def set_seed(self, seed: int) -> None:
        if seed != self._maker.seed:
            self._maker = StatusMaker(seed)
            self._cache.clear()

    def add(
        self,
        *,
        local: bool,
        tags: Iterable[str],
        lists: Iterable[str],
        home: bool,
        older_than_ms: int | None,
        streamed: bool,
        now: float | None = None,
    ) -> Status:
        """Hold a new status. Live: an id above every live id so far; `older_than_ms`: an id
        from that long ago, unique but below ids already served."""
        wall = time.time() if now is None else now
        index = self._seq
        self._seq += 1
        now_ms = int(wall * 1000)
        if older_than_ms is None:
            sid = max(snowflake(now_ms, index), self._last_live + 1)
            self._last_live = sid
        else:
            sid = snowflake(now_ms - older_than_ms, index)
            while sid in self._by_id:
                sid += 1
        status = Status(
            id=sid,
            index=index,
            local=local,
            tags=tuple(tags),
            lists=tuple(lists),
            home=home,
            posted_at=wall,
            monotonic=time.monotonic(),
            streamed=streamed,
        )
        self._log.append(status)
        self._by_id[sid] = status
        bisect.insort(self._ids, sid)
        if len(self._log) > MAX_HELD:
            self._forget(len(self._log) - MAX_HELD * 9 // 10)
        return status

    def _forget(self, count: int) -> None:
        gone = self._log[:count]
        del self._log[:count]
        for status in gone:
            del self._by_id[status.id]
        self._ids = [i for i in self._ids if i in self._by_id]

    def get(self, sid: int | str) -> Status:
        """A held status; KeyError if there is none with that id."""
        try:
            return self._by_id[int(sid)]
        except ValueError:
            raise KeyError(sid) from None

    def edit(self, sid: int | str, now: float | None = None) -> Status:
        status = self.get(sid)
        if status.deleted_at is not None:
            raise KeyError(sid)
        status.edits += 1
        status.edited_at = time.time() if now is None else now
        return status

    def delete(self, sid: int | str, now: float | None = None) -> Status:
        status = self.get(sid)
        if status.deleted_at is not None:
            raise KeyError(sid)
        status.deleted_at = time.time() if now is None else now
        pos = bisect.bisect_left(self._ids, status.id)
        if pos < len(self._ids) and self._ids[pos] == status.id:
            del self._ids[pos]
        return status

    def render(self, status: Status) -> dict[str, Any]:
        key = (status.id, status.edits)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._maker.render(status)
            self._cache[key] = cached
            if len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return cached

    def posted(self) -> list[Status]:
        """Every status held, in the order posted (deleted ones too, marked)."""
        return list(self._log)

    def page(
        self,
        belongs: Callable[[Status], bool],
        *,
        limit: int,
        max_id: int | None = None,
        since_id: int | None = None,
        min_id: int | None = None,
    ) -> list[Status]:
        """A timeline page exactly as Mastodon's `to_a_paginated_by_id` cuts it, newest first:
        with `min_id`, the `limit` statuses just above it (below `max_id`); otherwise the
        newest `limit` below `max_id` and above `since_id`."""
        ids = self._ids
        out: list[Status] = []
        if limit <= 0:
            return out
        if min_id is not None:
            pos = bisect.bisect_right(ids, min_id)
            while pos < len(ids) and len(out) < limit:
                sid = ids[pos]
                if max_id is not None and sid >= max_id:
                    break
                status = self._by_id[sid]
                if belongs(status):
                    out.append(status)
                pos += 1
            out.reverse()
            return out
        pos = len(ids) if max_id is None else bisect.bisect_left(ids, max_id)
        while pos > 0 and len(out) < limit:
            pos -= 1
            sid = ids[pos]
            if since_id is not None and sid <= since_id:
                break
            status = self._by_id[sid]
            if belongs(status):
                out.append(status)
        return out
