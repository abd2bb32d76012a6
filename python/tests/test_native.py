"""The native API (blobring.Client) against a real host + daemon: every call and its errors."""

from __future__ import annotations

import base64
import gc
import os
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest

import blobring
from blobring import exceptions as E


def rnd(n: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def addr(buf) -> int:
    return np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0]


# ---------------------------------------------------------------------------- connect


def test_connect_defaults_come_from_the_environment(stack):
    # BLOBRING_SOCKET is set by the stack fixture; the account is the emulator's.
    c = blobring.connect()
    assert c.socket == str(stack.socket)
    assert c.account == "devstoreaccount1"
    assert c.arena_len == 64 << 20
    assert "devstoreaccount1" in repr(c)


def test_connect_rejects_a_bad_timeout(stack):
    with pytest.raises(ValueError, match="timeout"):
        blobring.connect(str(stack.socket), timeout=-1)


def test_connect_rejects_a_malformed_connection_string(stack):
    with pytest.raises(E.InvalidRequest) as ei:
        blobring.connect(str(stack.socket), connection_string="AccountName=x;nonsense")
    assert isinstance(ei.value, ValueError)


# ---------------------------------------------------------------------------- containers


def test_containers_create_list_delete(client):
    name = "c" + uuid.uuid4().hex[:10]
    client.create_container(name)
    with pytest.raises(E.BlobExists) as ei:
        client.create_container(name)
    assert isinstance(ei.value, FileExistsError)
    assert ei.value.status == 409 and ei.value.code == "ContainerAlreadyExists"
    client.create_container(name, exist_ok=True)
    assert name in client.list_containers()
    assert client.list_containers(prefix=name) == [name]
    assert client.list_containers(prefix=name + "zz") == []
    client.delete_container(name)
    assert name not in client.list_containers()
    with pytest.raises(E.ContainerNotFound) as ei:
        client.delete_container(name)
    assert isinstance(ei.value, FileNotFoundError)
    client.delete_container(name, missing_ok=True)


def test_names_are_checked(client, container):
    with pytest.raises(ValueError, match="empty"):
        client.get(container, "")
    with pytest.raises(ValueError, match="empty"):
        client.create_container("")
    # The service's rules: upper case is not a container name.
    with pytest.raises(E.InvalidRequest) as ei:
        client.create_container("Bad_Name")
    assert ei.value.status == 400 and isinstance(ei.value, ValueError)


# ---------------------------------------------------------------------------- put / get


def test_put_get_roundtrip_and_ranges(client, container):
    data = rnd(100_000)
    etag = client.put(container, "a/b.bin", data)
    assert etag.startswith('"')
    got = client.get(container, "a/b.bin")
    assert isinstance(got, blobring.Bytes)
    assert bytes(got) == data and len(got) == len(data)
    assert bytes(client.get(container, "a/b.bin", (10, 20))) == data[10:20]
    assert bytes(client.get(container, "a/b.bin", (99_990, 100_000))) == data[99_990:]
    assert bytes(client.get(container, "a/b.bin", (5, 5))) == b""
    with pytest.raises(ValueError, match="ends before it starts"):
        client.get(container, "a/b.bin", (20, 10))


def test_put_accepts_any_buffer(client, container):
    arr = np.arange(1000, dtype=np.int32)
    client.put(container, "np", arr)
    client.put(container, "ba", bytearray(b"xyz"))
    client.put(container, "mv", memoryview(b"0123456789")[2:5])
    assert np.array_equal(np.frombuffer(client.get(container, "np"), dtype=np.int32), arr)
    assert bytes(client.get(container, "ba")) == b"xyz"
    assert bytes(client.get(container, "mv")) == b"234"


def test_empty_blob(client, container):
    client.put(container, "empty", b"")
    assert bytes(client.get(container, "empty")) == b""
    assert client.head(container, "empty").size == 0


def test_missing_blob_and_container(client, container):
    with pytest.raises(E.BlobNotFound) as ei:
        client.get(container, "nope")
    assert isinstance(ei.value, FileNotFoundError)
    assert ei.value.status == 404 and ei.value.code == "BlobNotFound"
    assert "nope" in str(ei.value)
    with pytest.raises(E.ContainerNotFound):
        client.get("no-such-container-x", "b")
    with pytest.raises(FileNotFoundError):
        client.head(container, "nope")


