"""blobring.fsspec.BlobringFileSystem: fsspec's own abstract suite, then each method."""

from __future__ import annotations

import datetime
import os
import uuid

import fsspec
import fsspec.tests.abstract as abstract
import numpy as np
import pytest

import blobring
from blobring.fsspec import BlobringFileSystem
from conftest import run_python


@pytest.fixture(scope="session")
def bfs(stack):
    return BlobringFileSystem(socket=str(stack.socket), skip_instance_cache=True)


@pytest.fixture
def root(bfs, container):
    return f"{container}/dir"


# ---------------------------------------------------------------------------- fsspec's suite


class BlobringFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self, bfs):
        return bfs

    @pytest.fixture
    def fs_path(self, container):
        return f"{container}/abstract"

    @pytest.fixture
    def supports_empty_directories(self):
        # A flat blob store: a directory exists while blobs are under it.
        return False


class TestBlobringCopy(abstract.AbstractCopyTests, BlobringFixtures):
    pass


class TestBlobringGet(abstract.AbstractGetTests, BlobringFixtures):
    pass


class TestBlobringPut(abstract.AbstractPutTests, BlobringFixtures):
    pass


class TestBlobringOpen(abstract.AbstractOpenTests, BlobringFixtures):
    pass


class TestBlobringPipe(abstract.AbstractPipeTests, BlobringFixtures):
    pass


# ---------------------------------------------------------------------------- registration


def test_protocol_is_registered_by_entry_point(stack, container, client):
    assert fsspec.get_filesystem_class("blobring") is BlobringFileSystem
    client.put(container, "ep.txt", b"found by entry point")
    # A fresh interpreter that never imports blobring itself finds the protocol.
    code = (
        "import fsspec, sys\n"
        f"with fsspec.open('blobring://{container}/ep.txt', 'rb') as f:\n"
        "    sys.stdout.write(f.read().decode())\n"
    )
    out = run_python(stack, code, check=True)
    assert out.stdout == "found by entry point"


# ---------------------------------------------------------------------------- methods


def test_ls_info_exists(bfs, client, container):
    for n in ["d/a", "d/b", "d/sub/c", "top"]:
        client.put(container, n, n.encode())
    assert bfs.ls(f"blobring://{container}", detail=False) == [f"{container}/d", f"{container}/top"]
    entries = bfs.ls(f"{container}/d")
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [
        (f"{container}/d/a", "file", 3),
        (f"{container}/d/b", "file", 3),
        (f"{container}/d/sub", "directory", 0),
    ]
    assert bfs.ls(f"{container}/d/a", detail=False) == [f"{container}/d/a"]
    assert container in bfs.ls("", detail=False)
    assert bfs.info(f"{container}/d/sub/c")["size"] == 7
    assert bfs.info(f"{container}/d")["type"] == "directory"
    assert bfs.info(container)["type"] == "directory"
    assert bfs.exists(f"{container}/top") and not bfs.exists(f"{container}/nope")
    assert bfs.isdir(f"{container}/d/sub") and bfs.isfile(f"{container}/d/a")
    with pytest.raises(FileNotFoundError):
        bfs.info(f"{container}/nope")
    with pytest.raises(FileNotFoundError):
        bfs.ls(f"{container}/nope")
    assert sorted(bfs.find(f"{container}/d")) == [
        f"{container}/d/a",
        f"{container}/d/b",
        f"{container}/d/sub/c",
    ]
    assert bfs.du(f"{container}/d") == 13
    age = datetime.datetime.now(datetime.timezone.utc) - bfs.modified(f"{container}/top")
    assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(minutes=5)
    with pytest.raises(IsADirectoryError):
        bfs.modified(f"{container}/d")


