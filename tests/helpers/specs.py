"""Stream specs for tests: a valid filter body, and validation that must accept or refuse."""

from __future__ import annotations

from typing import Any

import pytest

from sfmd.registry import StreamSpec, ValidationError, validate_stream

#: The credential names every spec here is validated against.
CREDS = ["default", "research"]


def filt(**extra: Any) -> dict[str, Any]:
    return {"name": "news", "kind": "filter", "track": ["news"], **extra}


def ok(data: dict[str, Any], **kwargs: Any) -> StreamSpec:
    kwargs.setdefault("credentials", CREDS)
    kwargs.setdefault("default_credential", "default")
    return validate_stream(data, **kwargs)


def refused(data: object, code: str = "invalid", **kwargs: Any) -> ValidationError:
    kwargs.setdefault("credentials", CREDS)
    kwargs.setdefault("default_credential", "default")
    with pytest.raises(ValidationError) as caught:
        validate_stream(data, **kwargs)
    assert caught.value.code == code, caught.value.message
    assert str(caught.value) == caught.value.message
    return caught.value


def ids(n: int, start: int = 1) -> list[str]:
    return [str(i) for i in range(start, start + n)]
