"""Security: secrets stay secret, the socket and credentials keep their modes, and stream
names cannot reach outside their folder or into a supervisor conf.

The secret check is a search, not a promise: one full run drives every command that writes
something (`sfmd run`, `sfmctl`, `sfmd supervisor-conf`, `sfmd stream`) through creations,
changes, refusals, faults, log reopening and stops, then reads back every byte any of them
wrote (logs, data, state, confs, every API answer, stdout and stderr) looking for each value
of the shared credentials file. A hit is reported by the key's name, never its value.
"""

from __future__ import annotations

import asyncio
import getpass
import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any

import pytest

from sfmd.config import load_config
from sfmd.credentials import Credential, load_credentials
from sfmd.daemon.app import Daemon
from sfmd.fake import ConnectionRecord, FakeAPI
from sfmd.registry import Registry
from tests.helpers.api import Api
from tests.helpers.config import (
    CREDENTIALS_TOML,
    register,
    write_config,
    write_credentials_file,
    write_daemon_config,
)
from tests.helpers.files import manifest
from tests.helpers.fork import sfmd_in_fork
from tests.helpers.logs import log_text
from tests.helpers.waits import wait_until

#: "alpha.consumer_secret" -> its value: what a hit is reported as, and what is searched for.
SECRETS = {
    f"{table}.{key}": value
    for table, keys in tomllib.loads(CREDENTIALS_TOML).items()
    for key, value in keys.items()
    if value.endswith("-SECRET")  # a Mastodon instance's address is no secret
}
#: Every shared secret ends in it.
MARKER = b"-SECRET"
#: A cut snippet of a secret is a leak too: any 10 characters in a row of one are looked for.
PIECES: dict[bytes, set[str]] = {}
for _label, _value in SECRETS.items():
    for _i in range(len(_value) - 9):
        PIECES.setdefault(_value[_i : _i + 10].encode(), set()).add(_label)
DEADLINE = 30.0  # generous: two cores shared with other work


def readable(path: Path) -> bytes:
    """A file's bytes as a reader would see them: gzip files (even unfinished) unpacked."""
    raw = path.read_bytes()
    if ".gz" in path.name:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            return raw + zlib.decompressobj(wbits=31).decompress(raw)  # a torn .part
    return raw


def leaks(root: Path, *, skip: tuple[Path, ...] = ()) -> list[str]:
    """Which secrets (by key name) appear in which files under root."""
    found = []
    for path in sorted(root.rglob("*")):
        if path in skip or not path.is_file():
            continue
        content = readable(path)
        where = path.relative_to(root)
        whole = [label for label, value in SECRETS.items() if value.encode() in content]
        found += [f"{label} in {where}" for label in whole]
        if not whole:
            parts = {" or ".join(sorted(labels)) for p, labels in PIECES.items() if p in content}
            found += [f"part of {labels} in {where}" for labels in sorted(parts)]
    return found


class Child:
    """A long-running sfmd command whose stdout and stderr go to files under `out`."""

    def __init__(self, label: str, *args: str, cwd: Path, out: Path) -> None:
        self.label = label
        self.stderr_path = out / f"{label}.stderr"
        with open(out / f"{label}.stdout", "wb") as stdout, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sfmd", *args], cwd=cwd,
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=err,
            )  # fmt: skip

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        await wait_until(lambda: self.proc.poll() is not None, timeout, f"{self.label} to exit")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def exit_report(self) -> str:
        """An assertion message if the child died; "" while it runs."""
        if self.proc.poll() is None:
            return ""
        return f"{self.label} exited {self.proc.returncode}: {self.stderr_path.read_text()[-2000:]}"


