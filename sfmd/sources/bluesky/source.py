"""Bluesky as a `Source`: one Jetstream connection per stream, no credential, no shared
connection, and nothing to ask the network before a change is stored."""

from __future__ import annotations

from collections.abc import Mapping

from sfmd.archive import CountItems
from sfmd.credentials import Credential
from sfmd.registry import StreamSpec
from sfmd.sources.backoff import BackoffPolicy
from sfmd.sources.base import Connection, Context, SharedConnection, Sink
from sfmd.sources.bluesky.events import count_commits
from sfmd.sources.bluesky.jetstream import JetstreamStream, JetstreamTiming, Subscription


class BlueskySource:
    name = "bluesky"

    def credential_problem(
        self, spec: StreamSpec, credentials: Mapping[str, Credential]
    ) -> str | None:
        return None  # Jetstream is public

    def counter(self, spec: StreamSpec) -> CountItems:
        return count_commits

    def connection(
        self, spec: StreamSpec, credential: Credential | None, sink: Sink, context: Context
    ) -> JetstreamStream:
        config = context.config
        return JetstreamStream(
            self._subscription(spec, context),
            session=context.session,
            sink=sink,
            stream_dir=config.daemon.data_dir / spec.name,
            saved_point=context.saved_point,
            timing=JetstreamTiming(
                idle_timeout=config.bluesky.idle_timeout,
                connect_timeout=config.timing.connect_timeout,
                rewind=config.bluesky.rewind,
                backoff=BackoffPolicy.from_config(config.timing),
            ),
        )

    async def retarget(
        self, connection: Connection, spec: StreamSpec, context: Context, grace: float
    ) -> None:
        assert isinstance(connection, JetstreamStream)
        await connection.change(self._subscription(spec, context))

    async def update(self, connection: Connection, spec: StreamSpec, context: Context) -> None:
        """New collections or DIDs: an `options_update` on the open socket."""
        assert isinstance(connection, JetstreamStream)
        await connection.change(self._subscription(spec, context))

    def shared(self, credential: Credential, context: Context) -> SharedConnection:
        raise NotImplementedError("Bluesky streams share no connection")

    async def admit(
        self,
        spec: StreamSpec,
        old: StreamSpec | None,
        credential: Credential | None,
        context: Context,
        in_use: set[str],
    ) -> StreamSpec:
        return spec

    @staticmethod
    def _subscription(spec: StreamSpec, context: Context) -> Subscription:
        bluesky = context.config.bluesky
        return Subscription(
            name=spec.name,
            url=spec.endpoint or bluesky.jetstream_url,
            collections=spec.collections,
            dids=spec.dids,
            compress=bluesky.compress,
        )