def test_large_get_is_striped_beyond_one_request(client, container):
    # 40 MiB: more than one request carries with a 64 MiB arena (limit: half the arena).
    data = rnd(40 << 20, seed=7)
    client.put(container, "big", data)
    got = client.get(container, "big")
    assert len(got) == len(data) and bytes(got) == data
    part = client.get(container, "big", (1 << 20, (1 << 20) + (35 << 20)))
    assert bytes(part) == data[1 << 20 : (1 << 20) + (35 << 20)]


# ---------------------------------------------------------------------------- zero copy


def test_reads_are_zero_copy_views_of_the_arena(client, container):
    data = rnd(3 << 20, seed=3)
    client.put(container, "z", data)
    gc.collect()
    free_before = client.arena_free()
    b = client.get(container, "z")
    start, length = client.region_span()
    a = addr(b)
    assert start <= a and a + len(b) <= start + length, "the buffer is not in the region"
    # Held: the arena has (at least) the 3 MiB less.
    assert client.arena_free() <= free_before - (3 << 20)
    # Every view is the same memory, read-only.
    mv = memoryview(b)
    assert mv.readonly
    with pytest.raises(TypeError):
        mv[0] = 1
    arr = np.frombuffer(b, dtype=np.uint8)
    assert arr.__array_interface__["data"][0] == a and not arr.flags.writeable
    pb = pa.py_buffer(b)
    assert pb.address == a and pb.size == len(data)
    assert pb.to_pybytes() == data
    # bytes() copies.
    copy = bytes(b)
    assert copy == data
    # The lease returns only when the last view goes.
    del b, mv
    gc.collect()
    assert client.arena_free() <= free_before - (3 << 20), "freed while numpy/arrow hold it"
    del arr, pb
    gc.collect()
    assert client.arena_free() == free_before


def test_small_reads_are_copied_and_pin_no_arena(client, container):
    client.put(container, "small", b"x" * 1000)
    gc.collect()
    free = client.arena_free()
    held = [client.get(container, "small") for _ in range(100)]
    assert client.arena_free() == free
    start, length = client.region_span()
    assert not (start <= addr(held[0]) < start + length)
    assert all(bytes(h) == b"x" * 1000 for h in held)


def test_get_ranges_coalesces_and_keeps_order(client, container):
    data = rnd(1 << 20, seed=5)
    client.put(container, "r", data)
    ranges = [(500, 600), (0, 100), (100, 250), (250, 300), (900_000, 900_010), (7, 7)]
    got = client.get_ranges(container, "r", ranges)
    assert [bytes(g) for g in got] == [data[s:e] for s, e in ranges]
    # (0,100), (100,250), (250,300) touch: one request, so their views are contiguous.
    assert addr(got[2]) == addr(got[1]) + 100
    assert addr(got[3]) == addr(got[2]) + 150
    start, length = client.region_span()
    assert all(start <= addr(g) < start + length for g in got if len(g))


def test_get_ranges_beyond_the_arena_copies(client, container):
    data = rnd(48 << 20, seed=9)
    client.put(container, "wide", data)
    # 48 ranges of ~1 MiB, 17 bytes apart (not coalesced): more than the arena holds at once.
    ranges = [(i * (1 << 20) + 17, (i + 1) * (1 << 20)) for i in range(48)]
    got = client.get_ranges(container, "wide", ranges)
    assert [bytes(g) for g in got] == [data[s:e] for s, e in ranges]


def test_get_ranges_all_in_flight_at_once(client, container):
    data = rnd(64 * 4096, seed=11)
    client.put(container, "small", data)
    ranges = [(i * 4096, i * 4096 + 100) for i in range(64)]
    got = client.get_ranges(container, "small", ranges)
    assert [bytes(g) for g in got] == [data[s:e] for s, e in ranges]


def test_a_buffer_outlives_its_client(stack, container):
    c = blobring.connect(str(stack.socket))
    c.put(container, "keep", b"still here")
    b = c.get(container, "keep")
    del c
    gc.collect()
    assert bytes(b) == b"still here"
    assert np.frombuffer(b, dtype=np.uint8).sum() == sum(b"still here")


