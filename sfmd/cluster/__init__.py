"""Cluster mode: several hosts sharing one registry and covering for each other's connections.

Everything here speaks NATS JetStream (through nats-py) and is imported only when
`[cluster] nats_url` is set, so a single host needs neither NATS nor nats-py loaded. The parts:
`connection` (the client and the buckets), `keys` (names as KV keys), `lease` (one holder per
connection, with an epoch to fence stale writes), `hosts` (heartbeats of live hosts),
`placement` (which live host should hold which slot), `kvregistry` (the stream registry on a
bucket), `checkpoints` (resume points, fenced by epoch) and `feed` (the manifest lines of every
host on one JetStream stream). docs/cluster.md tells how they fit and what is still to wire.
"""
