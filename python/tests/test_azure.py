"""azure-storage-blob, unchanged, through blobring.azure.BlobringTransport: every answer
compared with the same calls over HTTP to the host's REST front end (same store)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import numpy as np
import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import BlobBlock, BlobServiceClient

from blobring.azure import AsyncBlobringTransport, BlobringTransport

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def conn_str(url: str) -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={KEY};BlobEndpoint={url}/devstoreaccount1;"
    )


def scenario(svc: BlobServiceClient, container: str) -> list:
    """Every step's answer, with what differs between two runs (dates, ETags) left out."""
    out: list = []
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, 70 << 20, dtype=np.uint8).tobytes()
    cc = svc.create_container(container)
    with pytest.raises(ResourceExistsError):
        svc.create_container(container)
    b = cc.get_blob_client("big.bin")
    b.upload_blob(big, max_concurrency=4)
    got = b.download_blob(max_concurrency=8).readall()
    out.append(("big", len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(big).hexdigest()))
    out.append(("range", b.download_blob(offset=5 << 20, length=1000).readall() == big[5 << 20 : (5 << 20) + 1000]))
    out.append(("range2", b.download_blob(offset=(70 << 20) - 10).readall() == big[-10:]))
    props = b.get_blob_properties()
    out.append(("size", props.size))
    # Block lists.
    bb = cc.get_blob_client("blocks")
    ids = [f"{i:06d}" for i in range(3)]
    for i, bid in enumerate(ids):
        bb.stage_block(bid, f"block{i}-".encode())
    committed, uncommitted = bb.get_block_list("all")
    out.append(("uncommitted", sorted(x.id for x in uncommitted), len(committed)))
    bb.commit_block_list([BlobBlock(block_id=ids[2]), BlobBlock(block_id=ids[0])])
    out.append(("committed", bb.download_blob().readall()))
    # Listing with prefix and delimiter.
    for n in ["d/a", "d/b", "d/e/f", "g"]:
        cc.upload_blob(n, n.encode())
    out.append(("list", sorted(x.name for x in cc.list_blobs(name_starts_with="d/"))))
    out.append(("walk", sorted(x.name for x in cc.walk_blobs(delimiter="/"))))
    # Metadata.
    m = cc.get_blob_client("g")
    m.set_blob_metadata({"k": "v", "n": "1"})
    out.append(("meta", sorted(m.get_blob_properties().metadata.items())))
    # Conditional requests.
    etag = m.get_blob_properties().etag
    m.upload_blob(b"new", overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceModifiedError):
        m.upload_blob(b"newer", overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceExistsError):
        m.upload_blob(b"x", overwrite=False)
    out.append(("cond", m.download_blob().readall()))
    # Deletes.
    m.delete_blob()
    with pytest.raises(ResourceNotFoundError):
        m.download_blob().readall()
    with pytest.raises(ResourceNotFoundError):
        m.delete_blob()
    out.append(("after-delete", sorted(x.name for x in cc.list_blobs())))
    out.append(("containers", container in [c.name for c in svc.list_containers()]))
    svc.delete_container(container)
    with pytest.raises(ResourceNotFoundError):
        cc.get_container_properties()
    return out


def test_azure_storage_blob_scenario_matches_http(stack):
    assert stack.http_url
    over_http = BlobServiceClient.from_connection_string(
        conn_str(stack.http_url), **BlobringTransport.client_options()
    )
    over_blobring = BlobServiceClient.from_connection_string(
        conn_str("http://127.0.0.1:10000"),
        transport=BlobringTransport(str(stack.socket)),
        **BlobringTransport.client_options(),
    )
    a = scenario(over_http, "az" + uuid.uuid4().hex[:10])
    b = scenario(over_blobring, "az" + uuid.uuid4().hex[:10])
    assert a == b
    assert ("big", 70 << 20, True) in b


def test_async_transport(stack):
    from azure.storage.blob.aio import BlobServiceClient as AsyncService

    async def main() -> list:
        async with AsyncService.from_connection_string(
            conn_str("http://127.0.0.1:10000"),
            transport=AsyncBlobringTransport(str(stack.socket)),
            **AsyncBlobringTransport.client_options(),
        ) as svc:
            name = "aa" + uuid.uuid4().hex[:10]
            cc = await svc.create_container(name)
            data = bytes(range(256)) * 40_000  # ~10 MiB: several ranged reads
            await cc.upload_blob("x", data)
            got = await (await cc.get_blob_client("x").download_blob(max_concurrency=4)).readall()
            names = [b.name async for b in cc.list_blobs()]
            await svc.delete_container(name)
            return [got == data, names]

    assert asyncio.run(main()) == [True, ["x"]]


def test_transport_without_daemon_is_a_service_request_error(tmp_path):
    svc = BlobServiceClient.from_connection_string(
        conn_str("http://127.0.0.1:10000"),
        transport=BlobringTransport(str(tmp_path / "none.sock")),
        retry_total=0,
    )
    with pytest.raises(ServiceRequestError, match="blobring up"):
        svc.get_container_client("c").get_container_properties()


def test_send_raw_refuses_header_injection(client):
    with pytest.raises(ValueError, match="invalid HTTP header"):
        client.send_raw("GET", "/devstoreaccount1/c", [("x-ms-version", "1\r\nEvil: 1")])
    with pytest.raises(ValueError, match="invalid request target"):
        client.send_raw("GET", "/a b", [])
    with pytest.raises(ValueError, match="invalid HTTP method"):
        client.send_raw("GE T", "/", [])


def test_adlfs_on_the_transport_reads_and_lists_a_parquet_dataset(stack, client, container, tmp_path):
    """adlfs, unchanged, on an azure-storage-blob client that uses the blobring transport (adlfs
    takes no transport argument; its service client is the one place it talks to Blob). The
    endpoint points where nothing listens, so every request went over blobring."""
    import adlfs
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from azure.storage.blob.aio import BlobServiceClient as AioBlobServiceClient

    df = pd.DataFrame(
        {"k": np.arange(50_000) % 17, "v": np.arange(50_000, dtype=np.float64) * 0.5}
    )
    local = tmp_path / "ds.parquet"
    pq.write_table(pa.Table.from_pandas(df), local, row_group_size=10_000)
    client.put(container, "data/ds.parquet", local.read_bytes())
    nowhere = conn_str("http://127.0.0.1:9")
    fs = adlfs.AzureBlobFileSystem(connection_string=nowhere, skip_instance_cache=True)
    fs.service_client = AioBlobServiceClient.from_connection_string(
        nowhere,
        transport=AsyncBlobringTransport(str(stack.socket)),
        **AsyncBlobringTransport.client_options(),
    )
    assert fs.ls(f"{container}/data") == [f"{container}/data/ds.parquet"]
    assert fs.info(f"{container}/data/ds.parquet")["size"] == local.stat().st_size
    got = pq.read_table(f"{container}/data/ds.parquet", filesystem=fs).to_pandas()
    pd.testing.assert_frame_equal(got, df)
    # And a write through adlfs, read back natively.
    with fs.open(f"{container}/data/copy.parquet", "wb") as f:
        f.write(local.read_bytes())
    assert bytes(client.get(container, "data/copy.parquet")) == local.read_bytes()
