"""The README's commands work as written with the shipped credentials template.

The template (`etc/credentials.toml.example`) is filled in the way an admin fills it, every
`REPLACE-WITH-...` replaced by a value; the fake API checks signatures and bearer tokens
against that file. Every `sfmctl` and `curl` line of the README's shell blocks then runs
against a real `sfmd run`, pointed at the test's config and socket instead of /etc and /run,
and must succeed; so an example that names no credential the template can serve fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from sfmd.credentials import credentials_problems, load_credentials
from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import start_daemon, stop
from tests.helpers.paths import REPO

README = REPO / "README.md"
TEMPLATE = REPO / "etc" / "credentials.toml.example"
DEADLINE = 15.0


def fill_template(home: Path, mastodon_instance: str = "https://mastodon.social") -> Path:
    """The template with every placeholder replaced by a value of its own, mode 0600, and
    its Mastodon account's table uncommented, as an admin collecting from Mastodon does."""
    counter = iter(range(1, 1000))
    text = re.sub(r"^# (\[fediverse\]|mastodon_instance = |mastodon_token = )", r"\1",
                  TEMPLATE.read_text(), flags=re.M)
    text = text.replace('"https://mastodon.social"', json.dumps(mastodon_instance))
    filled = re.sub(r'"REPLACE-WITH-[A-Z-]+"', lambda m: f'"filled-{next(counter)}"', text)
    path = home / "credentials.toml"
    path.write_text(filled)
    os.chmod(path, 0o600)
    return path


def readme_commands() -> list[list[str]]:
    """Each `sfmctl` or `curl` command in the README's ```sh blocks, continuation lines
    joined, as argv lists."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("sfmctl", "curl"):
                commands.append(words)
    return commands


def localised(words: list[str], config: Path, sock: Path) -> list[str]:
    """The command pointed at the test's daemon: its config file and socket."""
    out = [str(config) if w == "/etc/sfm/sfmd.toml" else w for w in words]
    out = [str(sock) if w == "/run/sfm/sfmd.sock" else w for w in out]
    if out[0] == "sfmctl":
        if "--config" not in out:
            out[1:1] = ["--config", str(config)]
        return [sys.executable, "-m", "sfmd.ctl", *out[1:]]
    return out


def test_the_filled_template_passes_the_start_up_checks(tmp_path: Path) -> None:
    path = fill_template(tmp_path)
    credentials = load_credentials(path)
    assert credentials["default"].has_oauth1 and credentials["default"].bearer_token
    assert credentials["fediverse"].has_mastodon
    assert credentials_problems(credentials, "default", path) == []  # the default default


async def test_every_readme_command_works_with_the_template(tmp_path: Path) -> None:
    assert shutil.which("curl"), "curl runs the README's HTTP examples; install it"
    credentials_file = fill_template(tmp_path)
    api = FakeAPI(load_credentials(credentials_file), keepalive_interval=0.25, message_size=600)
    await api.start()
    fill_template(tmp_path, api.mastodon_url)  # the same tokens, the fake's instance
    config = write_daemon_config(tmp_path, api)
    # The config's default credential as shipped (etc/sfmd.toml): "default".
    config.write_text(config.read_text().replace('default_credential = "alpha"',
                                                  'default_credential = "default"'))
    sock = tmp_path / "sfmd.sock"
    proc = await start_daemon(tmp_path, config)
    try:
        commands = readme_commands()
        assert any("--api" in c and "v2" in c for c in commands), commands
        async with Api(sock) as client:
            for words in commands:
                body = words[words.index("-d") + 1] if "-d" in words else None
                if body is not None:  # an alternative to an sfmctl line before it: make room
                    name = json.loads(body)["name"]
                    await client.call("DELETE", f"/streams/{name}")
                done = await asyncio.to_thread(
                    subprocess.run, localised(words, config, sock), capture_output=True,
                    text=True, timeout=30, check=False,
                )
                assert done.returncode == 0, (words, done.stdout, done.stderr)
                if words[0] == "curl":
                    json.loads(done.stdout)  # the API's answer, not an error page

            async with asyncio.timeout(DEADLINE):
                while True:  # until every stream streams; the deadline fails the test
                    streams = (await client.ok("GET", "/streams"))["streams"]
                    if all(s["status"]["state"] == "streaming" for s in streams):
                        break
                    await asyncio.sleep(0.05)
        by_name = {s["name"]: s for s in streams}
        assert by_name["cats"]["api"] == "v2" and by_name["cats"]["credential"] == "default"
        # The v2 connection was let in with the template's bearer token, the v1.1 one with
        # its four keys.
        opened = {r.endpoint: r for r in api.log if r.closed is None and r.status == 200}
        assert opened["v2/filter"].auth_ok and opened["v2/filter"].credential == "default"
        assert opened["filter"].auth_ok and opened["filter"].credential == "default"
    finally:
        try:
            if proc.proc.poll() is None:
                await stop(proc)
        finally:
            proc.kill()
            await api.stop()




def test_an_unfilled_bearer_token_is_named_with_the_way_out(tmp_path: Path) -> None:
    """An admin with v1.1 keys only fills the four and leaves the bearer_token line: start-up
    names it and says it may go."""
    path = tmp_path / "credentials.toml"
    path.write_text(fill_template(tmp_path).read_text().replace(
        'bearer_token = "filled-5"', 'bearer_token = "REPLACE-WITH-BEARER-TOKEN"'))
    problems = credentials_problems(load_credentials(path), "default", path)
    assert len(problems) == 1, problems
    assert "'default'" in problems[0] and "bearer_token" in problems[0]
    assert "delete the lines of keys you do not have" in problems[0]
    assert "REPLACE-WITH-BEARER-TOKEN" not in problems[0]
