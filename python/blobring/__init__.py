"""blobring: Azure Blob storage through the machine's blobringd.

Requests travel over shared-memory queues to ``blobringd`` instead of HTTP; reads land in
shared memory and are handed to Python without a copy.

>>> import blobring
>>> c = blobring.connect()                 # BLOBRING_SOCKET, AZURE_STORAGE_CONNECTION_STRING
>>> c.create_container("data", exist_ok=True)
>>> c.put("data", "hello.txt", b"hello")   # doctest: +ELLIPSIS
'"0x...'
>>> bytes(c.get("data", "hello.txt"))
b'hello'

The fsspec filesystem (``blobring://container/path``) is :mod:`blobring.fsspec`; pandas,
pyarrow, Dask and everything else built on fsspec find it by its protocol.
"""

from __future__ import annotations

from ._blobring import (
    BlobInfo,
    Bytes,
    Client,
    Listing,
    Properties,
    Writer,
    __version__,
    connect,
)
from .exceptions import (
    AccessDenied,
    BlobExists,
    BlobNotFound,
    BlobringError,
    ConditionNotMet,
    ContainerNotFound,
    DaemonUnavailable,
    DeadlineExceeded,
    IntegrityError,
    InvalidRequest,
    ServiceError,
)

__all__ = [
    "AccessDenied",
    "BlobExists",
    "BlobInfo",
    "BlobNotFound",
    "BlobringError",
    "Bytes",
    "Client",
    "ConditionNotMet",
    "ContainerNotFound",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "IntegrityError",
    "InvalidRequest",
    "Listing",
    "Properties",
    "ServiceError",
    "Writer",
    "__version__",
    "connect",
]
