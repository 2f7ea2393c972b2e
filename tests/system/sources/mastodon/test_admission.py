"""Mastodon streams are checked like any other before they are stored: 422s that name the
field, a credential that cannot serve them refused, sfmctl speaking the same settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import SfmdProcess, start_daemon, stop


async def daemon(tmp_path: Path, fake_api: FakeAPI) -> SfmdProcess:
    return await start_daemon(tmp_path, write_daemon_config(tmp_path, fake_api))


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"kind": "hashtag", "credential": "alpha", "tag": "x"}, "credential",
         "has no Mastodon account"),
        ({"kind": "hashtag", "credential": "fedi"}, "tag", "needs a tag"),
        ({"kind": "hashtag", "credential": "fedi", "tag": "x", "track": ["y"]}, "track",
         "has no track"),
        ({"kind": "list", "credential": "fedi"}, "list", "list's id"),
        ({"kind": "user"}, "credential", "mastodon_instance"),
        ({"kind": "user", "credential": "nobody"}, "credential", "not in the credentials"),
        ({"kind": "user", "credential": "fedi", "isolation": "process"}, "isolation", "task"),
    ],
)
async def test_a_bad_mastodon_stream_is_refused_naming_the_field(
    tmp_path: Path, fake_api: FakeAPI, body: dict, field: str, says: str
) -> None:
    proc = await daemon(tmp_path, fake_api)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            status, answer = await api.call("POST", "/streams",
                                            {"name": "m", "source": "mastodon", **body})
        assert status == 422, answer
        assert field in answer["message"] and says in answer["message"], answer
        await stop(proc)
    finally:
        proc.kill()


async def test_a_twitter_stream_on_a_mastodon_only_credential_is_refused(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    proc = await daemon(tmp_path, fake_api)
    try:
        async with Api(tmp_path / "sfmd.sock") as api:
            status, answer = await api.call("POST", "/streams",
                                            {"name": "t", "kind": "sample", "credential": "fedi"})
        assert status == 422 and "no Twitter keys" in answer["message"], answer
        await stop(proc)
    finally:
        proc.kill()


async def test_sfmctl_adds_and_shows_a_mastodon_stream(tmp_path: Path, fake_api: FakeAPI
                                                       ) -> None:
    proc = await daemon(tmp_path, fake_api)

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sfmd.ctl", "--socket",
                               str(tmp_path / "sfmd.sock"), *args],
                              capture_output=True, text=True, timeout=30)
    try:
        done = ctl("add", "tag-archives", "--source", "mastodon", "--kind", "hashtag", "--tag",
                   "#archives", "--credential", "fedi")
        assert done.returncode == 0, done.stderr
        shown = ctl("show", "tag-archives")
        assert "mastodon" in shown.stdout and "archives" in shown.stdout, shown.stdout
        changed = ctl("modify", "tag-archives", "--tag", "preservation")
        assert changed.returncode == 0, changed.stderr
        refused = ctl("add", "l", "--source", "mastodon", "--kind", "list", "--credential",
                      "fedi")
        assert refused.returncode == 1 and "list" in refused.stderr, refused.stderr
        await stop(proc)
    finally:
        proc.kill()
