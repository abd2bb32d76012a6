#!/usr/bin/env python
"""blobring from Python, side by side with what Python users run today, in one run.

Starts its own stack (blobring-host on an fs store with its REST front end on loopback, plus
blobringd), writes the test blobs, warms the page cache, then measures on the same bytes:

1. a large blob read by N processes (each its own part): native zero-copy gets, fsspec
   ``cat_file``, azure-storage-blob (``download_blob(max_concurrency=8)``) over HTTP and through
   ``BlobringTransport``, adlfs over HTTP, obstore over HTTP — GB/s and CPU s/GB (client
   processes + daemon + host);
2. 4 KiB random ranged reads with 64 in flight, one process: requests/s per path;
3. ``pyarrow.parquet.read_table`` of a Parquet file, whole and a two-column projection:
   blobring fsspec vs adlfs.

HTTP here is plain loopback HTTP to the same host process (no TLS), so it flatters HTTP.

    python python/bench/bench.py [--size-mib 1024] [--procs 4] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import make_stack  # noqa: E402

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "bench"
MIB = 1 << 20


def conn_str(url: str) -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={KEY};BlobEndpoint={url}/devstoreaccount1;"
    )


def proc_cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------- readers
# Each reads bytes [start, end) of the blob and returns the bytes it received.


_CACHE: dict = {}


def cached(key: str, make):
    """One client per process and path, made during the warm-up call (outside the timing)."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def read_native(env: dict, start: int, end: int) -> int:
    import blobring

    c = cached("native", lambda: blobring.connect(env["socket"]))
    chunk = 4 * MIB
    ranges = [(s, min(s + chunk, end)) for s in range(start, end, chunk)]

    def one(r: tuple[int, int]) -> int:
        b = c.get(CONTAINER, "big", r)  # zero copy: a view of the arena
        return len(memoryview(b))

    with cf.ThreadPoolExecutor(8) as ex:
        return sum(ex.map(one, ranges))


def read_fsspec(env: dict, start: int, end: int) -> int:
    from blobring.fsspec import BlobringFileSystem

    fs = cached("fsspec", lambda: BlobringFileSystem(socket=env["socket"]))
    return len(fs.cat_file(f"{CONTAINER}/big", start=start, end=end))


def read_azure_http(env: dict, start: int, end: int) -> int:
    from azure.storage.blob import BlobServiceClient

    svc = cached("azhttp", lambda: BlobServiceClient.from_connection_string(conn_str(env["http"])))
    b = svc.get_blob_client(CONTAINER, "big")
    return len(b.download_blob(offset=start, length=end - start, max_concurrency=8).readall())


def read_azure_transport(env: dict, start: int, end: int) -> int:
    from azure.storage.blob import BlobServiceClient

    from blobring.azure import BlobringTransport

    svc = cached(
        "aztransport",
        lambda: BlobServiceClient.from_connection_string(
            conn_str("http://127.0.0.1:10000"),
            transport=BlobringTransport(env["socket"]),
            **BlobringTransport.client_options(),
        ),
    )
    b = svc.get_blob_client(CONTAINER, "big")
    return len(b.download_blob(offset=start, length=end - start, max_concurrency=8).readall())


def read_adlfs(env: dict, start: int, end: int) -> int:
    import adlfs

    fs = cached("adlfs", lambda: adlfs.AzureBlobFileSystem(connection_string=conn_str(env["http"])))
    return len(fs.cat_file(f"{CONTAINER}/big", start=start, end=end))


def read_obstore(env: dict, start: int, end: int) -> int:
    import obstore
    from obstore.store import AzureStore

    store = cached(
        "obstore",
        lambda: AzureStore(
            CONTAINER,
            account_name="devstoreaccount1",
            account_key=KEY,
            endpoint=f"{env['http']}/devstoreaccount1",
            allow_http=True,
        ),
    )
    chunk = 4 * MIB
    starts = list(range(start, end, chunk))
    ends = [min(s + chunk, end) for s in starts]
    got = obstore.get_ranges(store, "big", starts=starts, ends=ends)
    return sum(len(memoryview(g)) for g in got)


READERS = {
    "blobring native (zero copy)": read_native,
    "blobring fsspec cat_file": read_fsspec,
    "azure-storage-blob via BlobringTransport": read_azure_transport,
    "azure-storage-blob over HTTP": read_azure_http,
    "adlfs over HTTP": read_adlfs,
    "obstore over HTTP": read_obstore,
}


