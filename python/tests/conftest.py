"""A real stack for the tests: blobring-host on an fs store plus blobringd.

Started by ``blobring-test-stack`` (the tests crate's front end to the one stack launcher,
``blobring_ctl::stack``), which prints the stack's sockets as JSON once it is ready, takes
``kill-daemon`` / ``start-daemon`` on its stdin, and kills both processes when its stdin
closes. The binaries come from ``$BLOBRING_BIN_DIR`` (default: the workspace's
``target/release``, which ``scripts/test.sh`` builds). Both bind only a unix socket in a
temporary directory (the host's REST front end, when asked for, binds 127.0.0.1). Started once
per session and killed at the end; tests that kill the daemon use their own stack
(``make_stack``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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
            f"{p} not found: build it first (cargo build --release --workspace --bins) "
            f"or set BLOBRING_BIN_DIR"
        )
    return str(p)


class Stack:
    """blobring-host (fs store) + blobringd in ``dir``; ``socket`` is the client socket."""

    def __init__(self, dir: Path, arena_mib: int = 64, host_args: tuple[str, ...] = ()):
        self.dir = dir
        self.store = dir / "store"
        env = {
            **os.environ,
            "BLOBRING_HOST_BIN": _bin("blobring-host"),
            "BLOBRINGD_BIN": _bin("blobringd"),
        }
        self._launcher = subprocess.Popen(
            [
                _bin("blobring-test-stack"),
                "--dir",
                str(dir),
                "--arena-mib",
                str(arena_mib),
                *(f"--host-arg={a}" for a in host_args),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        info = self._answer()
        self.socket = Path(info["socket"])
        self.ctl = Path(info["ctl"])
        self.http_url: str | None = info["http_url"]

    def _answer(self) -> dict:
        line = self._launcher.stdout.readline()
        if not line:
            code = self._launcher.wait()
            raise RuntimeError(f"blobring-test-stack exited ({code}); its error is on stderr")
        return json.loads(line)

    def _command(self, cmd: str) -> dict:
        self._launcher.stdin.write(cmd + "\n")
        self._launcher.stdin.flush()
        return self._answer()

    def start_daemon(self, arena_mib: int = 64) -> None:
        self._command(f"start-daemon {arena_mib}")

    def kill_daemon(self) -> None:
        self._command("kill-daemon")

    def stop(self) -> None:
        if self._launcher.poll() is None:
            self._launcher.stdin.close()
            self._launcher.wait(timeout=30)


def run_python(stack: Stack, code: str, **kw) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter of this venv, connected to `stack` through
    ``BLOBRING_SOCKET``; output captured as text (`kw`: more `subprocess.run` arguments)."""
    env = {**os.environ, "BLOBRING_SOCKET": str(stack.socket)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, **kw)


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