def test_cat_file_and_ranges(bfs, client, container):
    data = os.urandom(200_000)
    client.put(container, "f", data)
    p = f"blobring://{container}/f"
    assert bfs.cat_file(p) == data
    assert bfs.cat_file(p, start=10, end=20) == data[10:20]
    assert bfs.cat_file(p, start=-100) == data[-100:]
    assert bfs.cat_file(p, start=5, end=-5) == data[5:-5]
    assert bfs.cat_file(p, start=199_990, end=300_000) == data[199_990:]
    assert bfs.cat_file(p, start=300, end=300) == b""
    client.put(container, "g", b"0123456789")
    got = bfs.cat_ranges([p, p, f"{container}/g", p], [0, 100, 2, 150_000], [100, 200, 5, None])
    assert got == [data[:100], data[100:200], b"234", data[150_000:]]
    got = bfs.cat_ranges([p, f"{container}/missing"], [0, 0], [10, 10])
    assert got[0] == data[:10] and isinstance(got[1], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        bfs.cat_ranges([f"{container}/missing"], [0], [1], on_error="raise")
    assert bfs.cat([p, f"{container}/g"]) == {f"{container}/f": data, f"{container}/g": b"0123456789"}


def test_pipe_put_get_rm(bfs, client, container, tmp_path):
    bfs.pipe_file(f"{container}/p", b"piped")
    assert bytes(client.get(container, "p")) == b"piped"
    with pytest.raises(FileExistsError):
        bfs.pipe_file(f"{container}/p", b"again", mode="create")
    src = tmp_path / "src.bin"
    data = os.urandom(9 << 20)
    src.write_bytes(data)
    bfs.put_file(str(src), f"{container}/up/src.bin")
    assert bytes(client.get(container, "up/src.bin")) == data
    dst = tmp_path / "dst.bin"
    bfs.get_file(f"{container}/up/src.bin", str(dst))
    assert dst.read_bytes() == data
    # Recursive put/get of a tree.
    tree = tmp_path / "tree"
    (tree / "x" / "y").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "x" / "b.txt").write_text("b")
    (tree / "x" / "y" / "c.txt").write_text("c")
    bfs.put(str(tree), f"{container}/tree", recursive=True)
    assert sorted(bfs.find(f"{container}/tree")) == [
        f"{container}/tree/a.txt",
        f"{container}/tree/x/b.txt",
        f"{container}/tree/x/y/c.txt",
    ]
    out = tmp_path / "out"
    bfs.get(f"{container}/tree", str(out), recursive=True)
    assert (out / "x" / "y" / "c.txt").read_text() == "c"
    bfs.rm(f"{container}/tree", recursive=True)
    assert not bfs.exists(f"{container}/tree")
    bfs.rm(f"{container}/p")
    assert not bfs.exists(f"{container}/p")
    with pytest.raises(FileNotFoundError):
        bfs.rm_file(f"{container}/p")
    bfs.cp_file(f"{container}/up/src.bin", f"{container}/up/copy.bin")
    assert bfs.cat_file(f"{container}/up/copy.bin") == data


def test_mkdir_makedirs_rmdir(bfs, client):
    c = "mk" + uuid.uuid4().hex[:10]
    bfs.mkdir(c)
    assert c in client.list_containers()
    with pytest.raises(FileExistsError):
        bfs.mkdir(c)
    bfs.makedirs(f"{c}/a/b/c")  # prefixes: nothing to create
    bfs.makedirs(c, exist_ok=True)
    with pytest.raises(FileExistsError):
        bfs.makedirs(c)
    c2 = "mk" + uuid.uuid4().hex[:10]
    bfs.makedirs(f"{c2}/x/y")  # creates the container
    assert c2 in client.list_containers()
    bfs.pipe_file(f"{c2}/x/y/z", b"1")
    bfs.rm(c2, recursive=True)
    assert c2 not in client.list_containers()
    bfs.rmdir(c)
    assert c not in client.list_containers()


def test_open_read_uses_readahead(bfs, client, container):
    data = os.urandom(10 << 20)
    client.put(container, "o", data)
    with bfs.open(f"{container}/o", "rb") as f:
        assert f.size == len(data)
        assert f.read(10) == data[:10]
        f.seek(len(data) - 65536)
        assert f.read() == data[-65536:]
        f.seek(5 << 20)
        assert f.read(1 << 20) == data[5 << 20 : 6 << 20]
    with bfs.open(f"{container}/o", "rb", block_size=1 << 20) as f:
        chunks = []
        while b := f.read(300_000):
            chunks.append(b)
        assert b"".join(chunks) == data


def test_open_write_streams_blocks(bfs, client, container):
    parts = [os.urandom(3 << 20) for _ in range(4)]
    with bfs.open(f"{container}/w", "wb", block_size=5 << 20) as f:
        for p in parts:
            f.write(p)
    assert bytes(client.get(container, "w")) == b"".join(parts)
    with bfs.open(f"{container}/empty", "wb"):
        pass
    assert client.head(container, "empty").size == 0
    with pytest.raises(ValueError, match="not supported"):
        bfs.open(f"{container}/w", "ab")
    # A failed write commits nothing.
    with pytest.raises(RuntimeError):
        with bfs.open(f"{container}/half", "wb") as f:
            f.write(os.urandom(6 << 20))
            raise RuntimeError("stop")
    assert not bfs.exists(f"{container}/half")


def test_numpy_roundtrip_through_a_file(bfs, container):
    arr = np.random.default_rng(0).normal(size=(500, 40))
    with bfs.open(f"{container}/arr.npy", "wb") as f:
        np.save(f, arr)
    with bfs.open(f"{container}/arr.npy", "rb") as f:
        assert np.array_equal(np.load(f), arr)


def test_malformed_urls_and_missing_containers(bfs):
    with pytest.raises(blobring.InvalidRequest, match="does not name a blob"):
        bfs.cat_file("blobring://")
    with pytest.raises(ValueError, match="does not name a blob"):
        bfs.cat_file("blobring://only-a-container")
    with pytest.raises(ValueError):
        bfs.cat_file("blobring://Bad_Container!/x")
    with pytest.raises(FileNotFoundError):
        bfs.cat_file("blobring://no-such-container-z/x")
    with pytest.raises(FileNotFoundError):
        bfs.ls("blobring://no-such-container-z/")
    with pytest.raises(FileNotFoundError):
        bfs.open("blobring://no-such-container-z/x", "rb")
    assert not bfs.exists("blobring://no-such-container-z/x")
