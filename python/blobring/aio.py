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

The methods are declared from the native ones (:class:`_Awaitable`), so type checkers see
each with the signature the stubs give :class:`blobring.Client`'s, returning an awaitable.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from os import PathLike
from types import MethodType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from . import _blobring
from ._threads import run

__all__ = ["AsyncClient", "connect"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _Awaitable(Generic[_P, _R]):
    """A method of :class:`AsyncClient`: the :class:`blobring.Client` method of the same name
    (``native``), run in a worker thread and awaited; same arguments, same result."""

    def __init__(self, native: Callable[Concatenate[_blobring.Client, _P], _R]) -> None:
        self._native = native

    def __set_name__(self, owner: type, name: str) -> None:
        async def method(self: AsyncClient, /, *args: Any, **kwargs: Any) -> Any:
            return await run(getattr(self.sync, name), *args, **kwargs)

        method.__name__ = name
        method.__qualname__ = f"{owner.__name__}.{name}"
        doc = self._native.__doc__ or ""
        method.__doc__ = f"Awaitable :meth:`blobring.Client.{name}`.\n\n{doc}"
        self._method = method

    @overload
    def __get__(
        self, client: None, owner: type | None = None
    ) -> Callable[Concatenate[AsyncClient, _P], Coroutine[Any, Any, _R]]: ...
    @overload
    def __get__(
        self, client: AsyncClient, owner: type | None = None
    ) -> Callable[_P, Coroutine[Any, Any, _R]]: ...
    def __get__(self, client: AsyncClient | None, owner: type | None = None) -> Any:
        return self._method if client is None else MethodType(self._method, client)


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

    arena_free = _Awaitable(_blobring.Client.arena_free)
    region_span = _Awaitable(_blobring.Client.region_span)
    create_container = _Awaitable(_blobring.Client.create_container)
    delete_container = _Awaitable(_blobring.Client.delete_container)
    list_containers = _Awaitable(_blobring.Client.list_containers)
    get = _Awaitable(_blobring.Client.get)
    get_ranges = _Awaitable(_blobring.Client.get_ranges)
    head = _Awaitable(_blobring.Client.head)
    list = _Awaitable(_blobring.Client.list)
    download_file = _Awaitable(_blobring.Client.download_file)
    put = _Awaitable(_blobring.Client.put)
    upload_file = _Awaitable(_blobring.Client.upload_file)
    delete = _Awaitable(_blobring.Client.delete)
    copy = _Awaitable(_blobring.Client.copy)
    set_metadata = _Awaitable(_blobring.Client.set_metadata)
    put_block = _Awaitable(_blobring.Client.put_block)
    commit_blocks = _Awaitable(_blobring.Client.commit_blocks)


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
