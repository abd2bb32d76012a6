//! Building and signing a request head allocates nothing in steady state (issue #15 step 2):
//! after a warm-up, rendering heads of the shapes the SDK sends — SharedKey-signed, with the
//! date, checksum, range, metadata and query parameters — into a reused buffer makes no heap
//! allocation at all. Counted with a counting global allocator; deterministic (no timing, and
//! no test harness threads: `harness = false`).

use std::alloc::System;

use blobring::blob::{AccountConfig, HeadBuilder};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn pairs(a: &[(&str, &str)]) -> Vec<(String, String)> {
    a.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn main() {
    let builder = HeadBuilder::new(&AccountConfig::emulator());
    // (method, path, query, headers, body length): Put Block, ranged Get, Put Blob with
    // metadata and conditions, List Blobs.
    let requests = [
        (
            "PUT",
            "/devstoreaccount1/data/part%200.bin",
            pairs(&[("comp", "block"), ("blockid", "dXBsb2FkLTAwMDAwMDAx")]),
            pairs(&[("x-ms-content-crc64", "AAAAAAAAAAA=")]),
            8 << 20,
        ),
        (
            "GET",
            "/devstoreaccount1/data/table.parquet",
            Vec::new(),
            pairs(&[
                ("x-ms-range", "bytes=4096-8191"),
                ("if-match", "\"0x8DC0000000000001\""),
                ("x-ms-range-get-content-crc64", "true"),
            ]),
            0,
        ),
        (
            "PUT",
            "/devstoreaccount1/data/a/b.txt",
            Vec::new(),
            pairs(&[
                ("x-ms-blob-type", "BlockBlob"),
                ("if-none-match", "*"),
                ("x-ms-meta-Owner", "analytics"),
                ("x-ms-blob-content-type", "text/plain"),
            ]),
            5,
        ),
        (
            "GET",
            "/devstoreaccount1/data",
            pairs(&[
                ("restype", "container"),
                ("comp", "list"),
                ("prefix", "year=2026/"),
                ("delimiter", "/"),
                ("maxresults", "1000"),
            ]),
            Vec::new(),
            0,
        ),
    ];
    let mut head = Vec::new();
    let render_all = |head: &mut Vec<u8>| {
        let mut bytes = 0;
        for (method, path, query, headers, len) in &requests {
            builder.render(head, method, path, query, headers, *len);
            bytes += head.len();
        }
        bytes
    };
    // Warm-up: the buffer grows to the largest head.
    let warm = render_all(&mut head);
    assert!(warm > 0);
    assert!(head.starts_with(b"GET /devstoreaccount1/data?restype=container&comp=list"));

    const ROUNDS: usize = 1000;
    let region = Region::new(GLOBAL);
    let mut total = 0;
    for _ in 0..ROUNDS {
        total += render_all(&mut head);
    }
    let stats = region.change();
    assert_eq!(
        (stats.allocations, stats.reallocations),
        (0, 0),
        "{} heads ({total} bytes) built and signed; allocator calls: {stats:?}",
        ROUNDS * requests.len()
    );
    assert!(
        String::from_utf8_lossy(&head).contains("\r\nauthorization: SharedKey devstoreaccount1:")
    );
    println!(
        "head_alloc: {} heads built and signed with 0 allocations",
        ROUNDS * requests.len()
    );
}
