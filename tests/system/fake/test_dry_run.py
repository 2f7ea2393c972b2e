"""A dry run looks like the real thing: what the fake API sends a filter matches the filter,
checked by Twitter's own matching rules on what a real `sfmd run` stored, and the sample
stays unfiltered. The messages keep their size and their sequence numbers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sfmd.credentials import load_credentials
from sfmd.fake import FIRST_SEQ, FakeAPI, seq_of
from sfmd.fake.faults import _FAULT_KEYS as FAULT_KEYS
from sfmd.fake.faults import ENDPOINTS
from sfmd.fake.rulebook import rule_words
from sfmd.fake.settings import Settings
from sfmd.fake.twitter import MAX_VARIANTS, Match, MessageFactory
from tests.helpers.api import Api
from tests.helpers.config import write_credentials_file, write_daemon_config
from tests.helpers.daemon import start_daemon
from tests.helpers.files import messages_on_disk, stored_messages
from tests.helpers.paths import REPO
from tests.helpers.waits import wait_until

TRACK = ["public library", "Archive"]
FOLLOW = ["783214"]
BOX = [-74.0, 40.0, -73.0, 41.0]


def has_words(text: str, phrase: str) -> bool:
    """Twitter's track rule: every word of the phrase is in the text, any case."""
    return all(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.I) for w in phrase.split())


def matches_v1(tweet: dict[str, Any]) -> str | None:
    """Which of the filter's items the tweet matches, by Twitter's rules; None if none."""
    for phrase in TRACK:
        if has_words(tweet["text"], phrase):
            return f"track:{phrase}"
    if tweet["user"]["id_str"] in FOLLOW:
        return f"follow:{tweet['user']['id_str']}"
    point = (tweet.get("coordinates") or {}).get("coordinates")
    if point and BOX[0] <= point[0] <= BOX[2] and BOX[1] <= point[1] <= BOX[3]:
        return "locations"
    return None


async def test_a_dry_run_filter_stores_tweets_that_match_it(tmp_path: Path) -> None:
    api = FakeAPI(load_credentials(write_credentials_file(tmp_path)), rate=200,
                  message_size=2000, keepalive_interval=0.25)
    await api.start()
    proc = await start_daemon(tmp_path, write_daemon_config(tmp_path, api))
    data = tmp_path / "data"
    try:
        async with Api(tmp_path / "sfmd.sock") as client:
            for body in (
                {"name": "lib", "kind": "filter", "track": TRACK, "follow": FOLLOW,
                 "locations": [BOX], "language": ["en", "fr"], "credential": "alpha"},
                {"name": "cats", "kind": "filter", "api": "v2", "credential": "beta",
                 "rules": [{"value": "cats has:images"},
                           {"value": '"public library" (#caturday OR @alice) -spam'}]},
                {"name": "all", "kind": "sample", "credential": "beta"},
            ):
                await client.ok("POST", "/streams", body, status=201)
        await wait_until(lambda: all(messages_on_disk(data, n) >= 60 for n in
                                     ("lib", "cats", "all")), 20, "60 messages in each")
        proc.signal(signal.SIGTERM)  # publishes every open file
        assert await proc.wait(15) == 0, proc.stderr
    finally:
        proc.kill()
        await api.stop()

    lib = [json.loads(m) for m in stored_messages(data, "lib")]
    assert len(lib) >= 60
    matched = [matches_v1(t) for t in lib]
    assert None not in matched, [t["text"] for t, m in zip(lib, matched, strict=True) if not m]
    # Every item of the filter is met, not one phrase over and over.
    assert set(matched) == {"track:public library", "track:Archive", "follow:783214",
                            "locations"}
    assert {t["lang"] for t in lib} == {"en", "fr"}
    raw = stored_messages(data, "lib")
    assert {len(m) for m in raw} == {2000}  # the size asked for, whatever the template
    seqs = [seq_of(m) for m in raw]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    cats = [json.loads(m) for m in stored_messages(data, "cats")]
    assert len(cats) >= 60
    for tweet in cats:
        named = {r["tag"] for r in tweet["matching_rules"]}
        text = tweet["data"]["text"]
        assert named == {"cats"}
        ids = {r["id"] for r in tweet["matching_rules"]}
        assert ids
        assert (has_words(text, "cats")
                or (has_words(text, "public library")
                    and (has_words(text, "#caturday") or "@alice" in text))), text
        assert not has_words(text, "spam"), text

    sample = [json.loads(m) for m in stored_messages(data, "all")]
    assert len(sample) >= 60
    assert not any(matches_v1(t) for t in sample)  # a sample is what it is: unfiltered


