"""The two kinds of error sfmd raises on purpose.

`SfmdError` is the base of every error sfmd raises on purpose: its message is a sentence a
person can act on, never a secret. `Refused` is the one shape of a refused request: the control
API answers it as `{"error": code, "message": message}` with its HTTP status, and a refused
change has changed nothing. Modules define their own subclasses (the registry's
`ValidationError`, the daemon's `NotFound`, users/lookup's `LookupFailed`...) so callers catch
what they expect, while the API needs to know only this class.
"""

from __future__ import annotations


class SfmdError(Exception):
    """Something sfmd expected might go wrong; the message says what to do about it."""


class Refused(SfmdError):
    """A request that was refused and changed nothing; `status` and `code` are the API's."""

    status = 422
    code = "invalid"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The sentence the API answers with."""
        return str(self)


class Unreachable(Refused):
    """A change needed an answer from a network's API and could not get one."""

    status = 502

    @property
    def message(self) -> str:
        return f"{self}; nothing was changed"