def _worker(name: str, env: dict, start: int, end: int, barrier, q) -> None:
    fn = READERS[name]
    try:
        fn(env, start, min(end, start + MIB))  # connect and import outside the timing
        barrier.wait()
        c0, t0 = self_cpu(), time.perf_counter()
        n = fn(env, start, end)
        q.put((n, time.perf_counter() - t0, self_cpu() - c0, None))
    except BaseException as e:  # noqa: BLE001
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass
        q.put((0, 0.0, 0.0, f"{type(e).__name__}: {e}"))


def big_read(name: str, env: dict, size: int, procs: int, servers: list[int]) -> dict:
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(procs + 1), ctx.Queue()
    part = size // procs
    ps = [
        ctx.Process(target=_worker, args=(name, env, i * part, (i + 1) * part, barrier, q))
        for i in range(procs)
    ]
    for p in ps:
        p.start()
    try:
        barrier.wait(timeout=120)
    except Exception:  # noqa: BLE001
        pass
    s0 = sum(proc_cpu(pid) for pid in servers)
    t0 = time.perf_counter()
    res = [q.get(timeout=600) for _ in ps]
    wall = time.perf_counter() - t0
    s1 = sum(proc_cpu(pid) for pid in servers)
    for p in ps:
        p.join()
    errs = [r[3] for r in res if r[3]]
    if errs:
        return {"path": name, "error": errs[0]}
    n = sum(r[0] for r in res)
    gb = n / 1e9
    client_cpu = sum(r[2] for r in res)
    return {
        "path": name,
        "bytes": n,
        "seconds": wall,
        "gb_per_s": gb / wall,
        "client_cpu_s_per_gb": client_cpu / gb,
        "server_cpu_s_per_gb": (s1 - s0) / gb,
        "cpu_s_per_gb": (client_cpu + s1 - s0) / gb,
    }


# ---------------------------------------------------------------------------- 4 KiB reads


