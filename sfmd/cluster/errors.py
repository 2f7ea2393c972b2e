"""What cluster mode raises on purpose: NATS unreachable, a bucket set up differently, a
conflicting change, a stale holder's write."""

from __future__ import annotations

from sfmd.errors import Refused, SfmdError


class ClusterError(SfmdError):
    """NATS or one of its buckets is not as cluster mode needs it; the message says what."""


class Conflict(Refused):
    """A change raced another one (on this host or another) and was not applied (the API's
    409): nothing changed, and the caller may check the change again and retry."""

    status = 409
    code = "conflict"


class Unavailable(Refused):
    """NATS did not answer a change in time (the API's 503). A write whose answer was lost
    may still have been stored, so the message says to read back before retrying."""

    status = 503
    code = "cluster_unavailable"


class StaleEpoch(SfmdError):
    """A write from a lease holder that is no longer the newest holder of its slot, refused so
    that a host which lost a connection cannot overwrite its successor's state."""