# ---------------------------------------------------------------------------- head / list


def test_head_metadata_and_content_type(client, container):
    client.put(container, "m", b"12345", content_type="text/plain", metadata={"k": "v"})
    p = client.head(container, "m")
    assert p.size == 5 and p.content_type == "text/plain" and p.metadata == {"k": "v"}
    assert p.etag.startswith('"') and p.last_modified
    etag = client.set_metadata(container, "m", {"a": "1", "b": "2"})
    p2 = client.head(container, "m")
    assert p2.metadata == {"a": "1", "b": "2"} and p2.etag == etag != p.etag
    with pytest.raises(E.ConditionNotMet):
        client.set_metadata(container, "m", {"x": "y"}, if_match=p.etag)
    with pytest.raises(E.BlobNotFound):
        client.set_metadata(container, "nope", {"x": "y"})


def test_list_prefix_delimiter(client, container):
    for n in ["a/1", "a/2", "a/b/3", "c", "d/4"]:
        client.put(container, n, n.encode())
    everything = client.list(container)
    assert [b.name for b in everything.blobs] == ["a/1", "a/2", "a/b/3", "c", "d/4"]
    assert everything.prefixes == []
    assert everything.blobs[0].size == 3
    top = client.list(container, delimiter="/")
    assert [b.name for b in top.blobs] == ["c"] and top.prefixes == ["a/", "d/"]
    a = client.list(container, prefix="a/", delimiter="/")
    assert [b.name for b in a.blobs] == ["a/1", "a/2"] and a.prefixes == ["a/b/"]
    one = client.list(container, max_results=1)
    assert len(one.blobs) == 1
    with pytest.raises(E.ContainerNotFound):
        client.list("no-such-container-y")


# ---------------------------------------------------------------------------- conditions


def test_conditions(client, container):
    e1 = client.put(container, "c", b"one")
    with pytest.raises(E.BlobExists) as ei:
        client.put(container, "c", b"two", overwrite=False)
    assert isinstance(ei.value, FileExistsError)
    client.put(container, "new", b"x", overwrite=False)
    e2 = client.put(container, "c", b"two", if_match=e1)
    assert e2 != e1
    with pytest.raises(E.ConditionNotMet) as ei:
        client.put(container, "c", b"three", if_match=e1)
    assert ei.value.status == 412
    assert bytes(client.get(container, "c", if_match=e2)) == b"two"
    with pytest.raises(E.ConditionNotMet):
        client.get(container, "c", if_match=e1)
    with pytest.raises(E.ConditionNotMet):
        client.delete(container, "c", if_match=e1)
    client.delete(container, "c", if_match=e2)
    with pytest.raises(E.BlobNotFound):
        client.delete(container, "c")


# ---------------------------------------------------------------------------- copy


def test_copy(client, container):
    client.put(container, "src", b"copy me", metadata={"m": "1"})
    assert client.copy(container, "src", container, "dst") == "success"
    assert bytes(client.get(container, "dst")) == b"copy me"
    with pytest.raises(E.BlobExists):
        client.copy(container, "src", container, "dst", overwrite=False)
    with pytest.raises(E.BlobNotFound):
        client.copy(container, "missing", container, "dst2")


# ---------------------------------------------------------------------------- transfers


def test_upload_download_file_with_progress(client, container, tmp_path):
    data = rnd(20 << 20, seed=13)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    seen: list[tuple[int, int]] = []
    etag = client.upload_file(
        container, "f", str(src), progress=lambda d, t: seen.append((d, t)), chunk_size=4 << 20
    )
    assert etag.startswith('"')
    assert seen and seen[-1] == (len(data), len(data))
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert len(seen) >= 5  # one per 4 MiB block
    dst = tmp_path / "dst.bin"
    seen.clear()
    n = client.download_file(container, "f", dst, progress=lambda d, t: seen.append((d, t)))
    assert n == len(data) and dst.read_bytes() == data
    assert seen[-1] == (len(data), len(data))
    with pytest.raises(E.BlobExists):
        client.upload_file(container, "f", str(src), overwrite=False)
    with pytest.raises(FileNotFoundError):
        client.upload_file(container, "g", str(tmp_path / "missing"))
    with pytest.raises(E.BlobNotFound):
        client.download_file(container, "missing", tmp_path / "x")


