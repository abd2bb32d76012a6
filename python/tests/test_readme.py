"""The README's "From Python" snippets run as written against the test stack."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_python

README = Path(__file__).resolve().parents[2] / "README.md"


def snippets() -> list[str]:
    text = README.read_text()
    start = text.index("### 6. From Python")
    end = text.index("\n## ", start)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_readme_python_snippets_run(stack, client, tmp_path):
    blocks = snippets()
    assert len(blocks) == 4
    # The script ends with os._exit once every snippet has run (an exception before that still
    # fails the run): pyarrow's I/O pool can release the last Python buffer of a finished
    # read_table (pre-buffered ranges of a PyFileSystem) after the interpreter has begun to
    # finalize; that thread's PyGILState_Ensure then exits the thread through C++ frames and
    # libstdc++ aborts ("terminate called without an active exception", ≈ 1 run in 10–30 on a
    # loaded 2-vCPU machine). That is pyarrow's shutdown race, not the snippets' behaviour.
    script = "\n".join(blocks) + "\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n"
    out = run_python(stack, script, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "missing" in out.stdout  # the BlobNotFound message names the blob
    assert "('a', 4)" in out.stdout and "('b', 2)" in out.stdout  # DuckDB's answer
    assert "b'PAR1'" in out.stdout  # azure-storage-blob through the transport
    assert re.search(r"rows via adlfs: [1-9]", out.stdout), out.stdout  # adlfs on it
    assert bytes(client.get("data", "hello.txt")) == b"v2"
    client.delete_container("data")
