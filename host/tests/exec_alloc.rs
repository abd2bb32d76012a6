//! A request allocates a bounded, small number of times on the host (issue #15 step 3).
//!
//! Drives the executor the way a VSP channel thread runs a small request inline
//! (`vsp::execute`): the raw request head (copied out of guest memory by the worker, outside
//! this count) into [`Executor::execute_lazy`] with the body read lazily and a body sink over
//! the request's data buffer, then the response head rendered with [`Executed::write_head`]
//! into the response buffer. The requests are SharedKey-signed and verified against the
//! in-memory store: a 4 KiB ranged Get Blob, a Get Blob Properties (HEAD) and a 4 KiB Put Block.
//! After a warm-up (lazy statics, thread-local RNG, the store's first block), every request of
//! `ROUNDS` is counted with a counting global allocator (allocations plus reallocations) and
//! held to the bounds below. Deterministic (no timing; `harness = false`, so no harness thread
//! allocates while the test counts).
//!
//! Where they go (measured at the change that added this test; before it, when heads were
//! parsed into `http::HeaderMap`s and responses built in one, the same requests made 66, 61
//! and 50): on a Get Blob or a HEAD the executor allocates nothing — the response's header
//! entries and value buffer ([`blobring_host::ResponseHeaders`]) are the thread's spares of
//! the previous response — and the in-memory store's `open` boxes its reader twice. A Put
//! Block allocates three times in the executor — the body's copy out of the data buffer, the
//! query pairs and the percent-decoded block id (its `=` travels as `%3D`) — and four in the
//! store's staging of the block (its copy of the body and its bookkeeping).

use std::alloc::System;

use blobring_host::store::MemStore;
use blobring_host::{
    EMULATOR_ACCOUNT, EMULATOR_KEY, Executor, ExecutorConfig, Faults, SharedKeyAuth, SliceSink,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ROUNDS: usize = 1000;

/// Allocations per request, measured (2, 2, 7) plus a margin of two for changes in the
/// store or the dependencies that are no regression of the executor's own path.
const GET_MAX: f64 = 4.0;
const HEAD_MAX: f64 = 4.0;
const PUT_BLOCK_MAX: f64 = 9.0;

/// A signed request head as the SDK sends it (lower-case names, `x-ms-date`, SharedKey).
fn signed_head(
    auth: &SharedKeyAuth,
    method: &str,
    target: &str,
    extra: &[(&str, &str)],
    body_len: usize,
) -> Vec<u8> {
    let mut h = http::HeaderMap::new();
    let mut put = |k: &str, v: &str| {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    };
    put("host", "127.0.0.1");
    put("x-ms-version", "2023-11-03");
    put(
        "x-ms-date",
        &httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    put(
        "x-ms-client-request-id",
        "5d1f4b1e-2f47-4c51-9c1e-8d6a0a0c1b2a",
    );
    for (k, v) in extra {
        put(k, v);
    }
    if body_len > 0 {
        put("content-length", &body_len.to_string());
    }
    let m = http::Method::from_bytes(method.as_bytes()).unwrap();
    let sig = auth.authorization(&m, target, &h);
    let mut s = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in &h {
        s.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap()));
    }
    s.push_str(&format!("authorization: {sig}\r\n\r\n"));
    s.into_bytes()
}

/// One request as the VSP channel thread runs it; returns (status, body bytes, head bytes).
fn run(
    exec: &Executor,
    head: &[u8],
    body: &[u8],
    data: &mut [u8],
    response: &mut [u8],
) -> (u16, usize, usize) {
    let read_body = |dst: &mut [u8]| {
        dst.copy_from_slice(body);
        true
    };
    let done = exec
        .execute_lazy(head, body.len(), read_body, &mut SliceSink(data))
        .expect("the body fits the data buffer");
    let head_len = done.write_head(response).expect("the head fits");
    (done.status.as_u16(), done.body_len, head_len)
}

/// Allocations per request over `ROUNDS` runs of `head` (after a warm-up of the same).
fn count(exec: &Executor, name: &str, head: &[u8], body: &[u8], want: (u16, usize)) -> f64 {
    let mut data = vec![0u8; 16 << 10];
    let mut response = vec![0u8; 4096];
    for _ in 0..50 {
        let (status, body_len, _) = run(exec, head, body, &mut data, &mut response);
        assert_eq!((status, body_len), want, "{name}");
    }
    let region = Region::new(GLOBAL);
    for _ in 0..ROUNDS {
        run(exec, head, body, &mut data, &mut response);
    }
    let stats = region.change();
    let per = stats.allocations as f64 / ROUNDS as f64;
    let re = stats.reallocations as f64 / ROUNDS as f64;
    println!("exec_alloc: {name}: {per:.2} allocations + {re:.2} reallocations per request");
    per + re
}

fn main() {
    let auth = SharedKeyAuth::new(EMULATOR_ACCOUNT, EMULATOR_KEY).unwrap();
    let store = std::sync::Arc::new(MemStore::new());
    let exec = Executor::new(
        store,
        ExecutorConfig {
            account: EMULATOR_ACCOUNT.into(),
            auth: Some(auth.clone()),
            faults: Faults::default(),
        },
    );
    exec.backend().create_container("data", Vec::new()).unwrap();
    let blob = "/devstoreaccount1/data/table.parquet";
    let content: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    let put = signed_head(
        &auth,
        "PUT",
        blob,
        &[("x-ms-blob-type", "BlockBlob")],
        65536,
    );
    let mut data = vec![0u8; 16 << 10];
    let mut response = vec![0u8; 4096];
    let (status, _, _) = run(&exec, &put, &content, &mut data, &mut response);
    assert_eq!(status, 201);

    let get = signed_head(&auth, "GET", blob, &[("x-ms-range", "bytes=4096-8191")], 0);
    let (status, n, _) = run(&exec, &get, &[], &mut data, &mut response);
    assert_eq!((status, &data[..n]), (206, &content[4096..8192]));
    let get = count(&exec, "ranged 4 KiB GET", &get, &[], (206, 4096));
    assert!(
        get <= GET_MAX,
        "a ranged GET allocates {get} times (at most {GET_MAX})"
    );

    let head = signed_head(&auth, "HEAD", blob, &[], 0);
    let head = count(&exec, "HEAD", &head, &[], (200, 0));
    assert!(
        head <= HEAD_MAX,
        "a HEAD allocates {head} times (at most {HEAD_MAX})"
    );

    let block = &content[..4096];
    let target = "/devstoreaccount1/data/staged.bin?comp=block&blockid=YmxvY2stMDAwMQ%3D%3D";
    let put_block = signed_head(&auth, "PUT", target, &[], block.len());
    let put_block = count(&exec, "4 KiB Put Block", &put_block, block, (201, 0));
    assert!(
        put_block <= PUT_BLOCK_MAX,
        "a Put Block allocates {put_block} times (at most {PUT_BLOCK_MAX})"
    );
}
