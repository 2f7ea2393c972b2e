"""Twitter as a `Source`: v1.1 and v2 streams, the v2 filters' shared connection, and the
network checks a change needs (users/lookup for `people`, the rules API's dry run)."""

from __future__ import annotations

from collections.abc import Mapping

from sfmd.archive import CountItems
from sfmd.credentials import Credential
from sfmd.logs import get_logger
from sfmd.registry import Mode, StreamSpec, ValidationError, with_people_ids
from sfmd.sources.base import Context, Sink
from sfmd.sources.twitter import access
from sfmd.sources.twitter.multiplex import FilterGroup, count_routed
from sfmd.sources.twitter.rules import RulesApi, RulesRejected
from sfmd.sources.twitter.stream import Dialect, Stream, StreamTarget, StreamTiming
from sfmd.sources.twitter.users import lookup_ids
from sfmd.sources.twitter.v1 import V1
from sfmd.sources.twitter.v2 import V2, stream_params


class TwitterSource:
    name = "twitter"

    def credential_problem(
        self, spec: StreamSpec, credentials: Mapping[str, Credential]
    ) -> str | None:
        return access.credential_problem(spec, credentials)

    def counter(self, spec: StreamSpec) -> CountItems:
        if spec.mode is Mode.SHARED:
            return count_routed
        return V2.count if spec.api == "v2" else V1.count

    # -- connections -------------------------------------------------------------------------

    def connection(
        self, spec: StreamSpec, credential: Credential | None, sink: Sink, context: Context
    ) -> Stream:
        assert credential is not None, "credential_problem() refuses a Twitter stream without"
        return Stream(
            self._target(spec, credential, context),
            self._dialect(spec, context),
            session=context.session,
            sink=sink,
            timing=StreamTiming.from_config(context.config.timing),
        )

    async def retarget(
        self, connection: Stream, spec: StreamSpec, context: Context, grace: float
    ) -> None:
        target = self._target(spec, connection.target.credential, context)
        await connection.retarget(target, grace=grace)

    async def update(self, connection: Stream, spec: StreamSpec, context: Context) -> None:
        """Nothing: what a Twitter connection sends is all in its `connection_key`."""

    def shared(self, credential: Credential, context: Context) -> FilterGroup:
        return FilterGroup(
            credential, context.config, context.session, context.lock_dir,
            archive_factory=lambda spec: context.archive_factory(spec, count_routed),
            stream_timing=StreamTiming.from_config(context.config.timing),
        )

    @staticmethod
    def _dialect(spec: StreamSpec, context: Context) -> Dialect:
        twitter = context.config.twitter
        if spec.api == "v2":
            return V2(twitter.api_url)
        return V1(twitter.stream_url, delimited=twitter.delimited)

    @staticmethod
    def _target(spec: StreamSpec, credential: Credential, context: Context) -> StreamTarget:
        if spec.api == "v2":  # the v2 sample: what each message carries is the config's
            params = stream_params(context.config.twitter)
        else:
            params = spec.wire_params()
        return StreamTarget(spec.name, spec.kind, params, credential)

    # -- admission ---------------------------------------------------------------------------

    async def admit(
        self,
        spec: StreamSpec,
        old: StreamSpec | None,
        credential: Credential | None,
        context: Context,
        in_use: set[str],
    ) -> StreamSpec:
        assert credential is not None, "credential_problem() refuses a Twitter stream without"
        await self._dry_run(spec, credential, context, in_use)
        if old is None or spec.people != old.people:
            spec = await self._resolve_people(spec, credential, context)
        return spec

    @staticmethod
    async def _dry_run(
        spec: StreamSpec, credential: Credential, context: Context, in_use: set[str]
    ) -> None:
        """New v2 rule values must pass the rules API's dry run before they are stored."""
        if spec.mode is not Mode.SHARED or not spec.active:
            return
        new_values = [v for v in spec.rules if v not in in_use]
        if not new_values:
            return
        config = context.config
        api = RulesApi(context.session, config.twitter.api_url, credential,
                       timeout=config.timing.connect_timeout)
        try:
            await api.check(new_values)
        except RulesRejected as e:
            raise ValidationError(
                "invalid", "rules", f"the API refused: {'; '.join(e.reasons)}"
            ) from None

    @staticmethod
    async def _resolve_people(
        spec: StreamSpec, credential: Credential, context: Context
    ) -> StreamSpec:
        if not spec.people:
            return with_people_ids(spec, {})
        ids = await lookup_ids(
            context.session,
            context.config.twitter.rest_url,
            credential,
            spec.people,
            request_timeout=context.config.timing.connect_timeout,
        )
        resolved = with_people_ids(spec, ids)
        if resolved.people_unresolved:
            get_logger(stream=spec.name).warning(
                "people_unresolved", names=resolved.people_unresolved
            )
        return resolved
