"""azure-core transports over blobring: the Azure SDK for Python, unchanged.

>>> from azure.storage.blob import BlobServiceClient
>>> from blobring.azure import BlobringTransport
>>> svc = BlobServiceClient.from_connection_string(conn_str, transport=BlobringTransport(),
...                                                **BlobringTransport.client_options())

Every request the SDK builds and signs (SharedKey, SAS or bearer) is sent as it is, through
blobringd instead of a socket: the host checks the same signature a real endpoint would.
One request carries at most half the client's arena (32 MiB less headroom with the daemon's
default 64 MiB ``--arena-size``), so :meth:`BlobringTransport.client_options` gives the
SDK's size knobs that keep every request under it (4 MiB blocks and ranged reads, as the SDK
uses for large transfers anyway). A download is a series of ranged reads, each delivered in
blocks from one zero-copy buffer: a large blob is never in memory twice.

Failures map to azure-core's retry classes: ``ServiceRequestError`` when the request never
reached the daemon, ``ServiceResponseError`` when it was in flight (daemon restarted,
deadline passed).
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator
from urllib.parse import urlsplit

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import AsyncHttpTransport, HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.core.utils import case_insensitive_dict

from . import _blobring
from ._threads import run
from .exceptions import DaemonUnavailable, DeadlineExceeded

__all__ = ["AsyncBlobringTransport", "BlobringTransport"]

_BLOCK = 4 << 20


def _body(request: Any) -> bytes | memoryview | None:
    """The request body as one buffer (the SDK sends blocks and small documents)."""
    data = getattr(request, "content", None)
    if data is None:
        data = getattr(request, "data", None)
    if data is None:
        data = getattr(request, "body", None)
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if hasattr(data, "read"):
        return data.read()
    return b"".join(bytes(c) for c in data)


def _split(request: Any) -> tuple[str, list[tuple[str, str]]]:
    u = urlsplit(request.url)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    headers = [(k, str(v)) for k, v in request.headers.items()]
    if not any(k.lower() == "host" for k, _ in headers):
        headers.append(("Host", u.netloc))
    return target, headers


def _send(client: _blobring.Client, request: Any) -> tuple[int, str, list, Any]:
    target, headers = _split(request)
    try:
        return client.send_raw(request.method, target, headers, _body(request))
    except DaemonUnavailable as e:
        # Connection refused before anything was sent, or reset in flight.
        cls = ServiceRequestError if "cannot connect" in str(e) else ServiceResponseError
        raise cls(str(e), error=e) from e
    except DeadlineExceeded as e:
        raise ServiceResponseError(str(e), error=e) from e


def _chunks(body: Any, block: int) -> Iterator[bytes]:
    mv = memoryview(body)
    for at in range(0, len(mv), block):
        yield bytes(mv[at : at + block])


class _Blocks:
    """The body in blocks (what azure-core's stream download generators are: an iterator
    that also takes attributes, e.g. the SDK's ``properties``); :class:`_Stream` and
    :class:`_AsyncStream` iterate it."""

    def __init__(self, pipeline: Any, response: Any, **kwargs: Any) -> None:
        self.response = response
        self._len = self.content_length = len(response.internal_response)
        self._it = _chunks(response.internal_response, response._block_size)

    def __len__(self) -> int:
        return self._len


class _Stream(_Blocks):
    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> bytes:
        return next(self._it)


def _response_args(
    request: Any, status: int, reason: str, headers: list, body: Any, stream: type
) -> dict:
    """azure-core's response arguments for a blobring answer (sync and async alike)."""
    h = case_insensitive_dict(headers)
    return {
        "request": request,
        "internal_response": body,
        "block_size": _BLOCK,
        "status_code": status,
        "reason": reason,
        "headers": h,
        "content_type": h.get("content-type"),
        "stream_download_generator": stream,
    }


class BlobringTransportResponse(HttpResponseImpl):
    """An azure-core response whose body is a blobring buffer (zero copy until read)."""

    def __init__(self, request: Any, status: int, reason: str, headers: list, body: Any):
        super().__init__(**_response_args(request, status, reason, headers, body, _Stream))

    def read(self) -> bytes:
        if self._content is None:
            self._content = bytes(self._internal_response)
        self._is_stream_consumed = True
        return self._content

    def body(self) -> bytes:
        return self.read()

    def close(self) -> None:
        self._is_closed = True


class BlobringTransport(HttpTransport):
    """A synchronous azure-core ``HttpTransport`` that sends every request through blobringd.

    Parameters are those of :func:`blobring.connect` (socket, connection_string is not
    needed: the SDK signs), or an existing ``client``.
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        timeout: float | None = None,
        client: _blobring.Client | None = None,
    ) -> None:
        self._socket = socket
        self._timeout = timeout
        self._client = client

    @staticmethod
    def client_options() -> dict[str, int]:
        """``BlobServiceClient`` keyword arguments that keep each request within one
        blobring request (4 MiB blocks and ranged reads)."""
        return {
            "max_single_put_size": _BLOCK,
            "max_block_size": _BLOCK,
            "max_single_get_size": _BLOCK,
            "max_chunk_get_size": _BLOCK,
        }

    @property
    def client(self) -> _blobring.Client:
        if self._client is None:
            try:
                self._client = _blobring.connect(self._socket, timeout=self._timeout)
            except DaemonUnavailable as e:
                raise ServiceRequestError(str(e), error=e) from e
        return self._client

    def open(self) -> None:
        self.client  # noqa: B018 - connects

    def close(self) -> None:
        self._client = None

    def __enter__(self) -> BlobringTransport:
        self.open()
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def send(self, request: Any, **kwargs: Any) -> BlobringTransportResponse:
        status, reason, headers, body = _send(self.client, request)
        r = BlobringTransportResponse(request, status, reason, headers, body)
        if not kwargs.get("stream", False):
            r.read()  # as other transports do: a non-streamed answer is loaded
        return r


class AsyncBlobringTransportResponse(AsyncHttpResponseImpl):
    """The asyncio twin of :class:`BlobringTransportResponse`."""

    def __init__(self, request: Any, status: int, reason: str, headers: list, body: Any):
        super().__init__(**_response_args(request, status, reason, headers, body, _AsyncStream))

    async def read(self) -> bytes:
        if self._content is None:
            self._content = bytes(self._internal_response)
        self._is_stream_consumed = True
        return self._content

    def body(self) -> bytes:
        if self._content is None:
            self._content = bytes(self._internal_response)
        return self._content

    async def close(self) -> None:
        self._is_closed = True


class _AsyncStream(_Blocks):
    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class AsyncBlobringTransport(AsyncHttpTransport):
    """An asyncio azure-core ``AsyncHttpTransport`` over blobringd (for
    ``azure.storage.blob.aio`` and adlfs)."""

    def __init__(
        self,
        socket: str | None = None,
        *,
        timeout: float | None = None,
        client: _blobring.Client | None = None,
    ) -> None:
        """Takes the arguments of :class:`BlobringTransport` (whose connection it shares)."""
        self._sync = BlobringTransport(socket, timeout=timeout, client=client)

    client_options = staticmethod(BlobringTransport.client_options)

    async def open(self) -> None:
        await run(self._sync.open)

    async def close(self) -> None:
        self._sync.close()

    async def __aenter__(self) -> AsyncBlobringTransport:
        await self.open()
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()

    async def send(self, request: Any, **kwargs: Any) -> AsyncBlobringTransportResponse:
        client = await run(lambda: self._sync.client)
        status, reason, headers, body = await run(_send, client, request)
        r = AsyncBlobringTransportResponse(request, status, reason, headers, body)
        if not kwargs.get("stream", False):
            await r.read()
        return r

    async def sleep(self, duration: float) -> None:
        await asyncio.sleep(duration)
