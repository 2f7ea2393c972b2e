"""A real supervisord in a temp dir, for tests that drive it the way production does.

It runs in the foreground (`nodaemon`) as a child of the test, with its own Unix socket, pid
file, log and include folder, and is stopped by its pid. Readiness is checked with supervisor's
own XML-RPC transport (what supervisorctl uses), independent of sfmd's client under test.

The fixtures `supervisord` (running) and `idle_supervisord` (set up first, then `.start()`)
are in tests/system/conftest.py; `start_supervisord()` / `.stop()` work without pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from sfmd.ops.confs import render_program
from sfmd.ops.supervisord import SupervisorClient
from tests.helpers.confs import PREFIX, SLEEPER, TEST_USER

#: What every test supervisord has besides its socket and include settings.
MAIN_CONF_HEAD = """\
[supervisord]
nodaemon = true
logfile = {root}/supervisord.log
pidfile = {root}/supervisord.pid
childlogdir = {root}/childlogs
loglevel = info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

"""

MAIN_CONF = (
    MAIN_CONF_HEAD
    + """\
[unix_http_server]
file = {socket}

[supervisorctl]
serverurl = unix://{socket}

[include]
files = {conf_dir}/*.conf
"""
)


HTTP_CONF = """
[inet_http_server]
port = 127.0.0.1:{port}
username = {user}
password = {password}
"""


class Supervisord:
    """One running supervisord; `server_url` is what `[supervisor] server_url` would hold."""

    def __init__(self, root: Path, http_auth: tuple[str, str] | None = None) -> None:
        self.root = root
        self.http_auth = http_auth  # also serve XML-RPC on loopback TCP, with this login
        self.http_url = ""
        self.conf_dir = root / "conf.d"
        self.socket = root / "supervisor.sock"  # short: a temp dir, not a test's long tmp_path
        self.conf = root / "supervisord.conf"
        self.log = root / "supervisord.log"
        self.server_url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0, conf_text: str | None = None) -> None:
        """Start with the fixture's own conf, or `conf_text` (whose socket must be `socket`)."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "childlogs").mkdir(exist_ok=True)
        text = conf_text or MAIN_CONF.format(
            root=self.root, socket=self.socket, conf_dir=self.conf_dir
        )
        if self.http_auth is not None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            user, password = self.http_auth
            # supervisor expands `%` in every value.
            text += HTTP_CONF.format(port=port, user=user, password=password.replace("%", "%%"))
            self.http_url = f"http://127.0.0.1:{port}"
        self.conf.write_text(text)
        with open(self.root / "stderr.txt", "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "-c", self.conf],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisord exited early:\n{self.diagnostics()}")
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                if self.rpc().supervisor.getState()["statename"] == "RUNNING":
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"supervisord not RUNNING after {timeout} s")
            time.sleep(0.02)

    def rpc(self) -> Any:
        """supervisor's own synchronous XML-RPC proxy (as supervisorctl talks to it)."""
        transport = SupervisorTransport(None, None, self.server_url)
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def info(self, name: str) -> dict[str, Any]:
        return dict(self.rpc().supervisor.getProcessInfo(name))

    def children(self) -> list[int]:
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            return [p["pid"] for p in self.rpc().supervisor.getAllProcessInfo() if p["pid"]]
        return []

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (supervisord stops its programs), then SIGKILL; then any orphan it left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        children = self.children()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in children:  # only pids this supervisord reported as its own children
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def diagnostics(self) -> str:
        parts = []
        for path in (self.root / "stderr.txt", self.log):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def start_supervisord(
    root: Path | None = None, timeout: float = 10.0, http_auth: tuple[str, str] | None = None
) -> Supervisord:
    """Start one in `root` (default: a new short temp dir, so the socket path stays short)."""
    sd = Supervisord(root or Path(tempfile.mkdtemp(prefix="sd-")), http_auth)
    sd.start(timeout)
    return sd


def our_conf(sd: Supervisord, name: str, **environment: str) -> str:
    (sd.root / "etc").mkdir(exist_ok=True)
    return render_program(
        name,
        config_path=sd.root / "etc" / "sfmd.toml",
        sfmd_command=SLEEPER,
        program_prefix=PREFIX,
        user=TEST_USER,
        log_dir=sd.root / "log",
        environment=environment or None,
    )


def add_other_program(sd: Supervisord) -> None:
    """A program that is none of sfmd's business, in the same include folder."""
    (sd.conf_dir / "other.conf").write_text(
        f"[program:other]\ncommand={shlex.join(SLEEPER)}\nstartsecs=0\n"
    )
    sd.rpc().supervisor.reloadConfig()
    sd.rpc().supervisor.addProcessGroup("other")


async def wait_pid(client: SupervisorClient, name: str, not_pid: int = 0) -> int:
    """The program's pid once it is spawned (STARTING or RUNNING) with a pid other than not_pid."""
    deadline = time.monotonic() + 15
    while True:
        info = await client.get_process_info(name)
        if info["statename"] in ("STARTING", "RUNNING") and info["pid"] not in (0, not_pid):
            return int(info["pid"])
        assert time.monotonic() < deadline, f"{name} never started: {info}"
        await asyncio.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
