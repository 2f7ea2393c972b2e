"""The reconciler's back end for process-isolated streams against a real supervisord."""

from __future__ import annotations

from pathlib import Path

from sfmd.runtime.processes import ProcessStreams
from tests.helpers.confs import (
    PREFIX,
    SLEEPER,
    spec,
    write_supervisor_config,
)
from tests.helpers.supervisord import Supervisord, add_other_program, wait_pid


async def test_process_streams_reconcile_follows_the_registry(
    supervisord: Supervisord, tmp_path: Path
) -> None:
    sd = supervisord
    config = write_supervisor_config(tmp_path, sd.server_url, sd.conf_dir)
    add_other_program(sd)
    streams = ProcessStreams(config, sfmd_command=SLEEPER)
    try:
        report = await streams.reconcile(
            [
                spec("a"),
                spec("b", credential="beta"),
                spec("t", isolation="task"),
                spec("off", active=False),
            ]
        )
        assert report["written"] == ["a", "b"] and report["added"] == [PREFIX + "a", PREFIX + "b"]
        a_pid = await wait_pid(streams.client, PREFIX + "a")
        b_pid = await wait_pid(streams.client, PREFIX + "b")
        statuses = await streams.statuses()
        assert set(statuses) == {"a", "b"}
        assert statuses["a"]["state"] in ("connecting", "streaming")

        # A filter change restarts only that stream; a repeat changes nothing.
        report = await streams.reconcile([spec("a", track="y"), spec("b", credential="beta")])
        assert (report["written"], report["changed"]) == (["a"], [PREFIX + "a"])
        await wait_pid(streams.client, PREFIX + "a", not_pid=a_pid)
        assert sd.info(PREFIX + "b")["pid"] == b_pid
        report = await streams.reconcile([spec("a", track="y"), spec("b", credential="beta")])
        assert report["written"] == report["changed"] == report["started"] == []

        # Stopped behind sfmd's back: started again, since the registry says it should run.
        await streams.client.stop_process(PREFIX + "b")
        report = await streams.reconcile([spec("a", track="y"), spec("b", credential="beta")])
        assert report["started"] == [PREFIX + "b"]
        await wait_pid(streams.client, PREFIX + "b", not_pid=b_pid)

        # Made inactive or task-isolated: conf deleted, program gone.
        report = await streams.reconcile(
            [spec("a", track="y", active=False), spec("b", credential="beta", isolation="task")]
        )
        assert report["deleted"] == ["a", "b"]
        assert sorted(report["removed"]) == [PREFIX + "a", PREFIX + "b"]
        assert await streams.statuses() == {}
        assert streams.conf_names() == []
        assert sd.info("other")["statename"] == "RUNNING"

        # Nothing isolated and nothing to undo: supervisord is not even asked.
        assert await streams.reconcile([]) == {"written": [], "deleted": []}
    finally:
        await streams.close()


async def test_process_streams_write_confs_while_supervisord_is_down(
    idle_supervisord: Supervisord, tmp_path: Path
) -> None:
    sd = idle_supervisord
    config = write_supervisor_config(tmp_path, sd.server_url, sd.conf_dir)
    streams = ProcessStreams(config, sfmd_command=SLEEPER)
    try:
        report = await streams.reconcile([spec("a")])
        assert report["written"] == ["a"]
        assert report["waiting"].startswith("waiting for supervisord")
        sd.start()  # it reads the conf at start-up and autostarts the stream
        await wait_pid(streams.client, PREFIX + "a")
        report = await streams.reconcile([spec("a")])
        assert report["written"] == report["added"] == report["started"] == []
    finally:
        await streams.close()
