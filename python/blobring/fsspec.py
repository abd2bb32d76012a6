"""fsspec filesystem for blobring: ``blobring://container/path``.

Registered through the ``fsspec.specs`` entry point, so ``fsspec.filesystem("blobring")``,
``pandas.read_parquet("blobring://data/t.parquet")``, Dask and everything else built on fsspec
find it in every process once the package is installed.

Paths are ``container/blob/name``; the root lists containers, a container or any prefix ending
at a ``/`` is a directory (directories exist only while blobs are under them, as in every
flat blob store: ``mkdir`` of a prefix creates nothing, ``mkdir`` of a container creates it).

Every call is one call of the native client (:class:`blobring.Client`), run in a worker thread
with the GIL released, so the coroutines of this :class:`fsspec.asyn.AsyncFileSystem` overlap.
``cat_ranges`` sends each file's ranges in one native ``get_ranges`` (all in flight, adjacent
ranges coalesced); files opened for reading fetch through a read-ahead cache (a Parquet footer
read is one request; large reads are striped over every queue); files opened for writing
stream blocks that are staged while you write and committed on ``close``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import errno
import os
import threading
from typing import Any

from fsspec.asyn import AsyncFileSystem, sync
from fsspec.spec import AbstractBufferedFile

from . import _blobring
from ._threads import run
from .exceptions import BlobNotFound, InvalidRequest

__all__ = ["BlobringFileSystem", "BlobringFile"]

class BlobringFileSystem(AsyncFileSystem):
    """Azure Blob storage through blobringd, as an fsspec filesystem (protocol ``blobring``).

    Parameters
    ----------
    socket:
        blobringd's socket (default: ``BLOBRING_SOCKET``, else the default path).
    connection_string:
        The storage account (default: ``AZURE_STORAGE_CONNECTION_STRING``, else the emulator
        account that ``blobring up`` serves).
    timeout:
        Seconds each request may take (default 60).
    block_size:
        Read-ahead and write block size of files opened with ``open`` (default 4 MiB).
    """

    protocol = ("blobring",)
    root_marker = ""
    default_block_size = 4 << 20

    def __init__(
        self,
        socket: str | None = None,
        connection_string: str | None = None,
        timeout: float | None = None,
        block_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._socket = socket
        self._connection_string = connection_string
        self._timeout = timeout
        self._client_pid: tuple[int, _blobring.Client] | None = None
        self._client_lock = threading.Lock()
        if block_size:
            self.blocksize = block_size
        else:
            self.blocksize = self.default_block_size

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> _blobring.Client:
        """The native client (connected on first use, and again in a forked child)."""
        with self._client_lock:
            if self._client_pid is None or self._client_pid[0] != os.getpid():
                c = _blobring.connect(
                    self._socket, self._connection_string, timeout=self._timeout
                )
                self._client_pid = (os.getpid(), c)
            return self._client_pid[1]

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.client.<method>(*args, **kwargs)`` in a worker thread."""
        return await run(getattr(self.client, method), *args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("blobring://"):
            path = path[len("blobring://") :]
        elif path.startswith("blobring:"):
            path = path[len("blobring:") :]
        return path.strip("/")

    def split_path(self, path: str) -> tuple[str, str]:
        """``(container, blob name)`` of a path; the blob name is ``""`` for a container."""
        path = self._strip_protocol(path)
        container, _, key = path.partition("/")
        return container, key

    def _blob(self, path: str) -> tuple[str, str]:
        """``(container, blob)`` of a path that must name a blob."""
        c, k = self.split_path(path)
        if not c or not k:
            raise InvalidRequest(
                f"{path!r} does not name a blob: use blobring://container/path/to/blob"
            )
        return c, k

    def unstrip_protocol(self, name: str) -> str:
        return "blobring://" + self._strip_protocol(name)

    @staticmethod
    def _file_entry(container: str, b: Any) -> dict[str, Any]:
        return {
            "name": f"{container}/{b.name}",
            "size": b.size,
            "type": "file",
            "etag": b.etag,
            "last_modified": b.last_modified,
        }

    # ------------------------------------------------------------------ listing

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        c, k = self.split_path(path)
        if not c:
            names = await self._call("list_containers")
            out = [{"name": n, "size": 0, "type": "directory"} for n in names]
        else:
            prefix = k + "/" if k else None
            listing = await self._call("list", c, prefix, "/")
            out = [
                {"name": f"{c}/{p.rstrip('/')}", "size": 0, "type": "directory"}
                for p in listing.prefixes
            ]
            out += [
                self._file_entry(c, b)
                for b in listing.blobs
                if not b.name.endswith("/")
            ]
            out.sort(key=lambda e: e["name"])
            if not out and k:
                # A blob, not a prefix: ls of a file lists the file.
                out = [await self._info(path)]
        return out if detail else [e["name"] for e in out]

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        c, k = self.split_path(path)
        if not c:
            return {"name": "", "size": 0, "type": "directory"}
        if not k:
            if c in await self._call("list_containers", c):
                return {"name": c, "size": 0, "type": "directory"}
            raise FileNotFoundError(f"container {c!r} does not exist (blobring://{c})")
        try:
            p = await self._call("head", c, k)
            return {
                "name": f"{c}/{k}",
                "size": p.size,
                "type": "file",
                "etag": p.etag,
                "last_modified": p.last_modified,
                "content_type": p.content_type,
                "metadata": p.metadata,
            }
        except BlobNotFound:
            listing = await self._call("list", c, k + "/", "/", max_results=1)
            if listing.blobs or listing.prefixes:
                return {"name": f"{c}/{k}", "size": 0, "type": "directory"}
            raise FileNotFoundError(f"no blob or directory blobring://{c}/{k}") from None

    def modified(self, path: str) -> datetime.datetime:
        """Last modification time of a blob (its ``Last-Modified``), timezone-aware."""
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(f"{path!r} is a directory: only blobs have a time")
        return email.utils.parsedate_to_datetime(info["last_modified"])

    # ------------------------------------------------------------------ reads

    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        c, k = self._blob(path)
        if start is None and end is None:
            return bytes(await self._call("get", c, k))
        s, e = await self._limits(c, k, start, end)
        if s >= e:
            return b""
        return bytes(await self._call("get", c, k, (s, e)))

    async def _limits(
        self, c: str, k: str, start: int | None, end: int | None
    ) -> tuple[int, int]:
        """Absolute ``(start, end)``: negatives count from the end, ``None`` is the end."""
        start = start or 0
        if end is None or start < 0 or end < 0:
            size = (await self._call("head", c, k)).size
            if start < 0:
                start = max(0, size + start)
            if end is None:
                end = size
            elif end < 0:
                end = max(0, size + end)
            end = min(end, size)
        return start, end

    async def _cat_ranges(
        self,
        paths: list[str],
        starts: Any,
        ends: Any,
        max_gap: int | None = None,
        batch_size: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        n = len(paths)
        starts = starts if isinstance(starts, (list, tuple)) else [starts] * n
        ends = ends if isinstance(ends, (list, tuple)) else [ends] * n
        if len(starts) != n or len(ends) != n:
            raise ValueError("paths, starts and ends must have the same length")
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            groups.setdefault(self._strip_protocol(p), []).append(i)
        out: list[Any] = [None] * n

        async def one(path: str, idx: list[int]) -> None:
            try:
                c, k = self._blob(path)
                lims = [await self._limits(c, k, starts[i], ends[i]) for i in idx]
                lims = [(s, max(s, e)) for s, e in lims]
                got = await self._call("get_ranges", c, k, lims)
                for i, b in zip(idx, got):
                    out[i] = bytes(b)
            except Exception as e:  # noqa: BLE001 - placed per range, as fsspec does
                for i in idx:
                    out[i] = e

        await asyncio.gather(*(one(p, idx) for p, idx in groups.items()))
        if on_error != "return":
            for v in out:
                if isinstance(v, Exception):
                    raise v
        return out

    async def _get_file(
        self, rpath: str, lpath: str, callback: Any = None, **kwargs: Any
    ) -> None:
        if os.path.isdir(lpath):
            return
        c, k = self._blob(rpath)
        await self._call("download_file", c, k, lpath, progress=_progress(callback))

    # ------------------------------------------------------------------ writes

    async def _pipe_file(
        self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        c, k = self._blob(path)
        await self._call("put", c, k, value, overwrite=mode != "create")

    async def _put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Any = None,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        if os.path.isdir(lpath):
            # Directories exist through the blobs under them.
            return
        c, k = self._blob(rpath)
        await self._call(
            "upload_file",
            c,
            k,
            lpath,
            overwrite=mode != "create",
            progress=_progress(callback),
        )

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        c1, k1 = self._blob(path1)
        c2, k2 = self._blob(path2)
        await self._call("copy", c1, k1, c2, k2)

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        c, k = self.split_path(path)
        if not k:
            await self._call("delete_container", c)
            return
        try:
            await self._call("delete", c, k)
        except BlobNotFound:
            # A directory of a recursive rm: it goes with the blobs under it.
            if not await self._isdir(path):
                raise

    async def _rm(
        self,
        path: Any,
        recursive: bool = False,
        batch_size: int | None = None,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        paths = await self._expand_path(path, recursive=recursive, maxdepth=maxdepth)
        paths = [self._strip_protocol(p) for p in paths]
        # A path with others under it is a directory: it goes with them (unless a blob of
        # the same name exists too, which is deleted).
        dirs = {p for p in paths if any(q.startswith(p + "/") for q in paths)}
        blobs = [p for p in paths if self.split_path(p)[1]]
        containers = [p for p in paths if not self.split_path(p)[1]]

        async def rm_blob(p: str) -> None:
            if p not in dirs:
                await self._rm_file(p)
                return
            try:
                await self._call("delete", *self.split_path(p))
            except BlobNotFound:
                pass

        await asyncio.gather(*(rm_blob(p) for p in blobs))
        for p in containers:
            await self._rm_file(p)

    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        c, k = self.split_path(path)
        if not c:
            raise InvalidRequest("mkdir needs a container: blobring://container[/prefix]")
        if not k:
            await self._call("create_container", c)
        elif create_parents:
            await self._call("create_container", c, exist_ok=True)

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        c, k = self.split_path(path)
        if not c:
            raise InvalidRequest("makedirs needs a container: blobring://container[/prefix]")
        await self._call("create_container", c, exist_ok=exist_ok or bool(k))

    def rmdir(self, path: str) -> None:
        """Deletes an empty container (``OSError(ENOTEMPTY)`` if blobs are in it; use
        ``rm(path, recursive=True)``); a prefix has nothing to delete."""
        return sync(self.loop, self._rmdir, path)

    async def _rmdir(self, path: str) -> None:
        c, k = self.split_path(path)
        if c and not k:
            if (await self._call("list", c, max_results=1)).blobs:
                raise OSError(
                    errno.ENOTEMPTY,
                    f"container {c!r} is not empty; rm(path, recursive=True) deletes it "
                    "with its blobs",
                )
            await self._call("delete_container", c)

    # ------------------------------------------------------------------ files

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_type: str = "readahead",
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BlobringFile:
        return BlobringFile(
            self,
            path,
            mode,
            block_size=block_size or self.blocksize,
            autocommit=autocommit,
            cache_type=cache_type,
            cache_options=cache_options,
            **kwargs,
        )


def _progress(callback: Any) -> Any:
    """A native progress function feeding an fsspec callback (or ``None``)."""
    if callback is None or not hasattr(callback, "set_size"):
        return None

    def report(done: int, total: int) -> None:
        callback.set_size(total)
        callback.absolute_update(done)

    return report


class BlobringFile(AbstractBufferedFile):
    """A blob opened through :class:`BlobringFileSystem`.

    Modes ``rb`` (read-ahead cache, ranged reads), ``wb`` (blocks staged as written,
    committed on close) and ``xb`` (``wb``, but ``FileExistsError`` if the blob exists).
    Appending is refused: a blob store cannot append to a block blob in place.
    """

    def __init__(self, fs: BlobringFileSystem, path: str, mode: str = "rb", **kwargs: Any):
        if mode not in ("rb", "wb", "xb"):
            raise ValueError(
                f"mode {mode!r} is not supported: blobring files are read (rb) or written "
                "whole (wb, xb); to change a blob, read it and write it again"
            )
        self.container, self.key = fs._blob(path)
        self._writer: Any = None
        if mode == "xb" and fs.exists(path):
            raise FileExistsError(f"blobring://{self.container}/{self.key} exists")
        super().__init__(fs, path, mode, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        if start >= end:
            return b""
        return bytes(self.fs.client.get(self.container, self.key, (start, end)))

    def _initiate_upload(self) -> None:
        self._writer = self.fs.client.open_writer(
            self.container, self.key, overwrite=self.mode != "xb"
        )

    def _upload_chunk(self, final: bool = False) -> bool:
        if self._writer is None:
            self._initiate_upload()
        data = self.buffer.getbuffer()
        if len(data):
            self._writer.write(data)
        del data
        if final:
            self._writer.close()
        return True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self.writable() and not self.closed:
            # A write that failed half way commits nothing.
            self.discard()
            self.closed = True
            return
        super().__exit__(exc_type, exc, tb)

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


# Block ids for callers that stage blocks themselves (Client.put_block): fixed length.
def block_id(upload: str, n: int) -> str:
    """The Base64 block id of block ``n`` of upload ``upload`` (same length for every n)."""
    return base64.b64encode(f"{upload}-{n:08d}".encode()).decode()
