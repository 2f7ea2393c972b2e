"""Process-isolated streams without a supervisord: state mapping, and refusals before any
conf is written, and what restarts a process (sfmd.runtime.processes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sfmd.ops.confs import ConfError
from sfmd.registry import apply_patch, validate_stream
from sfmd.runtime.processes import ProcessStreams, process_status, settings_fingerprint
from tests.helpers.confs import SLEEPER, spec, write_supervisor_config


async def test_an_unknown_user_is_refused_before_any_conf_is_written(tmp_path: Path) -> None:
    """supervisord would reject such a conf, and with it every program's reload."""
    config = write_supervisor_config(tmp_path, "unix:///nowhere.sock", tmp_path / "conf.d")
    config = dataclasses.replace(
        config, supervisor=dataclasses.replace(config.supervisor, user="no-such-user-sfm")
    )
    streams = ProcessStreams(config, sfmd_command=SLEEPER)
    with pytest.raises(ConfError, match="does not exist"):
        await streams.reconcile([spec("a")])
    assert not (tmp_path / "conf.d").exists()
    await streams.close()


def test_process_status_maps_supervisor_states() -> None:
    fatal = {
        "statename": "FATAL",
        "stop": 1700000000,
        "pid": 0,
        "spawnerr": "Exited too quickly",
        "description": "Exited too quickly (process log may have details)",
    }
    assert process_status(fatal) == {
        "state": "failed",
        "since": "2023-11-14T22:13:20Z",
        "pid": None,
        "last_error": "Exited too quickly",
    }
    running = {"statename": "RUNNING", "start": 1700000000, "pid": 42, "description": "x"}
    assert process_status(running)["state"] == "streaming"
    assert process_status(running)["last_error"] is None


def test_a_bluesky_process_restarts_for_new_collections_a_twitter_one_keeps_its_hash() -> None:
    bluesky = validate_stream({"name": "p", "source": "bluesky", "kind": "jetstream",
                               "collections": ["app.bsky.feed.post"], "isolation": "process"})
    changed = apply_patch(bluesky, {"collections": ["app.bsky.feed.like"]})
    assert settings_fingerprint(changed) != settings_fingerprint(bluesky)
    twitter = validate_stream({"name": "t", "kind": "filter", "track": ["x"],
                               "credential": "c", "isolation": "process"})
    assert settings_fingerprint(apply_patch(twitter, {"active": False})) == settings_fingerprint(
        twitter)
