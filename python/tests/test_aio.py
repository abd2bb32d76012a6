"""The asyncio flavour (blobring.aio)."""

from __future__ import annotations

import asyncio
import time

import pytest

import blobring
import blobring.aio


def test_async_calls_overlap(stack, container):
    async def main() -> None:
        c = await blobring.aio.connect(str(stack.socket))
        assert "AsyncClient" in repr(c) and c.socket == str(stack.socket)
        await c.put(container, "x", b"hello")
        got = await asyncio.gather(*(c.get(container, "x") for _ in range(32)))
        assert all(bytes(g) == b"hello" for g in got)
        assert (await c.head(container, "x")).size == 5
        names = [f"n{i}" for i in range(16)]
        await asyncio.gather(*(c.put(container, n, n.encode()) for n in names))
        listing = await c.list(container, prefix="n")
        assert sorted(b.name for b in listing.blobs) == sorted(names)
        with pytest.raises(FileNotFoundError):
            await c.get(container, "missing")
        # The event loop keeps running while requests wait.
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await c.put(container, "big", bytes(20 << 20))
        await c.get(container, "big")
        t.cancel()
        assert ticks > 10

    asyncio.run(main())


def test_async_connect_error(tmp_path):
    with pytest.raises(ConnectionError, match="blobring up"):
        asyncio.run(blobring.aio.connect(str(tmp_path / "none.sock")))
