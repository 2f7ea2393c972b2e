"""A start that is refused: its reason on stderr and in one log line, never in another
daemon's log (the socket is claimed before the log is opened)."""

from __future__ import annotations

from pathlib import Path

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_daemon_config
from tests.helpers.daemon import SfmdProcess, start_daemon, stop
from tests.helpers.logs import log_events, log_path

#: What a daemon writes into its log as it starts or stops: none may come from a refused one.
LIFE_EVENTS = {
    "open_files_limit", "stale_socket_removed", "control_socket", "startup", "startup_failed",
    "shutdown", "stopped", "signal_received",
}


async def test_a_second_daemon_is_refused_without_a_line_in_the_first_ones_log(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    first = await start_daemon(tmp_path, config)
    try:
        before = log_path(tmp_path).read_bytes()
        assert any(e["event"] == "startup" for e in log_events(tmp_path))
        second = SfmdProcess("run", "--config", str(config), cwd=tmp_path)
        assert await second.wait(10) == 1
        assert "another sfmd is already running" in second.stderr
        assert "Traceback" not in second.stderr
        after = log_path(tmp_path).read_bytes()
        assert after.startswith(before)
        added = log_events(tmp_path)[len(before.splitlines()):]
        assert not [e for e in added if e["event"] in LIFE_EVENTS], added
        async with Api(tmp_path / "sfmd.sock") as api:  # the first still owns its socket
            assert (await api.ok("GET", "/health"))["status"] == "ok"
        await stop(first)
    finally:
        first.kill()
    events = [e["event"] for e in log_events(tmp_path)]
    assert events.count("startup") == 1 and events.count("stopped") == 1, events


async def refused(tmp_path: Path, config: Path) -> tuple[str, list[dict[str, object]]]:
    """`sfmd run` that must be refused: its stderr and its log's events."""
    proc = SfmdProcess("run", "--config", str(config), cwd=tmp_path)
    assert await proc.wait(15) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "sfmd.sock").exists()  # given back
    return proc.stderr, log_events(tmp_path, missing_ok=True)


async def test_a_start_refused_for_a_credential_logs_one_line_with_the_reason(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    config.write_text(config.read_text().replace('default_credential = "alpha"',
                                                 'default_credential = "gamma"'))
    stderr, events = await refused(tmp_path, config)
    assert "default_credential 'gamma' is not in" in stderr
    failed = [e for e in events if e["event"] == "startup_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error", events
    assert "default_credential 'gamma' is not in" in str(failed[0]["reason"])
    assert not [e for e in events if e["event"] in ("shutdown", "stopped")], events
    assert "SECRET" not in log_path(tmp_path).read_text() + stderr


async def test_a_start_refused_for_a_data_dir_it_cannot_write_names_it(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    (tmp_path / "afile").write_text("not a folder")
    config.write_text(config.read_text().replace('data_dir = "data"', 'data_dir = "afile/data"'))
    stderr, events = await refused(tmp_path, config)
    assert f"data_dir {tmp_path / 'afile' / 'data'} is not writable" in stderr
    failed = [e for e in events if e["event"] == "startup_failed"]
    assert len(failed) == 1 and "is not writable" in str(failed[0]["reason"]), events
    assert not [e for e in events if e["event"] in ("shutdown", "stopped")], events


async def test_a_log_folder_it_cannot_write_is_said_on_stderr(
    tmp_path: Path, fake_api: FakeAPI
) -> None:
    config = write_daemon_config(tmp_path, fake_api)
    (tmp_path / "log").write_text("not a folder")
    proc = SfmdProcess("run", "--config", str(config), cwd=tmp_path)
    assert await proc.wait(15) == 1
    assert f"cannot write the log file {tmp_path / 'log' / 'sfmd.log'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sfmd.sock").exists()
