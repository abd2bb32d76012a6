"""Exceptions raised by blobring.

Each subclasses :class:`BlobringError` and the built-in exception a Python user already
catches, so ``except FileNotFoundError`` works for a missing blob and ``except
ConnectionError`` for an unreachable daemon. Service errors carry the HTTP ``status`` and the
Azure error ``code`` (``None`` for errors that did not come from the service).
"""

from __future__ import annotations

__all__ = [
    "BlobringError",
    "BlobNotFound",
    "ContainerNotFound",
    "BlobExists",
    "ConditionNotMet",
    "AccessDenied",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "InvalidRequest",
    "IntegrityError",
    "ServiceError",
]


class BlobringError(Exception):
    """Base class of every blobring error."""

    #: HTTP status of a service error (404, 409, 412, ...), else ``None``.
    status: int | None = None
    #: Azure error code (``BlobNotFound``, ``ConditionNotMet``, ...), else ``None``.
    code: str | None = None


class BlobNotFound(BlobringError, FileNotFoundError):
    """The blob (or its container) does not exist (HTTP 404)."""


class ContainerNotFound(BlobNotFound):
    """The container does not exist (HTTP 404 ``ContainerNotFound``): create it first."""


class BlobExists(BlobringError, FileExistsError):
    """A create-only write met an existing blob or container (HTTP 409)."""


class ConditionNotMet(BlobringError):
    """An ``if_match`` / create-only condition failed (HTTP 412): the blob changed."""


class AccessDenied(BlobringError, PermissionError):
    """The account's credentials do not allow the request (HTTP 403)."""


class DaemonUnavailable(BlobringError, ConnectionError):
    """blobringd cannot be reached, or stopped while a request was in flight.

    The message names the socket tried and how to start a local stack (``blobring up``).
    """


class DeadlineExceeded(BlobringError, TimeoutError):
    """A request did not complete within its deadline (``blobring.connect(timeout=...)``)."""


class InvalidRequest(BlobringError, ValueError):
    """The request was refused as malformed (bad name, range, or size; HTTP 400/416)."""


class IntegrityError(BlobringError):
    """Transferred bytes did not match their checksum."""


class ServiceError(BlobringError):
    """Any other error status from the service (``status`` and ``code`` say which)."""
