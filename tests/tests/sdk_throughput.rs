//! One-run throughput comparison of a 1 GiB download (run with `--release --nocapture` to see
//! the figures): the striped SDK through blobringd, object_store's HTTP client on the host's
//! REST front end, and object_store through the blobring connector. Asserts the bytes match;
//! the figures are printed, not asserted (machines differ).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blobring::blob::{AccountConfig, BlobService, PutOptions};
use blobring::transfer::{self, TransferOptions};
use blobring::{Client, block_on};
use common::scratch_stack;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

const SIZE: usize = 1 << 30;
const CHUNK: usize = 4 << 20;

async fn parallel_ranges(store: Arc<dyn ObjectStore>, path: &Path, par: usize) -> u64 {
    let mut crc = 0u64;
    let mut next = 0usize;
    let mut inflight = std::collections::VecDeque::new();
    let mut d = crc64fast_nvme::Digest::new();
    while next < SIZE || !inflight.is_empty() {
        while inflight.len() < par && next < SIZE {
            let (s, p, r) = (
                store.clone(),
                path.clone(),
                next as u64..(next + CHUNK) as u64,
            );
            inflight.push_back(tokio::spawn(async move { s.get_range(&p, r).await }));
            next += CHUNK;
        }
        let b = inflight.pop_front().unwrap().await.unwrap().unwrap();
        d.write(&b);
        crc = d.sum64();
    }
    crc
}

#[test]
fn one_gib_download_sdk_vs_object_store() {
    let (_dir, s) = scratch_stack(
        &["--http", "127.0.0.1:0", "--container", "bench"],
        &["--arena-size", "134217728"],
    );
    let url = format!(
        "{}/devstoreaccount1",
        s.http_url.clone().expect("--http url")
    );
    let client = Client::connect(&s.daemon.socket).unwrap();
    let svc = BlobService::new(client.clone(), AccountConfig::emulator())
        .with_timeout(Duration::from_secs(60));
    let mut data = vec![0u8; SIZE];
    let mut x = 0x1234_5678_9abc_def1u64;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let want = blobring::blob::crc64(&data);
    block_on(transfer::upload_from_slice(
        &svc,
        "bench",
        "g.bin",
        &data,
        &PutOptions::default(),
        &TransferOptions::default(),
    ))
    .unwrap();
    drop(data);

    let gbps = |t: Duration| SIZE as f64 / t.as_secs_f64() / 1e9;
    // 1. striped SDK
    let t = Instant::now();
    // Sweep knobs (defaults = the SDK's defaults).
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let mut topts = TransferOptions::default();
    if let Some(c) = env("BLOBRING_BENCH_CHUNK_MIB") {
        topts.chunk_size = c << 20;
    }
    if let Some(p) = env("BLOBRING_BENCH_PARALLEL") {
        topts.parallelism = p as usize;
    }
    let got = block_on(transfer::download_to_vec(&svc, "bench", "g.bin", &topts)).unwrap();
    let sdk = t.elapsed();
    assert_eq!(blobring::blob::crc64(&got), want);
    drop(got);
    // 1b. striped SDK as a stream of zero-copy chunks (CRC computed on the fly, as the
    // object_store rows below do: no 1 GiB buffer to fill)
    let t = Instant::now();
    let c = block_on(async {
        use futures_util::TryStreamExt;
        let mut d = transfer::Download::start(&svc, "bench", "g.bin", &topts)
            .await
            .unwrap();
        let mut digest = crc64fast_nvme::Digest::new();
        while let Some(b) = d.try_next().await.unwrap() {
            digest.write(&b);
        }
        digest.sum64()
    });
    let sdk_stream = t.elapsed();
    assert_eq!(c, want);
    if std::env::var_os("BLOBRING_BENCH_ONLY_SDK").is_some() {
        // Sweep aid: the SDK rows only.
        println!(
            "  SDK {} MiB x {}: download_to_vec {:.2} GB/s, zero-copy stream {:.2} GB/s",
            topts.chunk_size >> 20,
            topts.parallelism,
            gbps(sdk),
            gbps(sdk_stream)
        );
        return;
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let path = Path::from("g.bin");
    let builder = || {
        MicrosoftAzureBuilder::new()
            .with_account(blobring::blob::EMULATOR_ACCOUNT)
            .with_access_key(blobring::blob::EMULATOR_KEY)
            .with_container_name("bench")
            .with_endpoint(url.clone())
            .with_allow_http(true)
    };
    // 2. object_store over HTTP (one GET; then 8 parallel 4 MiB ranges)
    let http: Arc<dyn ObjectStore> = Arc::new(builder().build().unwrap());
    let t = Instant::now();
    let b = rt.block_on(async { http.get(&path).await.unwrap().bytes().await.unwrap() });
    let http_single = t.elapsed();
    assert_eq!(blobring::blob::crc64(&b), want);
    drop(b);
    let t = Instant::now();
    let c = rt.block_on(parallel_ranges(http.clone(), &path, 8));
    let http_par = t.elapsed();
    assert_eq!(c, want);
    // 3. object_store through the connector (8 parallel 4 MiB ranges)
    let conn: Arc<dyn ObjectStore> = Arc::new(
        builder()
            .with_http_connector(
                blobring::connector::BlobringConnector::new(client)
                    .with_account(AccountConfig::emulator()),
            )
            .build()
            .unwrap(),
    );
    let t = Instant::now();
    let c = rt.block_on(parallel_ranges(conn.clone(), &path, 8));
    let conn_par = t.elapsed();
    assert_eq!(c, want);
    // 4. object_store through the connector, one whole-object GET (streamed by the SDK)
    let t = Instant::now();
    let c = rt.block_on(async {
        use futures_util::StreamExt;
        let mut s = conn.get(&path).await.unwrap().into_stream();
        let mut digest = crc64fast_nvme::Digest::new();
        while let Some(b) = s.next().await {
            digest.write(&b.unwrap());
        }
        digest.sum64()
    });
    let conn_single = t.elapsed();
    assert_eq!(c, want);

    println!("1 GiB download, one run:");
    println!(
        "  blobring striped SDK ({} MiB x {})        {:.2} GB/s",
        topts.chunk_size >> 20,
        topts.parallelism,
        gbps(sdk)
    );
    println!(
        "  blobring striped SDK, zero-copy stream    {:.2} GB/s",
        gbps(sdk_stream)
    );
    println!(
        "  object_store HTTP, one GET                {:.2} GB/s",
        gbps(http_single)
    );
    println!(
        "  object_store HTTP, 8 x 4 MiB ranges       {:.2} GB/s",
        gbps(http_par)
    );
    println!(
        "  object_store via connector, 8 x 4 MiB     {:.2} GB/s",
        gbps(conn_par)
    );
    println!(
        "  object_store via connector, one GET       {:.2} GB/s",
        gbps(conn_single)
    );
    let r = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!(
        "  ratios: SDK / HTTP-parallel {:.2}, SDK-stream / HTTP-parallel {:.2}, \
         connector / HTTP-parallel {:.2}, SDK / connector {:.2}, SDK-stream / connector {:.2}, \
         SDK / HTTP-one-GET {:.2}",
        r(sdk, http_par),
        r(sdk_stream, http_par),
        r(conn_par, http_par),
        r(sdk, conn_par),
        r(sdk_stream, conn_par),
        r(sdk, http_single)
    );
}
