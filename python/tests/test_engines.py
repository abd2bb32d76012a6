"""Polars, DuckDB and a Dask cluster of worker processes read and write through blobring://."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd
import pytest

from blobring.fsspec import BlobringFileSystem


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 100_000
    return pd.DataFrame(
        {
            "k": rng.choice(["p", "q", "r"], n),
            "v": rng.normal(size=n),
            "i": rng.integers(0, 100, n, dtype=np.int64),
        }
    )


def test_polars_through_fsspec_files(stack, container, frame, tmp_path, monkeypatch):
    import polars as pl

    monkeypatch.setenv("BLOBRING_SOCKET", str(stack.socket))
    df = pl.from_pandas(frame)
    for fmt in ("parquet", "csv"):
        url = f"blobring://{container}/pl/t.{fmt}"
        local = tmp_path / f"t.{fmt}"
        with fsspec.open(url, "wb") as f:
            getattr(df, f"write_{fmt}")(f)
        getattr(df, f"write_{fmt}")(local)
        with fsspec.open(url, "rb") as f:
            remote = getattr(pl, f"read_{fmt}")(f)
        assert remote.equals(getattr(pl, f"read_{fmt}")(local))
    with fsspec.open(f"blobring://{container}/pl/t.parquet", "rb") as f:
        agg = pl.read_parquet(f, columns=["k", "v"]).group_by("k").agg(pl.col("v").sum()).sort("k")
    want = frame.groupby("k")["v"].sum().sort_index()
    assert np.allclose(agg["v"].to_numpy(), want.to_numpy())


def test_duckdb_register_filesystem(stack, container, frame, tmp_path):
    import duckdb

    fs = BlobringFileSystem(socket=str(stack.socket))
    con = duckdb.connect()
    con.register_filesystem(fs)
    con.register("frame", frame)
    url = f"blobring://{container}/duck/t.parquet"
    con.sql(f"COPY frame TO '{url}' (FORMAT parquet)")
    con.sql(f"COPY frame TO '{tmp_path / 't.parquet'}' (FORMAT parquet)")
    q = "SELECT k, sum(v) AS v, count(*) AS n FROM read_parquet('{}') GROUP BY k ORDER BY k"
    remote = con.sql(q.format(url)).df()
    local = con.sql(q.format(tmp_path / "t.parquet")).df()
    pd.testing.assert_frame_equal(remote, local)
    assert remote["n"].sum() == len(frame)
    csv = f"blobring://{container}/duck/t.csv"
    con.sql(f"COPY frame TO '{csv}' (FORMAT csv, HEADER)")
    back = con.sql(f"SELECT * FROM read_csv('{csv}') ORDER BY i, k, v").df()
    want = frame.sort_values(["i", "k", "v"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back[["k", "v", "i"]], want, check_dtype=False)


def test_dask_cluster_of_processes(stack, container, frame, tmp_path, monkeypatch):
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    monkeypatch.setenv("BLOBRING_SOCKET", str(stack.socket))
    url = f"blobring://{container}/dask"
    ddf = dd.from_pandas(frame, npartitions=4)
    ddf.to_parquet(url)
    ddf.to_parquet(str(tmp_path / "dask"))
    fs = BlobringFileSystem(socket=str(stack.socket))
    assert len([p for p in fs.ls(url, detail=False) if p.endswith(".parquet")]) == 4
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        remote = (dd.read_parquet(url).groupby("k").agg({"v": "sum", "i": "max"})
                  .compute().sort_index())
        pids = set(client.run(lambda: __import__("os").getpid()).values())
        local = (dd.read_parquet(str(tmp_path / "dask")).groupby("k")
                 .agg({"v": "sum", "i": "max"}).compute(scheduler="sync").sort_index())
        # Each worker process has its own connection to the daemon.
        conns = client.run(_worker_connected)
    assert len(pids) == 2 and all(conns.values()), conns
    pd.testing.assert_frame_equal(remote, local)


def _worker_connected() -> bool:
    import os

    fs = fsspec.filesystem("blobring")
    return fs._client_pid is not None and fs._client_pid[0] == os.getpid()
