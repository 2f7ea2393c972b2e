"""The desired state: every stream's settings, validated, in one atomically written file.

`fields` holds the rules a setting must meet (and renders them as JSON Schema), `spec` one
stream's checked settings and what follows from them, `store` the file.
"""

from sfmd.registry.fields import FIELDS, MAX_FOLLOW, ValidationError, json_schema
from sfmd.registry.spec import (
    Mode,
    StreamSpec,
    apply_patch,
    check_credential,
    mastodon_slot,
    slot_of,
    validate_stream,
    with_people_ids,
)
from sfmd.registry.store import FILE_NAME, Registry, RegistryError

__all__ = [
    "FIELDS",
    "FILE_NAME",
    "MAX_FOLLOW",
    "Mode",
    "Registry",
    "RegistryError",
    "StreamSpec",
    "ValidationError",
    "apply_patch",
    "check_credential",
    "json_schema",
    "mastodon_slot",
    "slot_of",
    "validate_stream",
    "with_people_ids",
]
