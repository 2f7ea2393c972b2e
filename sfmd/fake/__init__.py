"""The simulated APIs, for demos, tests and dry runs: never imported by `sfmd run`.

`server` hosts the fakes on loopback and owns what they share; `mount` is the seam a fake is
written against; `twitter` (v1.1), `v2`, `jetstream` (a Bluesky Jetstream instance) and
`mastodon` (a Mastodon instance) are the fakes; `rulebook` keeps v2's rules; `timelines` holds
the Mastodon instance's statuses; `faults`, `pacing` and `settings` are the scriptable
misbehaviour, the send rate and the live knobs every fake reads; `cli` is `sfmd fakeapi`.
"""

from sfmd.fake.faults import FaultScript, check_fault
from sfmd.fake.jetstream import JetstreamAPI, JetstreamEvent, JetstreamFilter
from sfmd.fake.mastodon import MastodonAPI
from sfmd.fake.mount import FIRST_SEQ, ConnectionRecord, Host, Mount, StreamHandle
from sfmd.fake.server import FakeAPI
from sfmd.fake.settings import FakeAPIError, Settings
from sfmd.fake.twitter import V1API, seq_of, user_id_for
from sfmd.fake.v2 import V2API

__all__ = [
    "FIRST_SEQ",
    "V1API",
    "V2API",
    "ConnectionRecord",
    "FakeAPI",
    "FakeAPIError",
    "FaultScript",
    "Host",
    "JetstreamAPI",
    "JetstreamEvent",
    "JetstreamFilter",
    "MastodonAPI",
    "Mount",
    "Settings",
    "StreamHandle",
    "check_fault",
    "seq_of",
    "user_id_for",
]
