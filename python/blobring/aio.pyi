"""Type stubs of blobring.aio (its methods are generated from blobring.Client's)."""

from collections.abc import Buffer, Sequence
from os import PathLike

from ._blobring import Bytes, Client, Listing, Progress, Properties

__all__ = ["AsyncClient", "connect"]

class AsyncClient:
    """A :class:`blobring.Client` whose calls are awaitable."""

    sync: Client
    def __init__(self, client: Client) -> None: ...
    @property
    def socket(self) -> str: ...
    @property
    def arena_len(self) -> int: ...
    async def arena_free(self) -> int: ...
    async def region_span(self) -> tuple[int, int]: ...
    async def create_container(self, container: str, *, exist_ok: bool = False) -> None: ...
    async def delete_container(self, container: str, *, missing_ok: bool = False) -> None: ...
    async def list_containers(self, prefix: str | None = None) -> list[str]: ...
    async def get(
        self,
        container: str,
        name: str,
        range: tuple[int, int] | None = None,
        *,
        if_match: str | None = None,
    ) -> Bytes: ...
    async def get_ranges(
        self, container: str, name: str, ranges: Sequence[tuple[int, int]]
    ) -> list[Bytes]: ...
    async def head(self, container: str, name: str) -> Properties: ...
    async def list(
        self,
        container: str,
        prefix: str | None = None,
        delimiter: str | None = None,
        *,
        max_results: int | None = None,
    ) -> Listing: ...
    async def download_file(
        self,
        container: str,
        name: str,
        path: str | PathLike[str],
        *,
        progress: Progress | None = None,
        chunk_size: int | None = None,
        parallelism: int | None = None,
    ) -> int: ...
    async def put(
        self,
        container: str,
        name: str,
        data: Buffer,
        *,
        overwrite: bool = True,
        if_match: str | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str: ...
    async def upload_file(
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
    ) -> str: ...
    async def delete(self, container: str, name: str, *, if_match: str | None = None) -> None: ...
    async def copy(
        self,
        src_container: str,
        src_name: str,
        container: str,
        name: str,
        *,
        overwrite: bool = True,
    ) -> str: ...
    async def set_metadata(
        self, container: str, name: str, metadata: dict[str, str], *, if_match: str | None = None
    ) -> str: ...
    async def put_block(self, container: str, name: str, block_id: str, data: Buffer) -> None: ...
    async def commit_blocks(
        self,
        container: str,
        name: str,
        block_ids: Sequence[str],
        *,
        overwrite: bool = True,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str: ...

async def connect(
    socket: str | PathLike[str] | None = None,
    connection_string: str | None = None,
    *,
    timeout: float | None = None,
) -> AsyncClient: ...
