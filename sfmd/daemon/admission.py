"""Admission: every check a change must pass before it is written, in one order.

1. The body's settings (`registry.validate_stream` / `apply_patch`): types, rules, limits.
2. The registry: the name is free; the connection slot is free (`check_credential_free`).
3. The credential can serve the stream (`credential_problem`).
4. The network, only when the settings need it: users/lookup for new `people`, the v2 rules
   API's dry run for rule values no stream holds yet.

Steps 1-3 are cheap and run again under the daemon's lock when the change is applied; step 4
runs without the lock, so a slow answer from Twitter never delays a change to another stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from sfmd.config import Config
from sfmd.credentials import Credential
from sfmd.logs import get_logger
from sfmd.registry import (
    Mode,
    Registry,
    StreamSpec,
    ValidationError,
    apply_patch,
    validate_stream,
    with_people_ids,
)
from sfmd.sources.twitter.access import credential_problem
from sfmd.sources.twitter.rules import RulesApi, RulesRejected
from sfmd.sources.twitter.users import lookup_ids


class Admission:
    def __init__(
        self,
        config: Config,
        credentials: Callable[[], Mapping[str, Credential]],
        session: Callable[[], aiohttp.ClientSession],
        rules_in_use: Callable[[str], set[str]],
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.session = session
        self.rules_in_use = rules_in_use

    # -- the cheap checks (again under the lock) ---------------------------------------------

    def new(self, body: object, registry: Registry) -> StreamSpec:
        """A new stream's settings, checked against the body's rules and the registry."""
        spec = validate_stream(
            body,
            credentials=self.credentials().keys(),
            default_credential=self.config.twitter.default_credential,
        )
        self.fits(spec, registry, new=True)
        return spec

    def changed(self, old: StreamSpec, body: object, registry: Registry) -> StreamSpec:
        """An existing stream's settings after a PATCH, checked likewise."""
        spec = apply_patch(old, body, credentials=self.credentials().keys())
        self.fits(spec, registry, new=False)
        return spec

    def fits(self, spec: StreamSpec, registry: Registry, *, new: bool) -> None:
        """The checks that depend on the registry and the credentials file."""
        if new and spec.name in registry:
            raise ValidationError(
                "name_taken", "name", f"a stream named {spec.name!r} already exists; "
                "choose another name or change that stream with PATCH"
            )
        registry.check_credential_free(spec)
        problem = credential_problem(spec, self.credentials())
        if problem:
            raise ValidationError("invalid", "credential", problem)

    # -- the network (without the lock) ------------------------------------------------------

    async def ask_network(self, spec: StreamSpec, old: StreamSpec | None) -> StreamSpec:
        """Run the dry run and users/lookup `spec` needs; the spec with people resolved."""
        await self._dry_run(spec)
        if old is None or spec.people != old.people:
            spec = await self._resolve_people(spec)
        return spec

    async def _dry_run(self, spec: StreamSpec) -> None:
        """New v2 rule values must pass the rules API's dry run before they are stored."""
        if spec.mode is not Mode.SHARED or not spec.active:
            return
        in_use = self.rules_in_use(spec.credential)
        new_values = [v for v in spec.rules if v not in in_use]
        if not new_values:
            return
        api = RulesApi(self.session(), self.config.twitter.api_url,
                       self.credentials()[spec.credential],
                       timeout=self.config.timing.connect_timeout)
        try:
            await api.check(new_values)
        except RulesRejected as e:
            raise ValidationError(
                "invalid", "rules", f"the API refused: {'; '.join(e.reasons)}"
            ) from None

    async def _resolve_people(self, spec: StreamSpec) -> StreamSpec:
        if not spec.people:
            return with_people_ids(spec, {})
        ids = await lookup_ids(
            self.session(),
            self.config.twitter.rest_url,
            self.credentials()[spec.credential],
            spec.people,
            request_timeout=self.config.timing.connect_timeout,
        )
        resolved = with_people_ids(spec, ids)
        if resolved.people_unresolved:
            get_logger(stream=spec.name).warning(
                "people_unresolved", names=resolved.people_unresolved
            )
        return resolved