async def run_command(label: str, argv: list[str], cwd: Path, out: Path) -> tuple[int, str, str]:
    """A short command (sfmctl or sfmd) to completion; its output is kept under `out` too."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(DEADLINE):
        stdout, stderr = await proc.communicate()
    (out / f"{label}.stdout").write_bytes(stdout)
    (out / f"{label}.stderr").write_bytes(stderr)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


class RecordingApi(Api):
    """The control socket client, keeping every answer in a file for the search."""

    def __init__(self, socket_path: Path, record: Path) -> None:
        super().__init__(socket_path)
        self.record = record

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> tuple[int, Any]:
        status, answer = await super().call(method, path, body, raw=raw, content_type=content_type)
        with self.record.open("a") as f:
            f.write(json.dumps({"request": f"{method} {path}", "status": status,
                                "answer": answer}, ensure_ascii=False) + "\n")  # fmt: skip
        return status, answer


def stream_records(api: FakeAPI, credential: str) -> list[ConnectionRecord]:
    endpoints = ("filter", "sample", "mastodon/streaming")
    return [r for r in api.log if r.endpoint in endpoints and r.credential == credential]


def flowing(api: FakeAPI, credential: str, at_least: int = 3) -> bool:
    """The credential's latest connection is open and has sent `at_least` messages."""
    records = stream_records(api, credential)
    last = records[-1] if records else None
    return last is not None and last.closed is None and last.sent_count >= at_least


def start_unsupervised(tmp_path: Path, fake_api: FakeAPI) -> tuple[Path, Path, Child]:
    """`sfmd run` whose isolated streams get confs in tmp_path/confs and no supervisord, so
    every command that writes confs runs without one; its output goes to tmp_path/out.

    Returns (config, out, daemon).
    """
    config = write_daemon_config(tmp_path, fake_api)
    with config.open("a") as f:
        f.write(f'[supervisor]\nconf_dir = "confs"\nuser = "{getpass.getuser()}"\n'
                f'server_url = "unix://{tmp_path}/no-supervisord.sock"\n')  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    return config, out, Child("daemon", "run", "--config", str(config), cwd=tmp_path, out=out)


