"""Every host's manifest lines on one JetStream stream, `SFM_MANIFEST`.

Each host writes its files and its manifest under its own data_dir; the feed is so that one
consumer (a catalogue, a replication job) sees every host's files in one place. A line goes to
`sfm.manifest.<host>.<stream>` with a `Nats-Msg-Id` made of the host, the file and its sha256:
a host that crashed between publishing a file and hearing the acknowledgement publishes the line
again after restart, and the server drops the copy if it comes within the stream's duplicate
window (a day by default; the manifest on disk stays the record of truth). A consumer that
wants to be exact beyond the window keys on the same id, which every message carries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from sfmd.cluster.keys import encode_key
from sfmd.logs import get_logger

log = get_logger()

STREAM = "SFM_MANIFEST"
SUBJECT_PREFIX = "sfm.manifest"
#: Seconds within which a republished line is recognised by the server.
DUPLICATE_WINDOW = 24 * 3600.0
#: Seconds the feed keeps a line: a consumer that was away longer reads the manifests.
MAX_AGE = 30 * 24 * 3600.0


@dataclass(frozen=True)
class Published:
    seq: int
    duplicate: bool  # the server had it already (a republish inside the window)


def message_id(host: str, file: str, sha256: str) -> str:
    """The de-duplication id of a file's manifest line: the same file, the same id."""
    return f"{host}:{file}:{sha256}"


def subject_of(host: str, stream: str) -> str:
    return f"{SUBJECT_PREFIX}.{encode_key(host)}.{encode_key(stream)}"


class ManifestFeed:
    def __init__(self, js: JetStreamContext, host_id: str, *, ack_wait: float = 5.0) -> None:
        self.js = js
        self.host_id = host_id
        self.ack_wait = ack_wait  # seconds a publish waits for the server's acknowledgement

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        host_id: str,
        *,
        replicas: int = 1,
        duplicate_window: float = DUPLICATE_WINDOW,
        max_age: float = MAX_AGE,
        ack_wait: float = 5.0,
    ) -> ManifestFeed:
        """The feed, its stream created if missing (an existing one is used as it is)."""
        try:
            await js.stream_info(STREAM)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=STREAM,
                    description="sfmd: every host's manifest lines",
                    subjects=[f"{SUBJECT_PREFIX}.>"],
                    duplicate_window=duplicate_window,
                    max_age=max_age,
                    storage=StorageType.FILE,
                    num_replicas=replicas,
                )
            )
            log.info("nats_stream_created", stream=STREAM, replicas=replicas)
        return cls(js, host_id, ack_wait=ack_wait)

    async def publish(self, line: bytes, *, stream: str, file: str, sha256: str) -> Published:
        """Publish one manifest line (the bytes as in the manifest file) and wait for the
        server to store it; NATS's errors propagate (publish again later: it is idempotent)."""
        ack = await self.js.publish(
            subject_of(self.host_id, stream),
            line,
            timeout=self.ack_wait,
            stream=STREAM,
            headers={"Nats-Msg-Id": message_id(self.host_id, file, sha256)},
        )
        return Published(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def publish_line(self, line: bytes, *, stream: str) -> Published:
        """`publish` for a manifest line as the archive wrote it: a file's line is known by
        its file and sha256; a line with `"file": null` by its span."""
        try:
            entry = json.loads(line)
        except ValueError:
            entry = {}
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            return await self.publish(line, stream=stream, file=entry["file"],
                                      sha256=str(entry.get("sha256")))
        if not isinstance(entry, dict):
            entry = {}
        span = f"{stream}/{entry.get('start')}/{entry.get('end')}"
        return await self.publish(line, stream=stream, file=span, sha256="none")
