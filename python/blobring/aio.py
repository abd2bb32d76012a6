"""The asyncio flavour of the native API: ``await blobring.aio.connect()``.

:class:`AsyncClient` has the methods of :class:`blobring.Client` as coroutines. Each runs the
native call in a worker thread with the GIL released, so many awaits overlap (and every
request of a ``gather`` is in flight at once, up to the arena's and the pool's size: 64).

>>> import asyncio, blobring.aio
>>> async def main():
...     c = await blobring.aio.connect()
...     await c.create_container("data", exist_ok=True)
...     await c.put("data", "x", b"hello")
...     return [bytes(b) for b in await asyncio.gather(*(c.get("data", "x") for _ in range(8)))]
"""

from __future__ import annotations

from os import PathLike
from typing import Any

from . import _blobring
from ._threads import run

__all__ = ["AsyncClient", "connect"]

_METHODS = (
    "arena_free",
    "region_span",
    "create_container",
    "delete_container",
    "list_containers",
    "get",
    "get_ranges",
    "head",
    "list",
    "download_file",
    "put",
    "upload_file",
    "delete",
    "copy",
    "set_metadata",
    "put_block",
    "commit_blocks",
)


class AsyncClient:
    """A :class:`blobring.Client` whose calls are awaitable."""

    def __init__(self, client: _blobring.Client) -> None:
        #: The synchronous client underneath (shared, thread-safe).
        self.sync = client

    def __repr__(self) -> str:
        return f"blobring.aio.AsyncClient({self.sync!r})"

    @property
    def socket(self) -> str:
        """The daemon socket."""
        return self.sync.socket

    @property
    def arena_len(self) -> int:
        """Bytes of the shared-memory data arena."""
        return self.sync.arena_len


def _wrap(name: str) -> Any:
    native = getattr(_blobring.Client, name)

    async def method(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return await run(getattr(self.sync, name), *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"AsyncClient.{name}"
    method.__doc__ = f"Awaitable :meth:`blobring.Client.{name}`.\n\n{native.__doc__ or ''}"
    return method


for _name in _METHODS:
    setattr(AsyncClient, _name, _wrap(_name))


async def connect(
    socket: str | PathLike[str] | None = None,
    connection_string: str | None = None,
    *,
    timeout: float | None = None,
) -> AsyncClient:
    """Awaitable :func:`blobring.connect`."""
    return AsyncClient(
        await run(_blobring.connect, socket, connection_string, timeout=timeout)
    )
