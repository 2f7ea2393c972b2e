"""Several `sfmd run` hosts on one real nats-server, for the cluster system tests.

Each host has a home of its own (config, credentials, data, state, log, socket), as separate
machines would; they share the NATS server and the fake APIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmd.fake import FakeAPI
from tests.helpers.api import Api
from tests.helpers.config import write_credentials_file, write_daemon_config
from tests.helpers.daemon import SfmdProcess, start_daemon

#: Cluster timings for tests: a takeover within seconds, not the production 15 s.
FAST_CLUSTER = {"lease_ttl": 3, "poll_interval": 0.2, "checkpoint_interval": 0.2}


@dataclass
class Host:
    host_id: str
    home: Path
    config: Path
    proc: SfmdProcess | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.home / "sfmd.sock"

    @property
    def data(self) -> Path:
        return self.home / "data"

    def api(self) -> Api:
        return Api(self.socket)

    async def start(self) -> None:
        self.proc = await start_daemon(self.home, self.config)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None


def make_host(
    root: Path, fake_api: FakeAPI, nats_url: str, host_id: str, **cluster: Any
) -> Host:
    """A host's home under `root`, its config pointing at `nats_url` (not started)."""
    home = root / host_id
    home.mkdir(parents=True, exist_ok=True)
    write_credentials_file(home)
    config = write_daemon_config(
        home, fake_api,
        cluster={"nats_url": nats_url, "host_id": host_id, **FAST_CLUSTER, **cluster},
    )
    return Host(host_id, home, config)