def test_a_long_filter_is_met_item_by_item_second_by_second() -> None:
    """More items than templates: each second's templates take the next ones in turn."""
    match = Match.of("filter", {"track": ",".join(f"word{i}" for i in range(40))})
    assert match is not None
    seen: set[str] = set()
    for second in range(5):
        variants = match.variants(second)
        assert len(variants) == MAX_VARIANTS
        seen |= {v["track"] for v in variants}
    assert len(seen) == 40
    assert Match.of("sample", {"track": "x"}) is None


def test_every_template_of_a_filter_has_the_size_asked_for() -> None:
    match = Match.of("filter", {"track": "a,a much longer phrase than the other one",
                                "follow": "12345678901234567890"})
    factory = MessageFactory()
    settings = Settings(message_size=600)  # less than a tweet's minimum: the longest wins
    data, messages = factory.block(FIRST_SEQ, 0, 9, True, Settings(message_size=600,
                                                                    record_bytes=True), match)
    assert messages is not None
    assert len({len(m) for m in messages}) == 1 and len(messages[0]) > settings.message_size
    assert [seq_of(m) for m in messages] == list(range(FIRST_SEQ, FIRST_SEQ + 9))
    framed = b"".join(b"%d\r\n%s\r\n" % (len(m) + 2, m) for m in messages)
    assert data == framed


def test_rule_words_are_what_a_matching_tweet_holds() -> None:
    assert rule_words("cats has:images") == "cats"
    assert rule_words('"public library" -spam -"bad words" lang:en') == "public library"
    assert rule_words("(#caturday OR @alice) $TWTR") == "#caturday @alice $TWTR"
    assert rule_words('"say \\"hi\\""') == 'say "hi"'


def fakeapi_banner(tmp_path: Path, *args: str) -> tuple[str, str]:
    """`sfmd fakeapi`'s first stdout line and its stderr, once it has served one request."""
    command = [sys.executable, "-m", "sfmd", "fakeapi", "--port", "0", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            status = urllib.request.urlopen(url + "/_fake/log", timeout=10).status
            assert status == 200
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=10)
            assert proc.returncode == 0, errors
            return url, errors
        finally:
            if proc.poll() is None:
                proc.kill()


def test_fakeapi_prints_every_url_a_config_needs_and_whether_it_checks_keys(
    tmp_path: Path,
) -> None:
    url, errors = fakeapi_banner(tmp_path)
    port = url.rsplit(":", 1)[1]
    for line in (
        f"sfmd fakeapi: [twitter] stream_url = {url}/1.1",
        f"sfmd fakeapi: [twitter] rest_url = {url}/1.1",
        f"sfmd fakeapi: [twitter] api_url = {url}",
        f"sfmd fakeapi: [bluesky] jetstream_url = ws://127.0.0.1:{port}/subscribe",
    ):
        assert line in errors.splitlines(), errors
    assert "every OAuth signature and bearer token is accepted" in errors

    _, checked = fakeapi_banner(tmp_path, "--credentials",
                                str(write_credentials_file(tmp_path)))
    assert "accepted" not in checked and "rest_url" in checked


def test_the_docs_describe_every_fault_key_and_endpoint() -> None:
    """docs/fakeapi.md is where the fault script format lives: it may not miss a key."""
    text = (REPO / "docs" / "fakeapi.md").read_text()
    for key in sorted(FAULT_KEYS):
        assert f"`{key}`" in text or f'"{key}"' in text, key
    for endpoint in sorted(ENDPOINTS):
        assert f"`{endpoint}`" in text or f'"{endpoint}"' in text, endpoint
    assert "nosuch" in text  # the unknown-user convention of users/lookup


def test_a_filter_tweet_is_stamped_with_the_current_second() -> None:
    """Templates are made once per filter; each second only their timestamps change."""
    match = Match.of("filter", {"track": "archive", "locations": "-74,40,-73,41"})
    factory = MessageFactory()
    before = int(time.time())
    tweets = [json.loads(factory.tweet(FIRST_SEQ + i, 2000, match)) for i in range(2)]
    after = int(time.time())
    for tweet in tweets:
        stamp = int(tweet["timestamp_ms"]) // 1000
        assert before <= stamp <= after
        created = datetime.strptime(tweet["created_at"], "%a %b %d %H:%M:%S +0000 %Y")
        assert int(created.replace(tzinfo=UTC).timestamp()) == stamp
    assert "archive" in tweets[0]["text"] and tweets[1]["coordinates"]["coordinates"] == [
        -73.5, 40.5]
