"""azure-storage-blob and pyarrow through `blobring gateway`, compared with the host's REST
front end.

Run by tests/tests/gateway.rs with the venv that ./scripts/test.sh fills (target/venv):

    python gateway_compare.py GATEWAY_AUTHORITY DIRECT_AUTHORITY

The same scenario runs against both endpoints (each on its own container of the same store):
uploads and downloads above 64 MiB, ranged reads, block lists, listing with prefix and
delimiter, metadata, conditional requests, deletes, errors. Every answer is reduced to an
outcome (status or error code, the headers that matter, a body digest) and the two transcripts
must be identical. Then pyarrow's AzureFileSystem writes and reads a Parquet dataset through the
gateway. Exit status 0 when all agree; otherwise the differences are printed.
"""

import hashlib
import os
import sys

from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotModifiedError
from azure.core import MatchConditions
from azure.storage.blob import BlobBlock, BlobServiceClient, ContentSettings

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ACCOUNT = "devstoreaccount1"
MIB = 1 << 20


def conn(authority):
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://{authority}/{ACCOUNT};"
    )


def digest(b):
    return f"len={len(b)} md5={hashlib.md5(b).hexdigest()}"


def pattern(n, seed):
    block = hashlib.sha256(bytes([seed])).digest() * (MIB // 32)
    return (block * (n // len(block) + 1))[:n]


def outcome(f):
    """Runs f; its result, or the error as (status, code)."""
    try:
        return ("ok", f())
    except ResourceNotModifiedError as e:
        return ("err", e.status_code, "not-modified")
    except HttpResponseError as e:
        return ("err", e.status_code, e.error_code)


def props(p):
    return {
        "size": p.size,
        "type": p.content_settings.content_type,
        "md5": (p.content_settings.content_md5 or b"").hex(),
        "blob_type": str(p.blob_type),
        "metadata": dict(sorted((p.metadata or {}).items())),
        "etag": bool(p.etag),
    }


def scenario(authority, container):
    # The SDK's defaults: its first GET of a download is a 32 MiB range and it uploads up to
    # 64 MiB as one Put Blob, both more than one blobring request carries (the gateway uses
    # body windows and body parts).
    svc = BlobServiceClient.from_connection_string(conn(authority))
    c = svc.get_container_client(container)
    out = []
    rec = lambda name, f: out.append((name, outcome(f)))
    rec("create", lambda: c.create_container() and None)
    rec("create again", lambda: c.create_container() and None)
    big = pattern(70 * MIB, 1)
    rec("upload 70 MiB", lambda: c.upload_blob("big/one.bin", big, overwrite=True) and None)
    rec("download 70 MiB", lambda: digest(c.download_blob("big/one.bin", max_concurrency=4).readall()))
    rec("range", lambda: digest(c.download_blob("big/one.bin", offset=5 * MIB + 3, length=1000).readall()))
    rec("range tail", lambda: digest(c.download_blob("big/one.bin", offset=70 * MIB - 10).readall()))
    rec("range past end", lambda: digest(c.download_blob("big/one.bin", offset=71 * MIB, length=5).readall()))
    rec("props", lambda: props(c.get_blob_client("big/one.bin").get_blob_properties()))
    mid = pattern(40 * MIB + 7, 5)
    rec("upload 40 MiB", lambda: c.upload_blob("big/mid.bin", mid, overwrite=True) and None)
    rec("download 40 MiB, one stream", lambda: digest(c.download_blob("big/mid.bin").readall()))
    small = pattern(3000, 2)
    rec(
        "upload small with metadata",
        lambda: c.upload_blob(
            "a/b/c.txt",
            small,
            metadata={"k": "v", "other": "x y"},
            content_settings=ContentSettings(content_type="text/plain"),
            overwrite=True,
        )
        and None,
    )
    rec("small", lambda: digest(c.download_blob("a/b/c.txt").readall()))
    rec("small props", lambda: props(c.get_blob_client("a/b/c.txt").get_blob_properties()))
    rec("set metadata", lambda: c.get_blob_client("a/b/c.txt").set_blob_metadata({"n": "1"}) and None)
    rec("metadata", lambda: c.get_blob_client("a/b/c.txt").get_blob_properties().metadata)
    for n in ["a/b/d.txt", "a/e.txt", "a/f/g.txt", "z.txt"]:
        rec("upload " + n, lambda n=n: c.upload_blob(n, n.encode(), overwrite=True) and None)
    rec("list prefix", lambda: [b.name for b in c.list_blobs(name_starts_with="a/")])
    rec("walk delimiter", lambda: [b.name for b in c.walk_blobs(name_starts_with="a/", delimiter="/")])
    rec("list sizes", lambda: [(b.name, b.size) for b in c.list_blobs()])
    # Block lists
    bc = c.get_blob_client("blocks.bin")
    ids = [f"{i:06d}" for i in range(3)]
    parts = [pattern(1 * MIB + i, 10 + i) for i in range(3)]
    for i, p in zip(ids, parts):
        rec("stage " + i, lambda i=i, p=p: bc.stage_block(i, p) and None)
    rec("uncommitted", lambda: [(b.id, b.size) for b in bc.get_block_list("uncommitted")[1]])
    rec("commit", lambda: bc.commit_block_list([BlobBlock(block_id=i) for i in ids]) and None)
    rec("committed", lambda: [(b.id, b.size) for b in bc.get_block_list("committed")[0]])
    rec("blocks body", lambda: digest(bc.download_blob().readall()))
    rec("commit unknown", lambda: bc.commit_block_list([BlobBlock(block_id="nope00")]) and None)
    # Conditional requests
    etag = bc.get_blob_properties().etag
    rec("if-match ok", lambda: digest(bc.download_blob(etag=etag, match_condition=MatchConditions.IfNotModified).readall()))
    rec("if-match stale", lambda: digest(bc.download_blob(etag='"0x1"', match_condition=MatchConditions.IfNotModified).readall()))
    rec("if-none-match", lambda: digest(bc.download_blob(etag=etag, match_condition=MatchConditions.IfModified).readall()))
    rec("create-only exists", lambda: c.upload_blob("z.txt", b"new", overwrite=False) and None)
    rec("put if-match stale", lambda: c.get_blob_client("z.txt").upload_blob(b"q", overwrite=True, etag='"0x1"', match_condition=MatchConditions.IfNotModified) and None)
    # Deletes and errors
    rec("delete", lambda: c.delete_blob("z.txt"))
    rec("delete again", lambda: c.delete_blob("z.txt"))
    rec("get missing", lambda: digest(c.download_blob("z.txt").readall()))
    rec("props missing", lambda: props(c.get_blob_client("z.txt").get_blob_properties()))
    rec("missing container", lambda: [b.name for b in svc.get_container_client("nope-" + container).list_blobs()])
    rec("delete container", lambda: c.delete_container())
    return out


def parquet(authority):
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs = pafs.AzureFileSystem(
        account_name=ACCOUNT,
        account_key=KEY,
        blob_storage_authority=authority,
        blob_storage_scheme="http",
        dfs_storage_authority=authority,
        dfs_storage_scheme="http",
    )
    fs.create_dir("pqdata")
    n = 300_000
    t = pa.table({"x": list(range(n)), "k": [i % 7 for i in range(n)], "s": [str(i % 97) for i in range(n)]})
    pq.write_to_dataset(t, "pqdata/ds", filesystem=fs, partition_cols=["k"])
    back = ds.dataset("pqdata/ds", filesystem=fs, format="parquet", partitioning="hive").to_table()
    back = back.select(["x", "k", "s"]).sort_by("x")
    want = t.sort_by("x")
    same = back.num_rows == n and back.column("x").equals(want.column("x")) and back.column("s").equals(want.column("s"))
    if not same:
        print(f"pyarrow dataset through the gateway: {back.num_rows} rows read back, not the {n} written")
        return False
    files = fs.get_file_info(pafs.FileSelector("pqdata/ds", recursive=True))
    print(f"pyarrow: {n} rows in {sum(1 for f in files if f.type == pafs.FileType.File)} Parquet files through the gateway")
    return True


def main():
    gateway, direct = sys.argv[1], sys.argv[2]
    a = scenario(gateway, "pygw")
    b = scenario(direct, "pydirect")
    bad = [(x, y) for x, y in zip(a, b) if x != y]
    if len(a) != len(b):
        bad.append((("steps", len(a)), ("steps", len(b))))
    for x, y in bad:
        print(f"DIFFERS: {x[0]}\n  gateway: {x[1]}\n  direct:  {y[1]}")
    for name, o in a:
        print(f"  {name}: {str(o)[:110]}")
    print(f"{len(a)} steps compared, {len(bad)} differ")
    ok = parquet(gateway)
    sys.exit(0 if ok and not bad else 1)


if __name__ == "__main__":
    main()
