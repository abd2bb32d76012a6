"""A real stack for the tests: blobring-host on an fs store plus blobringd.

The binaries come from ``$BLOBRING_BIN_DIR`` (default: the workspace's ``target/release``,
which ``scripts/test.sh`` builds). Both bind only a unix socket in a temporary directory
(the host's REST front end, when asked for, binds 127.0.0.1). Started once per session and
killed at the end; tests that kill the daemon use their own stack (``make_stack``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket as socketlib
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

import blobring

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("BLOBRING_BIN_DIR", ROOT / "target" / "release"))


def _bin(name: str) -> str:
    p = BIN_DIR / name
    if not p.exists():
        raise RuntimeError(
            f"{p} not found: build it first (cargo build --release -p blobring-host "
            f"-p blobring-daemon) or set BLOBRING_BIN_DIR"
        )
    return str(p)


def _ctl_json(ctl: Path) -> dict:
    s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(ctl))
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf.decode())


class Stack:
    """blobring-host (fs store) + blobringd in ``dir``; ``socket`` is the client socket."""

    def __init__(self, dir: Path, arena_mib: int = 64, host_args: tuple[str, ...] = ()):
        self.dir = dir
        self.store = dir / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.host_sock = dir / "host.sock"
        self.socket = dir / "d.sock"
        self.ctl = dir / "d.ctl"
        self.http_url: str | None = None
        self.host = subprocess.Popen(
            [
                _bin("blobring-host"),
                "--socket",
                str(self.host_sock),
                "--store",
                f"fs:{self.store}",
                *host_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if "--http" in host_args else subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
            text=True,
        )
        if "--http" in host_args:
            for line in self.host.stdout:
                if line.startswith("listening on "):
                    self.http_url = line[len("listening on ") :].strip()
                    break
            # Keep draining, so the host never blocks on a full pipe.
            threading.Thread(target=lambda out: [None for _ in out], args=(self.host.stdout,),
                             daemon=True).start()
        self._wait(lambda: self.host_sock.exists(), "blobring-host to create its socket")
        self.daemon = self.start_daemon(arena_mib)

    def start_daemon(self, arena_mib: int = 64) -> subprocess.Popen:
        d = subprocess.Popen(
            [
                _bin("blobringd"),
                "--socket",
                str(self.socket),
                "--ctl-socket",
                str(self.ctl),
                "--host-socket",
                str(self.host_sock),
                "--workers",
                "2",
                "--no-pin",
                "--arena-size",
                str(arena_mib << 20),
            ],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        self.daemon = d

        def connected() -> bool:
            if d.poll() is not None:
                raise RuntimeError(f"blobringd exited with {d.returncode} at start")
            try:
                s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
                s.connect(str(self.ctl))
                s.close()
            except OSError:
                return False
            try:
                return bool(_ctl_json(self.ctl).get("daemon", {}).get("host_connected"))
            except (OSError, ValueError):
                return False

        self._wait(connected, "blobringd to connect to the host")
        return d

    @staticmethod
    def _wait(cond, what: str, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def kill_daemon(self) -> None:
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGKILL)
            self.daemon.wait()

    def stop(self) -> None:
        for p in (self.daemon, self.host):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def make_stack(**kw) -> Stack:
    d = Path(tempfile.mkdtemp(prefix="brpy", dir="/tmp"))
    return Stack(d, **kw)


@pytest.fixture(scope="session")
def stack():
    s = make_stack(host_args=("--http", "127.0.0.1:0"))
    os.environ["BLOBRING_SOCKET"] = str(s.socket)
    yield s
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def client(stack):
    return blobring.connect(str(stack.socket))


@pytest.fixture
def container(client):
    """A fresh container, deleted afterwards."""
    name = "t" + uuid.uuid4().hex[:12]
    client.create_container(name)
    yield name
    client.delete_container(name, missing_ok=True)
