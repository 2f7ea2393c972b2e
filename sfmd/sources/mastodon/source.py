"""Mastodon as a `Source`: every stream a member of its account's one streaming connection
(`Mode.SHARED`), so this source builds shared connections only."""

from __future__ import annotations

from collections.abc import Mapping

from sfmd.archive import CountItems
from sfmd.credentials import Credential
from sfmd.registry import StreamSpec, mastodon_slot
from sfmd.sources.backoff import BackoffPolicy
from sfmd.sources.base import Connection, Context, Sink
from sfmd.sources.mastodon.connection import AccountConnection, MastodonTiming, count_updates


class MastodonSource:
    name = "mastodon"

    def credential_problem(
        self, spec: StreamSpec, credentials: Mapping[str, Credential]
    ) -> str | None:
        credential = credentials.get(spec.credential)
        if credential is None:
            known = ", ".join(sorted(credentials)) or "none"
            return (f"credential {spec.credential!r} is not in the credentials file (known: "
                    f"{known}); add a table with mastodon_instance and mastodon_token there "
                    "and reload sfmd (sfmctl reload, or SIGHUP)")
        if not credential.has_mastodon:
            return (f"credential {spec.credential!r} has no Mastodon account; give it "
                    "mastodon_instance and mastodon_token and reload sfmd (sfmctl reload)")
        return None

    def counter(self, spec: StreamSpec) -> CountItems:
        return count_updates

    def connection(
        self, spec: StreamSpec, credential: Credential | None, sink: Sink, context: Context
    ) -> Connection:
        raise NotImplementedError("Mastodon streams run on their account's shared connection")

    async def retarget(
        self, connection: Connection, spec: StreamSpec, context: Context, grace: float
    ) -> None:
        raise NotImplementedError("Mastodon streams run on their account's shared connection")

    async def update(self, connection: Connection, spec: StreamSpec, context: Context) -> None:
        raise NotImplementedError("Mastodon streams run on their account's shared connection")

    def shared(self, credential: Credential, context: Context) -> AccountConnection:
        config = context.config
        return AccountConnection(
            credential,
            session=context.session,
            data_dir=config.daemon.data_dir,
            lock_dir=context.lock_dir,
            slot=mastodon_slot(credential.name),
            archive_factory=lambda spec: context.archive_factory(spec, count_updates),
            saved_point=context.saved_point,
            timing=MastodonTiming(
                idle_timeout=config.mastodon.idle_timeout,
                connect_timeout=config.timing.connect_timeout,
                fill_overlap=config.mastodon.fill_overlap,
                fill_max_pages=config.mastodon.fill_max_pages,
                backoff=BackoffPolicy.from_config(config.timing),
            ),
            fill_retry_wait=config.timing.http_backoff_start,
        )

    async def admit(
        self,
        spec: StreamSpec,
        old: StreamSpec | None,
        credential: Credential | None,
        context: Context,
        in_use: set[str],
    ) -> StreamSpec:
        return spec  # a tag or list the instance does not know is answered on the socket