def small_reads(env: dict, size: int, seconds: float) -> list[dict]:
    rng = random.Random(1)
    batches = [
        [(o, o + 4096) for o in (rng.randrange(0, size // 4096) * 4096 for _ in range(64))]
        for _ in range(64)
    ]
    out = []

    def measure(name: str, run_batch) -> None:
        try:
            run_batch(batches[0])
            n, i, t0 = 0, 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                got = run_batch(batches[i % len(batches)])
                assert len(got) == 64 and all(len(g) == 4096 for g in got)
                n += 64
                i += 1
            out.append({"path": name, "requests_per_s": n / (time.perf_counter() - t0)})
        except Exception as e:  # noqa: BLE001
            out.append({"path": name, "error": f"{type(e).__name__}: {e}"})

    import blobring
    from blobring.fsspec import BlobringFileSystem

    c = blobring.connect(env["socket"])
    measure("blobring native get_ranges", lambda b: c.get_ranges(CONTAINER, "big", b))
    fs = BlobringFileSystem(socket=env["socket"], skip_instance_cache=True)
    p = f"{CONTAINER}/big"
    measure(
        "blobring fsspec cat_ranges",
        lambda b: fs.cat_ranges([p] * 64, [s for s, _ in b], [e for _, e in b]),
    )
    from azure.storage.blob import BlobServiceClient

    blob = BlobServiceClient.from_connection_string(conn_str(env["http"])).get_blob_client(
        CONTAINER, "big"
    )
    ex = cf.ThreadPoolExecutor(64)
    measure(
        "azure-storage-blob over HTTP (64 threads)",
        lambda b: list(
            ex.map(lambda r: blob.download_blob(offset=r[0], length=4096).readall(), b)
        ),
    )
    try:
        import adlfs

        afs = adlfs.AzureBlobFileSystem(
            connection_string=conn_str(env["http"]), skip_instance_cache=True
        )
        measure(
            "adlfs cat_ranges over HTTP",
            lambda b: afs.cat_ranges([p] * 64, [s for s, _ in b], [e for _, e in b]),
        )
    except ImportError as e:
        out.append({"path": "adlfs cat_ranges over HTTP", "error": str(e)})
    return out


# ---------------------------------------------------------------------------- Parquet


def parquet(env: dict, rows: int) -> list[dict]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from blobring.fsspec import BlobringFileSystem

    rng = np.random.default_rng(0)
    table = pa.table(
        {f"c{i}": rng.normal(size=rows) for i in range(8)}
        | {"k": rng.integers(0, 1000, rows)}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=1 << 20, compression="none")
    import blobring

    blobring.connect(env["socket"]).put(CONTAINER, "t.parquet", buf.getvalue())
    size = len(buf.getvalue())
    filesystems = {
        "blobring fsspec": BlobringFileSystem(socket=env["socket"], skip_instance_cache=True),
    }
    try:
        import adlfs

        filesystems["adlfs over HTTP"] = adlfs.AzureBlobFileSystem(
            connection_string=conn_str(env["http"]), skip_instance_cache=True
        )
    except ImportError:
        pass
    out = []
    for name, fs in filesystems.items():
        pfs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
        for what, cols in (("whole", None), ("2 columns", ["c0", "k"])):
            try:
                pq.read_table(f"{CONTAINER}/t.parquet", filesystem=pfs, columns=cols)
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    t = pq.read_table(f"{CONTAINER}/t.parquet", filesystem=pfs, columns=cols)
                    best = min(best, time.perf_counter() - t0)
                assert t.num_rows == rows
                out.append({"path": name, "read": what, "file_bytes": size, "seconds": best})
            except Exception as e:  # noqa: BLE001
                out.append({"path": name, "read": what, "error": f"{type(e).__name__}: {e}"})
    return out


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="large blob size (default 1024)")
    ap.add_argument("--procs", type=int, default=4, help="reading processes (default 4)")
    ap.add_argument("--small-seconds", type=float, default=3.0)
    ap.add_argument("--parquet-rows", type=int, default=3_500_000, help="~256 MiB at 9 columns")
    ap.add_argument("--only", help="comma-separated substrings of large-read paths to run")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args()

    stack = make_stack(arena_mib=256, host_args=("--http", "127.0.0.1:0"))
    env = {"socket": str(stack.socket), "http": stack.http_url}
    os.environ["BLOBRING_SOCKET"] = env["socket"]
    try:
        import blobring

        c = blobring.connect(env["socket"])
        c.create_container(CONTAINER, exist_ok=True)
        size = args.size_mib * MIB
        src = stack.dir / "src.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        c.upload_file(CONTAINER, "big", str(src))
        src.unlink()
        for s in range(0, size, 32 * MIB):  # warm the page cache
            c.get(CONTAINER, "big", (s, min(s + 32 * MIB, size)))
        servers = [stack.daemon.pid, stack.host.pid]
        names = [n for n in READERS if not args.only or any(o in n for o in args.only.split(","))]
        large = [big_read(n, env, size, args.procs, servers) for n in names]
        small = small_reads(env, size, args.small_seconds)
        pq_res = parquet(env, args.parquet_rows)
    finally:
        stack.stop()
        shutil.rmtree(stack.dir, ignore_errors=True)

    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "large_read": {"size_bytes": size, "procs": args.procs, "results": large},
        "small_reads": small,
        "parquet": pq_res,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{args.size_mib} MiB read by {args.procs} processes (each its part), loopback, "
          f"{os.cpu_count()} CPUs")
    print(f"  {'path':44} {'GB/s':>7} {'CPU s/GB':>9} {'client':>7} {'servers':>8}")
    path = lambda r: f"{r['path']:44}"  # noqa: E731
    print_rows(large, path, lambda r: f"{r['gb_per_s']:7.2f} {r['cpu_s_per_gb']:9.2f} "
               f"{r['client_cpu_s_per_gb']:7.2f} {r['server_cpu_s_per_gb']:8.2f}")
    print("4 KiB random ranged reads, 64 in flight, one process")
    print_rows(small, path, lambda r: f"{r['requests_per_s']:9.0f} req/s")
    print("pyarrow.parquet.read_table (best of 3)")
    print_rows(pq_res, lambda r: f"{r['path']:24} {r['read']:10}",
               lambda r: f"{r['seconds']:6.2f} s ({r['file_bytes'] / MIB:.0f} MiB file)")


def print_rows(rows: list[dict], label, figures) -> None:
    """One line a result: its label, then its figures (or its error)."""
    for r in rows:
        shown = f"error: {r['error'][:60]}" if "error" in r else figures(r)
        print(f"  {label(r)} {shown}")


if __name__ == "__main__":
    main()
