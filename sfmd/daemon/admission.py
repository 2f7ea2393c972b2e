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

from sfmd.config import Config
from sfmd.credentials import Credential
from sfmd.registry import (
    Mode,
    Registry,
    StreamSpec,
    ValidationError,
    apply_patch,
    validate_stream,
)
from sfmd.sources import Context, source_of


class Admission:
    def __init__(
        self,
        config: Config,
        credentials: Callable[[], Mapping[str, Credential]],
        context: Callable[[], Context],
        in_use: Callable[[StreamSpec], set[str]],
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.context = context  # what sources need for their network checks
        self.in_use = in_use  # what the stream's shared connection already asks for

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
        """An existing stream's settings after a change, checked likewise."""
        spec = apply_patch(old, body, credentials=self.credentials().keys())
        self.fits(spec, registry, new=False)
        return spec

    def fits(self, spec: StreamSpec, registry: Registry, *, new: bool) -> None:
        """The checks that depend on the registry and the credentials file."""
        if new and spec.name in registry:
            raise ValidationError(
                "name_taken", "name", f"a stream named {spec.name!r} already exists; "
                "choose another name, or change that stream instead"
            )
        registry.check_credential_free(spec)
        problem = source_of(spec).credential_problem(spec, self.credentials())
        if problem:
            raise ValidationError("invalid", "credential", problem)

    # -- the network (without the lock) ------------------------------------------------------

    async def ask_network(self, spec: StreamSpec, old: StreamSpec | None) -> StreamSpec:
        """The source's network checks; the spec with what they looked up filled in."""
        credential = self.credentials().get(spec.credential)
        # Only a member of a shared connection has one asking for anything; working it out
        # reads every stream.
        in_use = self.in_use(spec) if spec.mode is Mode.SHARED else set()
        return await source_of(spec).admit(spec, old, credential, self.context(), in_use)
