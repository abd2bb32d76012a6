"""Faults: no daemon, the daemon killed mid-read, deadlines, buffers outliving everything."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import uuid

import numpy as np
import pytest

import blobring
from blobring.fsspec import BlobringFileSystem
from conftest import make_stack


def test_no_daemon_is_a_connection_error_saying_how_to_start_one(tmp_path):
    sock = tmp_path / "nobody.sock"
    with pytest.raises(ConnectionError) as ei:
        blobring.connect(str(sock))
    e = ei.value
    assert isinstance(e, blobring.DaemonUnavailable)
    msg = str(e)
    assert str(sock) in msg, msg
    assert "blobring up" in msg and "BLOBRING_SOCKET" in msg, msg


def test_no_daemon_through_fsspec(tmp_path):
    fs = BlobringFileSystem(socket=str(tmp_path / "nobody.sock"), skip_instance_cache=True)
    with pytest.raises(ConnectionError, match="blobring up"):
        fs.cat_file("blobring://c/x")


@pytest.fixture
def own_stack():
    s = make_stack(arena_mib=32)
    yield s
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)


def test_daemon_killed_mid_read_fails_within_the_deadline(own_stack):
    c = blobring.connect(str(own_stack.socket), timeout=10)
    name = "k" + uuid.uuid4().hex[:8]
    c.create_container(name)
    data = np.random.default_rng(2).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    c.put(name, "big", data)
    result: dict[str, object] = {}
    started = threading.Event()

    def reader() -> None:
        try:
            started.set()
            while True:  # reads until one fails
                c.get(name, "big")
                c.get_ranges(name, "big", [(i << 20, (i << 20) + 4096) for i in range(64)])
        except BaseException as e:  # noqa: BLE001
            result["error"] = e
            result["at"] = time.monotonic()

    t = threading.Thread(target=reader)
    t.start()
    started.wait()
    time.sleep(0.3)
    killed = time.monotonic()
    own_stack.kill_daemon()
    t.join(timeout=30)
    assert not t.is_alive(), "a read hung after the daemon died"
    e = result["error"]
    assert isinstance(e, ConnectionError), repr(e)
    assert "blobring up" in str(e)
    # Retries back off for a few seconds, then give up: never a hang.
    assert result["at"] - killed < 15


def test_buffers_survive_their_client_and_daemon(own_stack):
    c = blobring.connect(str(own_stack.socket))
    name = "s" + uuid.uuid4().hex[:8]
    c.create_container(name)
    c.put(name, "x", b"survivor" * 1000)
    b = c.get(name, "x")
    arr = np.frombuffer(b, dtype=np.uint8)
    del c
    gc.collect()
    own_stack.kill_daemon()
    time.sleep(0.2)
    # The mapping stays with the buffer: still readable, no crash.
    assert bytes(b) == b"survivor" * 1000
    assert int(arr.sum()) == sum(b"survivor") * 1000


def test_a_slow_host_is_a_timeout_error():
    s = make_stack(host_args=("--fault-latency-ms", "2000"))
    try:
        c = blobring.connect(str(s.socket), timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            c.list_containers()
        assert isinstance(ei.value, blobring.DeadlineExceeded)
        assert "timed out" in str(ei.value)
        # Each attempt has the 0.3 s deadline; the retries are bounded too.
        assert time.monotonic() - t0 < 20
    finally:
        s.stop()
        shutil.rmtree(s.dir, ignore_errors=True)


def test_reconnects_after_a_daemon_restart(own_stack):
    c = blobring.connect(str(own_stack.socket))
    name = "r" + uuid.uuid4().hex[:8]
    c.create_container(name)
    c.put(name, "x", b"before")
    own_stack.kill_daemon()
    own_stack.start_daemon(arena_mib=32)
    # The next call reconnects by itself.
    assert bytes(c.get(name, "x")) == b"before"
