"""What an operator asked wrongly, in a few kinds the API maps to HTTP statuses."""

from __future__ import annotations

from hookdrop.errors import HookdropError


class ControlError(HookdropError):
    """The operator asked for something that cannot be done; the message says why."""


class UnknownFile(ControlError):
    def __init__(self, file_id: int) -> None:
        super().__init__(f"no file with id {file_id}")
        self.file_id = file_id


class Conflict(ControlError):
    """The file is not in a state where this action applies."""


class BadRequest(ControlError, ValueError):
    """An argument is malformed (a file name, a status)."""


class TooLarge(ControlError):
    """An upload went past the size limit."""
