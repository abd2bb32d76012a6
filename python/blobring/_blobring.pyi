"""Type stubs of the native module (python/src/lib.rs)."""

from collections.abc import Buffer, Callable, Sequence
from os import PathLike
from types import TracebackType
from typing import Any, final

__version__: str

Progress = Callable[[int, int], object]

@final
class Bytes(Buffer):
    """A read-only buffer; a read's is the shared-memory arena itself (zero copy).

    ``memoryview(b)``, ``numpy.frombuffer(b)`` and ``pyarrow.py_buffer(b)`` see the same
    memory; ``bytes(b)`` copies. The arena space returns when the last reference goes.
    """

    def __init__(self, buf: Buffer = b"") -> None: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __len__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...
    def __getitem__(self, key: int | slice) -> Any: ...
    def __contains__(self, item: Buffer) -> bool: ...
    def to_bytes(self) -> bytes:
        """A copy as ``bytes``."""

@final
class Properties:
    """Properties of a blob (``Client.head``)."""

    size: int
    etag: str
    last_modified: str
    content_type: str | None
    content_md5: str | None
    metadata: dict[str, str]

@final
class BlobInfo:
    """One blob of a listing."""

    name: str
    size: int
    etag: str
    last_modified: str

@final
class Listing:
    """The blobs and (with a delimiter) the common prefixes of ``Client.list``."""

    blobs: list[BlobInfo]
    prefixes: list[str]

@final
class Writer:
    """A blob being written (``Client.open_writer``); commit with ``close``."""

    @property
    def written(self) -> int:
        """Bytes written so far."""
    def write(self, data: Buffer) -> int:
        """Appends ``data`` (copied); returns its length."""
    def close(self) -> str | None:
        """Commits the blob; returns its ETag (``None`` if already closed)."""
    def abort(self) -> None:
        """Discards what was written."""
    def __enter__(self) -> Writer: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        _exc: BaseException | None = None,
        _tb: TracebackType | None = None,
    ) -> bool: ...

@final
class Client:
    """A connection to blobringd and a storage account. Thread-safe; the GIL is released
    while a call waits."""

    @property
    def socket(self) -> str:
        """The daemon socket."""
    @property
    def account(self) -> str:
        """The storage account name."""
    @property
    def arena_len(self) -> int:
        """Bytes of the shared-memory data arena."""
    def arena_free(self) -> int:
        """Bytes of the arena free right now."""
    def region_span(self) -> tuple[int, int]:
        """``(address, length)`` of the shared memory mapped for this client."""
    def create_container(self, container: str, *, exist_ok: bool = False) -> None:
        """Creates a container (``BlobExists`` if present, unless ``exist_ok``)."""
    def delete_container(self, container: str, *, missing_ok: bool = False) -> None:
        """Deletes a container and its blobs (``ContainerNotFound`` unless ``missing_ok``)."""
    def list_containers(self, prefix: str | None = None) -> list[str]:
        """Container names (starting with ``prefix``)."""
    def get(
        self,
        container: str,
        name: str,
        range: tuple[int, int] | None = None,
        *,
        if_match: str | None = None,
    ) -> Bytes:
        """A blob, or its bytes ``[start, end)``, as a zero-copy buffer."""
    def get_ranges(
        self, container: str, name: str, ranges: Sequence[tuple[int, int]]
    ) -> list[Bytes]:
        """Several ranges, all in flight at once, adjacent ones coalesced; in order."""
    def head(self, container: str, name: str) -> Properties:
        """The blob's properties."""
    def list(
        self,
        container: str,
        prefix: str | None = None,
        delimiter: str | None = None,
        *,
        max_results: int | None = None,
    ) -> Listing:
        """Blobs (and common prefixes with a delimiter) under ``prefix``."""
    def download_file(
        self,
        container: str,
        name: str,
        path: str | PathLike[str],
        *,
        progress: Progress | None = None,
        chunk_size: int | None = None,
        parallelism: int | None = None,
    ) -> int:
        """Striped download into a local file; returns the bytes written."""
    def put(
        self,
        container: str,
        name: str,
        data: Buffer,
        *,
        overwrite: bool = True,
        if_match: str | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Writes a block blob; returns its ETag."""
    def upload_file(
        self,
        container: str,
        name: str,
        path: str | PathLike[str],
        *,
        overwrite: bool = True,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        progress: Progress | None = None,
        chunk_size: int | None = None,
        parallelism: int | None = None,
    ) -> str:
        """Striped upload of a local file; returns the ETag."""
    def open_writer(
        self,
        container: str,
        name: str,
        *,
        overwrite: bool = True,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Writer:
        """A streaming writer committed on ``close``."""
    def delete(self, container: str, name: str, *, if_match: str | None = None) -> None:
        """Deletes a blob."""
    def copy(
        self,
        src_container: str,
        src_name: str,
        container: str,
        name: str,
        *,
        overwrite: bool = True,
    ) -> str:
        """Server-side copy; returns the copy status."""
    def set_metadata(
        self,
        container: str,
        name: str,
        metadata: dict[str, str],
        *,
        if_match: str | None = None,
    ) -> str:
        """Replaces the blob's metadata; returns the new ETag."""
    def send_raw(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: Buffer | None = None,
        *,
        recv: int | None = None,
    ) -> tuple[int, str, list[tuple[str, str]], Bytes]:
        """One signed HTTP/1.1 request sent as given (the azure-core transport's path)."""
    def put_block(
        self, container: str, name: str, block_id: str, data: Buffer
    ) -> None:
        """Stages one block (Base64 ``block_id``)."""
    def commit_blocks(
        self,
        container: str,
        name: str,
        block_ids: Sequence[str],
        *,
        overwrite: bool = True,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Commits staged blocks in order; returns the ETag."""

def connect(
    socket: str | PathLike[str] | None = None,
    connection_string: str | None = None,
    *,
    timeout: float | None = None,
) -> Client:
    """Connects to blobringd (``BLOBRING_SOCKET``) for an account
    (``AZURE_STORAGE_CONNECTION_STRING``, else the emulator account)."""
