"""pandas and pyarrow read and write Parquet and CSV through blobring, equal to local files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from blobring.fsspec import BlobringFileSystem


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    n = 200_000
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "group": rng.choice(["a", "b", "c", "d"], n),
            "x": rng.normal(size=n),
            "y": rng.integers(0, 1000, n, dtype=np.int32),
        }
    )


@pytest.fixture
def bfs(stack):
    return BlobringFileSystem(socket=str(stack.socket))


def test_pandas_parquet_and_csv_by_url(stack, container, frame, tmp_path, monkeypatch):
    monkeypatch.setenv("BLOBRING_SOCKET", str(stack.socket))
    url = f"blobring://{container}/pd/t.parquet"
    frame.to_parquet(url)
    frame.to_parquet(tmp_path / "t.parquet")
    remote = pd.read_parquet(url)
    local = pd.read_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(remote, local)
    pd.testing.assert_frame_equal(remote, frame)
    cols = pd.read_parquet(url, columns=["id", "x"])
    pd.testing.assert_frame_equal(cols, frame[["id", "x"]])

    curl = f"blobring://{container}/pd/t.csv"
    frame.to_csv(curl, index=False)
    frame.to_csv(tmp_path / "t.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv(curl), pd.read_csv(tmp_path / "t.csv"))
    # Byte for byte the same file as the local one.
    with open(tmp_path / "t.csv", "rb") as f:
        assert BlobringFileSystem(socket=str(stack.socket)).cat_file(curl) == f.read()


def test_pyarrow_through_pyfilesystem(bfs, container, frame, tmp_path):
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(bfs))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    path = f"{container}/pa/t.parquet"
    pq.write_table(table, path, filesystem=fs, row_group_size=50_000)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=50_000)
    remote = pq.read_table(path, filesystem=fs)
    assert remote.equals(pq.read_table(tmp_path / "t.parquet"))
    assert remote.equals(table)
    proj = pq.read_table(path, filesystem=fs, columns=["group", "y"])
    assert proj.equals(table.select(["group", "y"]))
    # Footer and metadata, as a query engine plans with them.
    assert pq.ParquetFile(path, filesystem=fs).metadata.num_row_groups == 4
    with fs.open_input_file(path) as f:
        assert f.size() == (tmp_path / "t.parquet").stat().st_size

    # CSV through pyarrow.
    import pyarrow.csv as pacsv

    with fs.open_output_stream(f"{container}/pa/t.csv") as out:
        pacsv.write_csv(table, out)
    with fs.open_input_stream(f"{container}/pa/t.csv") as inp:
        back = pacsv.read_csv(inp)
    assert back.equals(pacsv.read_csv(_write_local_csv(table, tmp_path)))


def _write_local_csv(table: pa.Table, tmp_path) -> str:
    import pyarrow.csv as pacsv

    p = str(tmp_path / "t.csv")
    pacsv.write_csv(table, p)
    return p


def test_pyarrow_partitioned_dataset(bfs, container, frame, tmp_path):
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(bfs))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    base = f"{container}/ds"
    ds.write_dataset(table, base, filesystem=fs, format="parquet", partitioning=["group"],
                     partitioning_flavor="hive")
    ds.write_dataset(table, str(tmp_path / "ds"), format="parquet", partitioning=["group"],
                     partitioning_flavor="hive")
    assert sorted(bfs.ls(base, detail=False)) == [f"{base}/group={g}" for g in "abcd"]

    def agg(d: ds.Dataset) -> pd.DataFrame:
        t = d.to_table(columns=["group", "x", "y"])
        return (
            t.to_pandas()
            .assign(group=lambda f: f["group"].astype(str))
            .groupby("group")
            .agg(x=("x", "sum"), y=("y", "sum"), n=("y", "size"))
            .sort_index()
        )

    remote = agg(ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive"))
    local = agg(ds.dataset(str(tmp_path / "ds"), format="parquet", partitioning="hive"))
    pd.testing.assert_frame_equal(remote, local)
    assert remote["n"].sum() == len(frame)
