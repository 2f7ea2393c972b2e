"""sd_notify without a socket: what the environment means, and the shipped unit file's
settings (sfmd.ops.systemd). The datagrams themselves are in tests/system/ops."""

from __future__ import annotations

import asyncio

import pytest

from sfmd.ops.systemd import Notifier, watchdog_loop
from tests.helpers.paths import REPO

PING_USEC = 200_000  # WATCHDOG_USEC: pings every 0.1 s


def test_no_notify_socket_means_a_silent_no_op() -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": str(PING_USEC)})
    assert not n.enabled
    assert n.watchdog_interval() is None
    assert n.ready("up") is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.reloading() is False


async def test_watchdog_loop_returns_at_once_without_systemd() -> None:
    async with asyncio.timeout(1):
        await watchdog_loop(Notifier(None), lambda: "x")


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid(
    env: dict[str, str], interval: float | None
) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env}, pid=4242)
    assert n.watchdog_interval() == interval


def test_abstract_name_becomes_a_leading_nul_and_paths_stay() -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "@abc"}).address == "\0abc"
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify"}).address == (
        "/run/systemd/notify"
    )
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


# -- the unit file -----------------------------------------------------------------------

UNIT = REPO / "systemd" / "sfmd.service"


def unit_settings() -> dict[str, list[str]]:
    """`Section.Key` → every value it is given, in order (systemd allows repeats)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * units[suffix]
    return float(value)


def test_unit_keeps_sfmds_promises() -> None:
    unit = {key: values[-1] for key, values in unit_settings().items()}
    assert unit["Service.Type"] == "notify"
    assert unit["Service.ExecStart"].endswith("sfmd run --config /etc/sfm/sfmd.toml")
    assert unit["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert seconds(unit["Service.TimeoutStopSec"]) >= 2 * 10  # sfmd exits within 10 s
    assert seconds(unit["Service.WatchdogSec"]) >= 10
    assert unit["Service.KillMode"] in ("mixed", "control-group")
    for kind in ("Logs", "State", "Runtime"):
        assert unit[f"Service.{kind}Directory"] == "sfm"
    # Automatic restarts must never exhaust the start limit (systemd 252's defaults do in ~1 s).
    burst, interval = int(unit["Unit.StartLimitBurst"]), seconds(unit["Unit.StartLimitIntervalSec"])
    assert (burst - 1) * seconds(unit["Service.RestartSec"]) > interval
    assert unit["Service.RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