async def test_a_full_run_leaves_no_secret_in_anything_sfmd_wrote(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(rate=20, record_bytes=False)
    config, out, daemon = start_unsupervised(tmp_path, fake_api)
    conf_dir = tmp_path / "confs"
    socket_path = tmp_path / "sfmd.sock"
    alone: Child | None = None
    steps = 0

    async def ctl(*args: str) -> tuple[int, str, str]:
        nonlocal steps
        steps += 1
        argv = ["-m", "sfmd.ctl", "--socket", str(socket_path), *args]
        return await run_command(f"sfmctl-{steps:02d}-{args[0]}", argv, tmp_path, out)

    try:
        await wait_until(lambda: socket_path.exists() or bool(daemon.exit_report()), DEADLINE,
                         "the control socket")  # fmt: skip
        assert not daemon.exit_report(), daemon.exit_report()
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660  # the configured default
        async with RecordingApi(socket_path, out / "api-answers.jsonl") as api:
            # A filter with people: users/lookup is called, signed with the credential.
            code, _, err = await ctl("add", "f1", "--track", "archive", "--people",
                                     "alice,nosuchbob", "--credential", "alpha")  # fmt: skip
            assert code == 0, err
            await wait_until(lambda: flowing(fake_api, "alpha"), DEADLINE, "f1 streaming")

            # Faults on the reconnect a change causes: a 401 with an HTML body, a cut
            # mid-message, a disconnect message.
            attempts = len(fake_api.log)  # a scripted status answers before any credential
            fake_api.script({"status": 401}, {"cut_after": 3}, {"disconnect_after": 3, "code": 12})
            code, _, err = await ctl("modify", "f1", "--track", "archive,library")
            assert code == 0, err
            await wait_until(
                lambda: len(fake_api.log) >= attempts + 4
                and flowing(fake_api, "alpha"), DEADLINE, "f1 through its faults",
            )  # fmt: skip

            # users/lookup refuses the credential: the change is refused and says why.
            fake_api.script({"endpoint": "users/lookup", "status": 401,
                             "body": '{"errors": [{"code": 32}]}'})  # fmt: skip
            code, _, err = await ctl("modify", "f1", "--people", "carol")
            assert code == 1 and "lookup_failed" in err, err

            # A Mastodon stream: its token goes to the streaming server (refused once with
            # a 401) and to the REST timeline when a stop and start make it fill its gap.
            fake_api.configure(mastodon_rate=20, mastodon_tags=["archives"])
            fake_api.script({"endpoint": "mastodon/streaming", "status": 401})
            code, _, err = await ctl("add", "m1", "--source", "mastodon", "--kind", "hashtag",
                                     "--tag", "#archives", "--credential", "fedi")
            assert code == 0, err
            await wait_until(lambda: flowing(fake_api, "fedi"), DEADLINE, "m1 streaming")
            for verb in ("stop", "start"):
                code, _, err = await ctl(verb, "m1")
                assert code == 0, err
            await wait_until(lambda: any("/timelines/" in r["path"] and r["status"] == 200
                                         for r in fake_api.mastodon_requests()),
                             DEADLINE, "m1's gap fill")

            # Refused requests, each answered with a message.
            for method, path, body in [
                ("POST", "/streams", {"name": "f1", "kind": "sample", "active": False}),
                ("POST", "/streams", {"name": "s2", "kind": "sample", "credential": "alpha"}),
                ("POST", "/streams", {"name": "s3", "kind": "sample", "credential": "gamma"}),
                ("PATCH", "/streams/f1", {"kind": "sample"}),
                ("PATCH", "/streams/f1", {"credential": "nope"}),
                ("GET", "/streams/nope", None),
                ("DELETE", "/streams/nope", None),
                ("PUT", "/streams", None),
            ]:
                status, _ = await api.call(method, path, body)
                assert 400 <= status < 500, (method, path, status)
            assert (await api.call("POST", "/streams", raw=b"{nope"))[0] == 400
            assert (await api.call("POST", "/streams", raw=b"{}", content_type="text/plain"))[0] \
                == 415  # fmt: skip
            assert (await api.call("POST", "/streams", raw=b" " * (1 << 20 | 1)))[0] == 413

            # A process-isolated stream: the daemon writes its conf (supervisord is away).
            await api.ok("POST", "/streams", {"name": "iso", "kind": "sample",
                                              "credential": "beta", "isolation": "process"},
                         status=201)  # fmt: skip
            await wait_until(lambda: any(conf_dir.glob("*iso*.conf")), DEADLINE, "iso's conf")
            for conf in conf_dir.glob("*iso*.conf"):  # the daemon may take it away again
                shutil.copy(conf, out / f"written-{conf.name}")
            code, printed, err = await run_command(
                "supervisor-conf", ["-m", "sfmd", "supervisor-conf", "iso", "--config",
                                    str(config)], tmp_path, out)  # fmt: skip
            assert code == 0 and "[program:" in printed, err
            code, _, err = await ctl("stop", "iso")
            assert code == 0, err

            # One stream alone in the foreground, as an isolated stream runs.
            code, _, err = await ctl("sample", "s1", "--credential", "beta", "--inactive")
            assert code == 0, err
            alone = Child("stream-s1", "stream", "s1", "--config", str(config), cwd=tmp_path,
                          out=out)  # fmt: skip
            await wait_until(lambda: flowing(fake_api, "beta", 10) or bool(alone.exit_report()),
                             DEADLINE, "s1 streaming alone")  # fmt: skip
            assert not alone.exit_report(), alone.exit_report()
            alone.signal(signal.SIGHUP)
            alone.signal(signal.SIGTERM)
            assert await alone.wait(15) == 0, alone.stderr_path.read_text()[-2000:]

            # Everything that shows state, through both clients.
            for args in (("status", "--once"), ("list",), ("show", "f1"), ("show", "iso"),
                         ("--json", "show", "f1"), ("--json", "list")):  # fmt: skip
                code, _, err = await ctl(*args)
                assert code == 0, (args, err)
            for path in ("/health", "/streams", "/streams/f1", "/streams/iso", "/metrics",
                         "/openapi.json"):  # fmt: skip
                assert (await api.call("GET", path))[0] == 200, path
            daemon.signal(signal.SIGHUP)
            code, _, err = await ctl("delete", "f1")
            assert code == 0, err
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(15) == 0, daemon.stderr_path.read_text()[-2000:]
    finally:
        daemon.kill()
        if alone is not None:
            alone.kill()

    # The search must see what it looks for: the secrets file itself, and a gzip canary.
    assert len(leaks(tmp_path, skip=())) >= len(SECRETS)
    canary = tmp_path.parent / f"{tmp_path.name}-canary.jsonl.gz"
    canary.write_bytes(gzip.compress(b"x" + SECRETS["beta.bearer_token"].encode()))
    try:
        assert readable(canary).endswith(SECRETS["beta.bearer_token"].encode())
    finally:
        canary.unlink()
    # ... and there must be plenty to search.
    log_lines = log_text(tmp_path).splitlines()
    assert len(log_lines) >= 30
    assert {"api_change", "stream_state"} <= {json.loads(line)["event"] for line in log_lines}
    assert (tmp_path / "log" / "stream-s1.log").stat().st_size > 0
    assert len((out / "api-answers.jsonl").read_text().splitlines()) >= 15
    assert list(out.glob("written-*iso*.conf"))
    assert sum(entry["messages"] for entry in manifest(tmp_path / "data", "f1")) > 0
    assert sum(entry["messages"] for entry in manifest(tmp_path / "data", "s1")) > 0

    found = leaks(tmp_path, skip=(tmp_path / "credentials.toml",))
    assert not found, "\n".join(found)


def loose_site(tmp_path: Path, mode: int) -> Path:
    """A config, a registry with one stream and the shared credentials at `mode`."""
    root = tmp_path / f"mode-{mode:04o}"
    root.mkdir()
    write_config(root, "http://127.0.0.1:9/1.1")
    write_credentials_file(root)
    register(root, load_credentials(root / "credentials.toml"),
             name="s1", kind="sample", credential="alpha")  # fmt: skip
    os.chmod(root / "credentials.toml", mode)
    return root


LOOSE_MODES = (0o640, 0o604, 0o644, 0o660, 0o666, 0o606, 0o620, 0o602)


def test_a_credentials_file_others_can_touch_is_refused_by_every_command(tmp_path: Path) -> None:
    problems = []
    for mode in LOOSE_MODES:
        root = loose_site(tmp_path, mode)
        config = str(root / "sfmd.toml")
        for argv in (["run", "--config", config], ["stream", "s1", "--config", config],
                     ["supervisor-conf", "s1", "--config", config]):  # fmt: skip
            code, _, err = sfmd_in_fork(argv, root)
            last = err.strip().splitlines()[-1] if err.strip() else ""
            expected = (f"credentials file {root / 'credentials.toml'} has mode {mode:04o}",
                        "chmod 600")  # fmt: skip
            if code != 1 or "Traceback" in err or not all(w in last for w in expected):
                problems.append(f"{mode:04o} {argv[0]}: exit {code}: {err[-500:]}")
            if any(v in err for v in SECRETS.values()):
                problems.append(f"{mode:04o} {argv[0]}: a secret in the refusal")
        if (root / "sfmd.sock").exists() or (root / "data").exists():
            problems.append(f"{mode:04o}: sfmd started something before refusing")
    assert not problems, "\n".join(problems)
    # Stricter than 0600 is fine.
    for mode in (0o600, 0o400):
        root = loose_site(tmp_path, mode)
        code, out, err = sfmd_in_fork(
            ["supervisor-conf", "s1", "--config", str(root / "sfmd.toml")], root
        )
        assert code == 0 and "[program:" in out, err


#: Names that try to leave data_dir, or to cut or extend a supervisor conf or a log line.
HOSTILE_NAMES = [
    "../x", "..", ".", "x/../../y", "/x", "x/y", "%", "a%b", "%(here)s", "%(ENV_HOME)s",
    "a\nb", "a\n[program:evil]", "a\rb", "a\tb", "#", "a#b", "a #b", ";", "a;b", "a ;b",
    "a b", "a\x00b", "A", "-x", "_x", "", "x" * 65, "é", "a:b", "a\\b",
]  # fmt: skip
#: The few also tried through every command (each costs a process).
FEW = ["../x", "%(here)s", "a\n[program:evil]", "a #b", "a;b"]


async def test_hostile_stream_names_are_refused_through_the_api_and_sfmctl(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    fake_api.configure(rate=5, record_bytes=False)
    _config, out, daemon = start_unsupervised(tmp_path, fake_api)
    socket_path = tmp_path / "sfmd.sock"
    try:
        await wait_until(lambda: socket_path.exists() or bool(daemon.exit_report()), DEADLINE,
                         "the control socket")  # fmt: skip
        assert not daemon.exit_report(), daemon.exit_report()
        wrong = []
        async with Api(socket_path) as api:
            await api.ok("POST", "/streams", {"name": "ok", "kind": "sample", "active": False},
                         status=201)  # fmt: skip
            registry_before = (tmp_path / "state" / "streams.json").read_bytes()
            for name in HOSTILE_NAMES:
                for isolation in ("task", "process"):
                    body = {"name": name, "kind": "sample", "isolation": isolation}
                    status, answer = await api.call("POST", "/streams", body)
                    if status != 422 or "name" not in answer.get("message", ""):
                        wrong.append(f"POST {name!r} ({isolation}): {status} {answer}")
                status, answer = await api.call("PATCH", "/streams/ok", {"name": name})
                if status != 422:
                    wrong.append(f"PATCH to {name!r}: {status} {answer}")
            # Traversal through the URL finds no stream.
            for path in ("/streams/..%2F..%2Fstate", "/streams/%2E%2E", "/streams/ok%2F..",
                         "/streams/..%2Fok", "/streams/ok%00"):  # fmt: skip
                for method in ("GET", "DELETE", "PATCH"):
                    status, answer = await api.call(method, path, {} if method == "PATCH"
                                                    else None)  # fmt: skip
                    if status != 404:
                        wrong.append(f"{method} {path}: {status} {answer}")
                status, _ = await api.call("POST", path + "/start")
                if status != 404:
                    wrong.append(f"POST {path}/start: {status}")
            assert (tmp_path / "state" / "streams.json").read_bytes() == registry_before
        for i, name in enumerate(FEW):
            code, _, err = await run_command(
                f"sfmctl-{i}", ["-m", "sfmd.ctl", "--socket", str(socket_path), "sample", name,
                                "--inactive"], tmp_path, out)  # fmt: skip
            if code not in (1, 2) or "name" not in err:
                wrong.append(f"sfmctl sample {name!r}: exit {code}: {err}")
        assert not wrong, "\n".join(wrong)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(15) == 0
    finally:
        daemon.kill()
    # Nothing was made for any of them: one stream folder at most, no conf, nothing outside.
    assert [p.name for p in (tmp_path / "data").iterdir()] in ([], ["ok"])
    confs = tmp_path / "confs"
    assert not confs.exists() or not any(confs.iterdir())
    made = {p.name for p in tmp_path.iterdir()} - {"confs"}
    # sfmd.sock is gone: a clean stop removes the socket it made.
    assert made == {"credentials.toml", "sfmd.toml", "data", "state", "log", "out"}


def test_hostile_names_in_a_hand_edited_registry_stop_every_command(tmp_path: Path) -> None:
    problems = []
    for i, name in enumerate(FEW):
        root = tmp_path / f"site-{i}"
        root.mkdir()
        write_config(root, "http://127.0.0.1:9/1.1")
        write_credentials_file(root)
        (root / "state").mkdir()
        registry = root / "state" / "streams.json"
        entry = {"name": name, "kind": "sample", "credential": "alpha", "isolation": "process"}
        registry.write_text(json.dumps({"version": 1, "streams": [entry]}))
        config = str(root / "sfmd.toml")
        for argv in (["run", "--config", config], ["stream", name, "--config", config],
                     ["supervisor-conf", name, "--config", config],
                     ["supervisor-conf", "--all", "--config", config]):  # fmt: skip
            code, printed, err = sfmd_in_fork(argv, root)
            last = err.strip().splitlines()[-1] if err.strip() else ""
            if code != 1 or "Traceback" in err or str(registry) not in last:
                problems.append(f"{name!r} {argv[0]}: exit {code}: {err[-500:]}")
            if printed:
                problems.append(f"{name!r} {argv[0]} printed {printed[:200]!r}")
        leftovers = sorted(p.name for p in root.iterdir())
        if leftovers != ["credentials.toml", "fork-stderr.txt", "fork-stdout.txt", "log",
                         "sfmd.toml", "state"]:  # fmt: skip
            problems.append(f"{name!r}: files made: {leftovers}")
    # A sound registry, a hostile name on the command line: no such stream, nothing made.
    root = loose_site(tmp_path, 0o600)
    for name in FEW:
        for command in ("stream", "supervisor-conf"):
            code, printed, err = sfmd_in_fork([command, name, "--config", "sfmd.toml"], root)
            if code != 1 or "no stream named" not in err or printed:
                problems.append(f"{command} {name!r}: exit {code}: {err[-300:]}")
    if sorted(p.name for p in root.iterdir()) != ["credentials.toml", "fork-stderr.txt",
                                                  "fork-stdout.txt", "sfmd.toml", "state"]:
        problems.append(f"files made: {sorted(p.name for p in root.iterdir())}")
    assert not problems, "\n".join(problems)


async def test_reprs_of_what_holds_credentials_show_no_secret(tmp_path: Path) -> None:
    write_credentials_file(tmp_path)
    credentials = load_credentials(tmp_path / "credentials.toml")
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9/1.1"))
    register(tmp_path, credentials, name="s1", kind="sample", credential="alpha")
    daemon = Daemon(config)
    daemon.credentials = credentials
    daemon.registry = Registry.load(tmp_path / "state", credentials=credentials.keys())
    shown = [
        repr(credentials), str(credentials), f"{credentials['alpha']}",
        repr(list(credentials.values())), repr(config), repr(daemon.registry),
        repr(daemon.registry.get("s1")), repr(vars(daemon)), repr(daemon.views.health()),
        repr(daemon.views.view_json(daemon.registry.get("s1"))),
    ]  # fmt: skip
    assert isinstance(credentials["alpha"], Credential)
    text = "\n".join(shown)
    assert "alpha" in text  # the names do show: that is how an operator tells them apart
    assert not [label for label, value in SECRETS.items() if value in text]
    assert MARKER.decode() not in text


@pytest.mark.parametrize("mode", ["0660", "0640"])
async def test_the_control_socket_takes_the_configured_mode(
    tmp_path: Path, fake_api: FakeAPI, mode: str
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    config.write_text(config.read_text().replace("[twitter]", f'socket_mode = "{mode}"\n[twitter]'))
    out = tmp_path / "out"
    out.mkdir()
    socket_path = tmp_path / "sfmd.sock"
    daemon = Child("daemon", "run", "--config", str(config), cwd=tmp_path, out=out)
    try:
        began = time.monotonic()
        await wait_until(lambda: socket_path.exists() or bool(daemon.exit_report()), DEADLINE,
                         "the control socket")  # fmt: skip
        assert not daemon.exit_report(), daemon.exit_report()
        assert stat.S_IMODE(socket_path.stat().st_mode) == int(mode, 8), time.monotonic() - began
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(15) == 0
    finally:
        daemon.kill()