def test_progress_callback_errors_are_raised(client, container, tmp_path):
    src = tmp_path / "s"
    src.write_bytes(b"x" * 1000)

    def boom(done, total):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        client.upload_file(container, "p", str(src), progress=boom)


def test_writer_streams_blocks_and_commits_on_close(client, container):
    w = client.open_writer(container, "w", content_type="application/octet-stream")
    parts = [rnd(3 << 20, seed=i) for i in range(5)]
    for p in parts:
        assert w.write(p) == len(p)
    with pytest.raises(E.BlobNotFound):
        client.head(container, "w")  # nothing visible before close
    etag = w.close()
    assert etag and w.written == sum(map(len, parts))
    assert bytes(client.get(container, "w")) == b"".join(parts)
    assert w.close() is None
    with pytest.raises(ValueError, match="closed"):
        w.write(b"more")


def test_writer_abort_and_context_manager(client, container):
    w = client.open_writer(container, "aborted")
    w.write(b"abc")
    w.abort()
    with pytest.raises(E.BlobNotFound):
        client.head(container, "aborted")
    with client.open_writer(container, "ctx") as w:
        w.write(b"hello ")
        w.write(bytearray(b"world"))
    assert bytes(client.get(container, "ctx")) == b"hello world"
    with pytest.raises(RuntimeError):
        with client.open_writer(container, "ctx-failed") as w:
            w.write(b"half")
            raise RuntimeError("stop")
    with pytest.raises(E.BlobNotFound):
        client.head(container, "ctx-failed")
    w = client.open_writer(container, "dropped")
    w.write(b"never committed")
    del w
    gc.collect()
    time.sleep(0.2)
    with pytest.raises(E.BlobNotFound):
        client.head(container, "dropped")
    client.put(container, "exists", b"1")
    w = client.open_writer(container, "exists", overwrite=False)
    w.write(b"2")
    with pytest.raises(E.BlobExists):
        w.close()


def test_blocks(client, container):
    ids = [base64.b64encode(f"blk-{i:04d}".encode()).decode() for i in range(3)]
    for i, bid in enumerate(ids):
        client.put_block(container, "blk", bid, f"part{i};".encode())
    with pytest.raises(E.BlobNotFound):
        client.head(container, "blk")
    client.commit_blocks(container, "blk", [ids[2], ids[0]], metadata={"k": "v"})
    assert bytes(client.get(container, "blk")) == b"part2;part0;"
    assert client.head(container, "blk").metadata == {"k": "v"}


# ---------------------------------------------------------------------------- threads


def test_one_client_many_threads(client, container):
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                d = rnd(10_000 + j, seed=i * 100 + j)
                client.put(container, f"t{i}/{j}", d)
                assert bytes(client.get(container, f"t{i}/{j}")) == d
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    assert len(client.list(container).blobs) == 80


def test_the_gil_is_released_while_waiting(client, container):
    data = rnd(30 << 20, seed=21)
    client.put(container, "gil", data)
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.05)
    before = ticks
    for _ in range(5):
        client.get(container, "gil")
    after = ticks
    stop.set()
    t.join()
    # The Python thread kept running while the main thread waited in native calls.
    assert after - before > 1000


# ---------------------------------------------------------------------------- auth


def test_a_wrong_key_is_permission_denied(stack, container):
    key = base64.b64encode(b"not the account key at all, 64 bytes long..........").decode()
    cs = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={key};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    )
    c = blobring.connect(str(stack.socket), cs)
    with pytest.raises(E.AccessDenied) as ei:
        c.get(container, "anything")
    assert isinstance(ei.value, PermissionError) and ei.value.status == 403


def test_version_and_names():
    assert blobring.__version__
    for name in blobring.__all__:
        assert getattr(blobring, name).__doc__, f"{name} has no docstring"
    assert os.path.exists(os.path.join(os.path.dirname(blobring.__file__), "py.typed"))
