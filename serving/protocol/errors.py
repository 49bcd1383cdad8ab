"""One error hierarchy for the whole server, and the one table that maps it to HTTP and gRPC.

Edges catch :class:`TurnoutError` and translate with :data:`STATUS`; anything else that escapes
a model is wrapped as :class:`ModelFailed` by the data plane, so clients never see tracebacks.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    NOT_READY = "not_ready"
    OVERLOADED = "overloaded"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    MODEL_FAILED = "model_failed"
    INTERNAL = "internal"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"


# kind -> (HTTP status, gRPC status code name). gRPC names stay strings so this module needs
# no grpc import; the gRPC edge looks them up in grpc.StatusCode.
STATUS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID: (400, "INVALID_ARGUMENT"),
    ErrorKind.NOT_FOUND: (404, "NOT_FOUND"),
    ErrorKind.NOT_READY: (503, "UNAVAILABLE"),
    ErrorKind.OVERLOADED: (429, "RESOURCE_EXHAUSTED"),
    ErrorKind.TOO_LARGE: (413, "RESOURCE_EXHAUSTED"),
    ErrorKind.TIMEOUT: (504, "DEADLINE_EXCEEDED"),
    ErrorKind.MODEL_FAILED: (500, "INTERNAL"),
    ErrorKind.INTERNAL: (500, "INTERNAL"),
    ErrorKind.UNAUTHENTICATED: (401, "UNAUTHENTICATED"),
    ErrorKind.FORBIDDEN: (403, "PERMISSION_DENIED"),
}


# Longest message a client is sent: messages echo client-supplied names, and a 100 kB model
# name would otherwise travel back whole (over gRPC, in a header, breaking the stream).
MAX_MESSAGE_CHARS = 1024


def bounded_message(message: str) -> str:
    """``message`` cut to :data:`MAX_MESSAGE_CHARS`, saying how long it was: for every message
    that echoes what a client sent (names, ids, paths)."""
    if len(message) > MAX_MESSAGE_CHARS:
        return f"{message[:MAX_MESSAGE_CHARS]}... (cut from {len(message)} characters)"
    return message


class TurnoutError(Exception):
    """Base of every error a client may see; ``str(err)`` is the message sent to the client,
    cut to :data:`MAX_MESSAGE_CHARS`."""

    kind: ErrorKind = ErrorKind.INTERNAL
    # Seconds a client should wait before retrying (REST ``Retry-After``); None: no header.
    retry_after: int | None = None

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(bounded_message(message), *args)

    @property
    def http_status(self) -> int:
        return STATUS[self.kind][0]

    @property
    def grpc_code(self) -> str:
        return STATUS[self.kind][1]


class InvalidInput(TurnoutError):
    """The request is malformed or does not fit the model (400 / INVALID_ARGUMENT)."""

    kind = ErrorKind.INVALID


class ModelNotFound(TurnoutError):
    kind = ErrorKind.NOT_FOUND


class ModelNotReady(TurnoutError):
    kind = ErrorKind.NOT_READY


class Overloaded(TurnoutError):
    """Load shed (429 / RESOURCE_EXHAUSTED): retrying after a moment is the right response."""

    kind = ErrorKind.OVERLOADED
    retry_after = 1


class PayloadTooLarge(TurnoutError):
    kind = ErrorKind.TOO_LARGE


class DeadlineExceeded(TurnoutError):
    """An upstream or graph step did not answer within its timeout (504 / DEADLINE_EXCEEDED)."""

    kind = ErrorKind.TIMEOUT


class ModelFailed(TurnoutError):
    """The model raised while predicting: a server-side failure, reported without a traceback."""

    kind = ErrorKind.MODEL_FAILED


class Unauthenticated(TurnoutError):
    """No credential, or one that is not valid (401 / UNAUTHENTICATED)."""

    kind = ErrorKind.UNAUTHENTICATED


class PermissionDenied(TurnoutError):
    """A valid credential without the right to make this call (403 / PERMISSION_DENIED)."""

    kind = ErrorKind.FORBIDDEN


class ModelLoadError(Exception):
    """A model could not be loaded; kept as the model's reason, never sent as a request error."""
