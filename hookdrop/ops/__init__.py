"""What an operator can do and see, shared by the HTTP API and the CLI."""

from hookdrop.ops.actions import DEFAULT_REPLAY, Control, check_statuses
from hookdrop.ops.dropbox import InboxWriter, check_name, send, send_chunks
from hookdrop.ops.errors import BadRequest, Conflict, ControlError, TooLarge, UnknownFile
from hookdrop.ops.rates import RateTracker
from hookdrop.ops.results import result_csv
from hookdrop.ops.views import jsonable, summary

__all__ = [
    "DEFAULT_REPLAY",
    "BadRequest",
    "Conflict",
    "Control",
    "ControlError",
    "InboxWriter",
    "RateTracker",
    "TooLarge",
    "UnknownFile",
    "check_name",
    "check_statuses",
    "jsonable",
    "result_csv",
    "send",
    "send_chunks",
    "summary",
]
