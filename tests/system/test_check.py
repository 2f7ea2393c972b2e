"""`sfmd check` (like `nginx -t`), and the start-up refusals it shares with `sfmd run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers.config import CREDENTIALS_TOML, write_config
from tests.helpers.waits import wait_until_sync

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "credentials.toml.example"


def sfmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sfmd", *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


def home(tmp_path: Path, credentials: str) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(credentials)
    os.chmod(path, 0o600)
    return write_config(tmp_path, "http://127.0.0.1:9/1.1")


def test_a_good_setup_checks_ok_and_counts_what_it_found(tmp_path: Path) -> None:
    config = home(tmp_path, CREDENTIALS_TOML)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "streams.json").write_text(json.dumps({"version": 1, "streams": [
        {"name": "s", "kind": "sample", "credential": "alpha"}]}))
    done = sfmd("check", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{config}: ok (4 credentials, 1 streams)"
    assert not list(tmp_path.glob("*.sock")) and not (tmp_path / "log").exists()


def test_a_default_credential_the_file_lacks_stops_check_and_start_up(tmp_path: Path) -> None:
    config = home(tmp_path, CREDENTIALS_TOML)
    config.write_text(config.read_text().replace('default_credential = "alpha"',
                                                 'default_credential = "gamma"'))
    checked = sfmd("check", "--config", str(config), cwd=tmp_path)
    assert checked.returncode == 1
    assert "default_credential 'gamma' is not in" in checked.stderr and "alpha" in checked.stderr
    started = sfmd("run", "--config", str(config), cwd=tmp_path)
    assert started.returncode == 1 and "default_credential 'gamma'" in started.stderr


def test_unedited_example_keys_stop_check_and_start_up_naming_keys_not_values(
    tmp_path: Path,
) -> None:
    config = home(tmp_path, EXAMPLE.read_text())
    checked = sfmd("check", "--config", str(config), cwd=tmp_path)
    assert checked.returncode == 1
    assert "credential 'default'" in checked.stderr and "consumer_key" in checked.stderr
    assert "REPLACE-WITH-CONSUMER-KEY" not in checked.stderr + checked.stdout
    started = sfmd("run", "--config", str(config), cwd=tmp_path)
    assert started.returncode == 1 and "placeholder" in started.stderr


def test_a_broken_config_is_named(tmp_path: Path) -> None:
    config = home(tmp_path, CREDENTIALS_TOML)
    config.write_text(config.read_text() + "\n[daemon2]\n")
    checked = sfmd("check", "--config", str(config), cwd=tmp_path)
    assert checked.returncode == 1 and "unknown table [daemon2]" in checked.stderr


def test_supervisor_conf_finds_the_config_and_says_what_it_prints(tmp_path: Path) -> None:
    config = home(tmp_path, CREDENTIALS_TOML)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "streams.json").write_text(json.dumps({"version": 1, "streams": [
        {"name": "s", "kind": "sample", "credential": "alpha"}]}))
    env = {**os.environ, "SFMD_CONFIG": str(config)}  # no --config: the environment's
    done = subprocess.run([sys.executable, "-m", "sfmd", "supervisor-conf", "s"],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "[program:sfm-stream-s]" in done.stdout
    assert "runs as a task" in done.stderr  # a conf sfmd itself does not use
    empty = subprocess.run([sys.executable, "-m", "sfmd", "supervisor-conf", "--all"],
                           capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    assert empty.returncode == 0 and empty.stdout == ""
    assert 'no stream has isolation = "process"' in empty.stderr


def test_sfmd_run_says_where_it_logs_and_listens(tmp_path: Path) -> None:
    config = home(tmp_path, CREDENTIALS_TOML)
    with subprocess.Popen([sys.executable, "-m", "sfmd", "run", "--config", str(config)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=tmp_path) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            # Stopped once it serves: a SIGTERM before its handlers exist would kill it.
            wait_until_sync(lambda: (tmp_path / "sfmd.sock").exists(), what="the socket")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=15)
    assert f"logging to {tmp_path / 'log' / 'sfmd.log'}" in first
    assert f"control socket {tmp_path / 'sfmd.sock'}" in first
    assert proc.returncode == 0, errors


def test_sfmd_help_speaks_to_an_operator() -> None:
    shown = subprocess.run([sys.executable, "-m", "sfmd", "--help"], capture_output=True,
                           text=True, timeout=30, check=True).stdout
    assert "sfmd collects" in shown and "Thin by design" not in shown
