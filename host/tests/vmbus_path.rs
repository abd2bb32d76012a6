//! The VMBus path end to end: the real `blobring-host` binary serving `--socket` on an `fs`
//! store, and the guest test driver (`blobring_vmbus::sim::driver::BlobDriver`) opening the
//! primary and three subchannels, registering a sealed memfd and running Blob requests whose
//! bodies are read and written in place in that memory.

mod common;

use std::time::{Duration, Instant};

use blobring_host::vsp::VspStatus;
use blobring_vmbus::blob::{BlobRequestDesc, BufferPages};
use blobring_vmbus::sim::driver::{BlobDriver, Completion, DriverConfig};
use blobring_vmbus::sim::guest::BusEvent;
use common::vmbus::{
    Resp, VmbusHost, assert_ranged, block_list_xml, block_path, completion_resp, pattern,
    request_head, signed_head,
};

const LIMIT: Duration = Duration::from_secs(20);

/// `blobring-host --socket … --store fs:… --channels 4` plus `extra`.
fn start(extra: &[&str]) -> VmbusHost {
    VmbusHost::start(None, 4, extra)
}

/// A request head for `/devstoreaccount1/<path>` with `headers` and a Content-Length.
fn head(method: &str, path: &str, headers: &[&str], body_len: usize) -> Vec<u8> {
    let fixed = ["Host: 127.0.0.1", "x-ms-version: 2023-11-03"].map(str::to_owned);
    let length = (body_len > 0).then(|| format!("Content-Length: {body_len}"));
    let lines = fixed
        .into_iter()
        .chain(headers.iter().map(|h| (*h).to_owned()))
        .chain(length);
    request_head(method, &format!("/devstoreaccount1/{path}"), lines)
}

/// The answer of a completion, whose Content-Length must be its body's length.
fn parse(c: &Completion) -> Resp {
    let resp = completion_resp(c);
    if let Some(cl) = resp.h("content-length") {
        assert_eq!(
            cl,
            resp.body.len().to_string(),
            "content-length = body bytes"
        );
    }
    resp
}

fn call(d: &mut BlobDriver, ch: usize, head: &[u8], body: &[u8], data_cap: u32) -> Resp {
    let c = d.call(ch, head, body, 4096, data_cap).expect("call");
    parse(&c)
}

/// GET `path` with `headers` on channel `ch`, with a data buffer of `data_cap` bytes.
fn get(d: &mut BlobDriver, ch: usize, path: &str, headers: &[&str], data_cap: u32) -> Resp {
    call(d, ch, &head("GET", path, headers, 0), b"", data_cap)
}

/// Submits `n` GETs of `path`, round-robin over the four channels.
fn submit_gets(d: &mut BlobDriver, n: usize, path: &str) -> Vec<u64> {
    (0..n)
        .map(|i| {
            d.submit(i % 4, &head("GET", path, &[], 0), b"", 4096, 4096)
                .unwrap()
        })
        .collect()
}

fn create_container(d: &mut BlobDriver, name: &str) {
    let r = call(
        d,
        0,
        &head("PUT", &format!("{name}?restype=container"), &[], 0),
        b"",
        0,
    );
    assert_eq!(r.status, 201);
}

fn put_blob(d: &mut BlobDriver, ch: usize, path: &str, data: &[u8]) {
    let h = head("PUT", path, &["x-ms-blob-type: BlockBlob"], data.len());
    let r = call(d, ch, &h, data, 0);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn blob_operations_round_trip_over_four_channels() {
    let host = start(&["--no-auth"]);
    let mut d = host.driver();
    assert_eq!(d.channel_count(), 4, "primary + 3 subchannels");
    create_container(&mut d, "data");

    // Put Blob on channel 1, then read it back on every channel.
    let a = pattern(300_000, 1);
    put_blob(&mut d, 1, "data/a.bin", &a);
    for ch in 0..4 {
        let r = get(&mut d, ch, "data/a.bin", &[], 512 << 10);
        assert_eq!(r.status, 200);
        assert!(r.body == a, "GET on channel {ch} is byte-exact");
        assert_eq!(r.h("x-ms-blob-type"), Some("BlockBlob"));
    }

    // Put Block x2 on different channels + Put Block List.
    let (b1, b2) = (pattern(70_000, 2), pattern(5_000, 3));
    for (ch, id, data) in [(2, "b1", &b1), (3, "b2", &b2)] {
        let path = block_path("data/blk", id);
        let r = call(&mut d, ch, &head("PUT", &path, &[], data.len()), data, 0);
        assert_eq!(r.status, 201);
    }
    let xml = block_list_xml(&["b2", "b1"]);
    let r = call(
        &mut d,
        0,
        &head("PUT", "data/blk?comp=blocklist", &[], xml.len()),
        xml.as_bytes(),
        0,
    );
    assert_eq!(r.status, 201);
    let whole = [b2.clone(), b1.clone()].concat();
    let r = get(&mut d, 1, "data/blk", &[], 128 << 10);
    assert_eq!((r.status, r.body.len()), (200, whole.len()));
    assert!(r.body == whole, "committed block blob is byte-exact");

    // Ranged GETs: 206 with Content-Range, and 416 past the end.
    let r = get(
        &mut d,
        2,
        "data/a.bin",
        &["x-ms-range: bytes=1000-99999"],
        128 << 10,
    );
    assert_ranged(&r, &a, 1000, 99_999);
    let r = get(
        &mut d,
        3,
        "data/a.bin",
        &["x-ms-range: bytes=300000-"],
        4096,
    );
    assert_eq!(r.status, 416);

    // List.
    let r = get(&mut d, 0, "data?restype=container&comp=list", &[], 64 << 10);
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains("<Name>a.bin</Name>") && text.contains("<Name>blk</Name>"),
        "{text}"
    );
    assert!(
        text.contains("<Content-Length>300000</Content-Length>"),
        "{text}"
    );

    // Delete, then the blob is gone.
    let r = call(&mut d, 1, &head("DELETE", "data/a.bin", &[], 0), b"", 0);
    assert_eq!(r.status, 202);
    let r = get(&mut d, 2, "data/a.bin", &[], 4096);
    assert_eq!(r.status, 404);
    assert_eq!(r.h("x-ms-error-code"), Some("BlobNotFound"));
    assert_eq!(d.in_flight(), 0);
}

#[test]
fn completions_arrive_out_of_order_under_load() {
    let host = start(&["--no-auth"]);
    let mut d = host.driver_with(DriverConfig {
        region_len: 256 << 20,
        ..DriverConfig::default()
    });
    create_container(&mut d, "load");
    let big = pattern(8 << 20, 7);
    put_blob(&mut d, 0, "load/big", &big);
    let small: Vec<Vec<u8>> = (0..8)
        .map(|i| pattern(4096 + i * 100, 100 + i as u32))
        .collect();
    for (i, s) in small.iter().enumerate() {
        put_blob(&mut d, 1, &format!("load/s{i}"), s);
    }
    // Per channel: a big GET first, then small ones; many requests in flight at once.
    let mut submitted: Vec<(u64, Option<usize>)> = Vec::new();
    for round in 0..4 {
        for ch in 0..4 {
            let id = d
                .submit(ch, &head("GET", "load/big", &[], 0), b"", 4096, 8 << 20)
                .expect("submit big");
            submitted.push((id, None));
            for k in 0..6 {
                let i = (round + ch + k) % small.len();
                let id = d
                    .submit(
                        ch,
                        &head("GET", &format!("load/s{i}"), &[], 0),
                        b"",
                        4096,
                        8192,
                    )
                    .expect("submit small");
                submitted.push((id, Some(i)));
            }
        }
    }
    assert_eq!(d.in_flight(), submitted.len());
    let mut arrived: Vec<Completion> = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while arrived.len() < submitted.len() {
        assert!(
            Instant::now() < deadline,
            "only {} completions",
            arrived.len()
        );
        arrived.extend(d.wait_completions(Duration::from_millis(200)).unwrap());
    }
    let order: Vec<u64> = arrived.iter().map(|c| c.trans_id).collect();
    let sub: Vec<u64> = submitted.iter().map(|s| s.0).collect();
    assert_ne!(order, sub, "completions came back in submission order");
    // Some small request submitted after a big one on the same channel finished first.
    let pos = |id: u64| order.iter().position(|&x| x == id).unwrap();
    let overtakes = submitted
        .windows(2)
        .filter(|w| w[0].1.is_none() && w[1].1.is_some() && pos(w[1].0) < pos(w[0].0))
        .count();
    assert!(overtakes > 0, "no small request overtook a big one");
    for c in &arrived {
        let what = submitted.iter().find(|s| s.0 == c.trans_id).unwrap().1;
        let r = parse(c);
        assert_eq!(r.status, 200);
        match what {
            None => assert!(r.body == big, "big body byte-exact"),
            Some(i) => assert!(r.body == small[i], "small body {i} byte-exact"),
        }
    }
    assert_eq!(d.in_flight(), 0);
}

#[test]
fn page_outside_registered_memory_is_refused_and_host_keeps_serving() {
    let host = start(&["--no-auth"]);
    let mut d = host.driver();
    create_container(&mut d, "pages");
    let base_pfn = d.config().gpa_base / 4096;
    let inside = [base_pfn];
    let outside = [base_pfn + d.config().region_len / 4096 + 10];
    // The request head is inside; the response buffer is one page past the region.
    let desc = BlobRequestDesc {
        timeout_ms: 1000,
        transaction_guid: [0; 16],
        data: None,
        data_valid: 0,
        request: BufferPages {
            offset: 0,
            len: 64,
            pfns: &inside,
        },
        response: BufferPages {
            offset: 0,
            len: 512,
            pfns: &outside,
        },
    };
    let id = d.submit_desc(2, &desc).unwrap();
    let c = d.wait_for(id, LIMIT).unwrap();
    assert_eq!(c.vsp.error, VspStatus::BadPage.code());
    assert_eq!((c.vsp.length, c.vsp.response_len), (0, 0));
    // Page 0 is nowhere near the region either.
    let zero = [0u64];
    let id = d
        .submit_desc(
            2,
            &BlobRequestDesc {
                request: BufferPages {
                    offset: 0,
                    len: 64,
                    pfns: &zero,
                },
                ..desc
            },
        )
        .unwrap();
    assert_eq!(
        d.wait_for(id, LIMIT).unwrap().vsp.error,
        VspStatus::BadPage.code()
    );
    // The channel and the host keep serving.
    put_blob(&mut d, 2, "pages/ok", b"still here");
    let r = get(&mut d, 2, "pages/ok", &[], 4096);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"still here"[..]));
}

#[test]
fn body_larger_than_data_buffer_reports_needed_size() {
    let host = start(&["--no-auth"]);
    let mut d = host.driver();
    create_container(&mut d, "size");
    let data = pattern(10_000, 9);
    put_blob(&mut d, 0, "size/x", &data);
    let c = d
        .call(1, &head("GET", "size/x", &[], 0), b"", 4096, 4096)
        .unwrap();
    assert_eq!(c.vsp.error, VspStatus::BodyTooLarge.code());
    assert_eq!(c.vsp.length, 10_000, "needed size in length");
    assert!(c.body.is_empty() && c.response_head.is_empty());
    // The same GET with a big enough buffer, and a range that fits the small one.
    let r = get(&mut d, 1, "size/x", &[], 10_000);
    assert!(r.status == 200 && r.body == data);
    let r = get(&mut d, 1, "size/x", &["x-ms-range: bytes=0-4095"], 4096);
    assert!(r.status == 206 && r.body == data[..4096]);
}

#[test]
fn head_larger_than_response_buffer_is_completed_with_needed_size() {
    let host = start(&["--no-auth"]);
    let mut d = host.driver();
    create_container(&mut d, "heads");
    put_blob(&mut d, 0, "heads/x", b"0123456789");
    // A 16-byte response buffer cannot hold any response head: the host must still post a
    // completion (not leave the guest waiting), saying how many bytes the head needs.
    let c = d
        .call(1, &head("GET", "heads/x", &[], 0), b"", 16, 4096)
        .expect("a completion for a request whose head does not fit");
    assert_eq!(c.vsp.error, VspStatus::HeadTooLarge.code(), "{:?}", c.vsp);
    assert!(c.vsp.response_len > 16, "bytes needed: {:?}", c.vsp);
    assert!(c.response_head.is_empty());
    // With a buffer of exactly that size, the same request succeeds.
    let need = c.vsp.response_len;
    let c = d
        .call(1, &head("GET", "heads/x", &[], 0), b"", need, 4096)
        .unwrap();
    assert_eq!(c.vsp.error, VspStatus::Ok.code(), "{:?}", c.vsp);
    assert_eq!(c.body, b"0123456789");
}

#[test]
fn fault_latency_delays_every_request() {
    let host = start(&["--no-auth", "--fault-latency-ms", "300"]);
    let mut d = host.driver();
    let t = Instant::now();
    create_container(&mut d, "lat");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Requests run in parallel: 8 at once take far less than 8 x 300 ms.
    let t = Instant::now();
    let ids = submit_gets(&mut d, 8, "lat/none");
    let mut n = 0;
    while n < ids.len() {
        assert!(t.elapsed() < LIMIT);
        for c in d.wait_completions(Duration::from_millis(100)).unwrap() {
            assert_eq!(parse(&c).status, 404);
            n += 1;
        }
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[test]
fn fault_error_rate_answers_server_busy() {
    let host = start(&["--no-auth", "--fault-error-rate", "1"]);
    let mut d = host.driver();
    for ch in 0..4 {
        let r = call(
            &mut d,
            ch,
            &head("PUT", "busy?restype=container", &[], 0),
            b"",
            4096,
        );
        assert_eq!(r.status, 503);
        assert_eq!(r.h("x-ms-error-code"), Some("ServerBusy"));
    }
}

#[test]
fn fault_hang_holds_only_the_hung_requests() {
    let host = start(&[
        "--no-auth",
        "--fault-hang-rate",
        "0.5",
        "--fault-hang-ms",
        "1500",
        "--fault-seed",
        "3",
    ]);
    let mut d = host.driver();
    let t = Instant::now();
    let ids = submit_gets(&mut d, 12, "hang/none");
    let mut got: Vec<(Duration, u16)> = Vec::new();
    while got.len() < ids.len() {
        assert!(t.elapsed() < LIMIT, "hung requests never answered");
        for c in d.wait_completions(Duration::from_millis(50)).unwrap() {
            got.push((t.elapsed(), parse(&c).status));
        }
    }
    let hung: Vec<_> = got.iter().filter(|g| g.1 == 503).collect();
    let fast: Vec<_> = got.iter().filter(|g| g.1 == 404).collect();
    assert!(!hung.is_empty() && !fast.is_empty(), "{got:?}");
    assert!(
        hung.iter().all(|g| g.0 >= Duration::from_millis(1500)),
        "{got:?}"
    );
    assert!(
        fast.iter().all(|g| g.0 < Duration::from_millis(1000)),
        "{got:?}"
    );
}

#[test]
fn dropped_completion_never_arrives_but_the_request_ran() {
    let host = start(&[
        "--no-auth",
        "--http",
        "127.0.0.1:0",
        "--fault-drop-completion-rate",
        "1",
        "--container",
        "drop",
    ]);
    let mut d = host.driver();
    let body = pattern(20_000, 11);
    let h = head("PUT", "drop/x", &["x-ms-blob-type: BlockBlob"], body.len());
    let id = d.submit(3, &h, &body, 4096, 0).unwrap();
    assert!(matches!(
        d.wait_for(id, Duration::from_millis(1500)),
        Err(blobring_vmbus::sim::driver::DriverError::Timeout(_))
    ));
    assert_eq!(d.in_flight(), 1);
    // The same executor and store serve REST: the PUT happened.
    let addr = host.http.clone().unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        let (status, _, got) = common::unsigned_get_with(
            &format!("http://{addr}"),
            "/devstoreaccount1/drop/x",
            &["x-ms-version: 2023-11-03"],
        );
        if status == 200 {
            assert!(
                got == body,
                "blob written through VMBus is byte-exact over REST"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PUT never took effect ({status})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rescind_after_n_requests_then_offer_again() {
    let host = start(&["--no-auth", "--fault-rescind-after", "3"]);
    let mut d = host.driver();
    create_container(&mut d, "res"); // 1
    put_blob(&mut d, 1, "res/a", b"abc"); // 2
    let r = get(&mut d, 2, "res/a", &[], 4096); // 3: completed
    assert_eq!(r.body, b"abc");
    // The guest sees RESCIND on the bus.
    let deadline = Instant::now() + LIMIT;
    loop {
        match d.bus().poll_event() {
            Ok(Some(BusEvent::Rescinded { .. })) => break,
            Ok(_) => {}
            Err(e) => panic!("bus error {e}"),
        }
        assert!(Instant::now() < deadline, "no RESCIND");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(d.bus().is_rescinded());
    // Requests after the rescind are not served on the old session.
    if let Ok(id) = d.submit(0, &head("GET", "res/a", &[], 0), b"", 4096, 4096) {
        assert!(d.wait_for(id, Duration::from_millis(500)).is_err());
    }
    drop(d);
    // A new connection gets the device again and is served.
    let mut d = host.driver();
    let r = get(&mut d, 3, "res/a", &[], 4096);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
    put_blob(&mut d, 0, "res/b", b"more");
}

#[test]
fn shared_key_signed_requests_over_vmbus() {
    let host = start(&[]); // auth on, emulator key
    let mut d = host.driver();
    let signed = |method: &str, path: &str, extra: &[(&str, &str)], body_len: usize| {
        signed_head(
            method,
            path,
            extra,
            (body_len > 0).then_some(body_len),
            "127.0.0.1",
        )
    };
    let r = call(
        &mut d,
        0,
        &signed("PUT", "skey?restype=container", &[], 0),
        b"",
        4096,
    );
    assert_eq!(r.status, 201);
    let body = pattern(5000, 5);
    let h = signed(
        "PUT",
        "skey/b",
        &[("x-ms-blob-type", "BlockBlob")],
        body.len(),
    );
    assert_eq!(call(&mut d, 1, &h, &body, 0).status, 201);
    let r = call(&mut d, 2, &signed("GET", "skey/b", &[], 0), b"", 8192);
    assert!(r.status == 200 && r.body == body);
    // Unsigned, or signed with another key: refused.
    let r = get(&mut d, 3, "skey/b", &[], 8192);
    assert_eq!(r.status, 401);
    let mut forged = signed("GET", "skey/b", &[], 0);
    let text = String::from_utf8(forged.clone()).unwrap();
    let sig_at = text
        .find("Authorization: SharedKey devstoreaccount1:")
        .unwrap()
        + 42;
    forged[sig_at] = if forged[sig_at] == b'A' { b'B' } else { b'A' };
    assert_eq!(call(&mut d, 3, &forged, b"", 8192).status, 403);
}

/// In process, to read the server's counters: `fs` GETs of large bodies are read straight into
/// guest memory with io_uring (or, with that off, pread + copy), byte-exact either way,
/// including ranges that start mid-page and a data buffer that straddles many pages; a small
/// GET runs on the channel thread that received it (`VspConfig::inline_max`).
#[test]
fn direct_body_path_is_used_and_byte_exact() {
    use blobring_host::open_store;
    use blobring_host::vsp::{VspConfig, VspServer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::Builder::new()
        .prefix("brf")
        .tempdir_in("/tmp")
        .unwrap();
    let store = open_store(&format!("fs:{}", dir.path().join("store").display())).unwrap();
    store.create_container("direct", Vec::new()).unwrap();
    let exec = Arc::new(common::plain_executor(store));
    let data = pattern(3 << 20, 21);
    for direct in [true, false] {
        let path = dir.path().join(format!("f-{direct}.sock"));
        let server = Arc::new(
            VspServer::bind(
                &path,
                exec.clone(),
                VspConfig {
                    direct_reads: direct,
                    ..VspConfig::default()
                },
            )
            .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (server.clone(), stop.clone());
        let t = std::thread::spawn(move || s.run(&st));
        let mut d = BlobDriver::connect(&path, 4).unwrap();
        if direct {
            put_blob(&mut d, 0, "direct/big", &data);
        }
        let r = get(&mut d, 1, "direct/big", &[], 3 << 20);
        assert!(
            r.status == 200 && r.body == data,
            "whole body, direct={direct}"
        );
        let r = get(
            &mut d,
            2,
            "direct/big",
            &["x-ms-range: bytes=4097-2000000"],
            2 << 20,
        );
        assert!(
            r.status == 206 && r.body == data[4097..=2_000_000],
            "range, direct={direct}"
        );
        // A small request runs on the channel thread that received it, byte-exact; the large
        // ones above went to the pool.
        let r = get(
            &mut d,
            3,
            "direct/big",
            &["x-ms-range: bytes=100-4195"],
            4096,
        );
        assert!(r.status == 206 && r.body == data[100..4196], "small range");
        let st = server.stats();
        if direct {
            assert_eq!((st.direct_reads, st.bounce_reads), (2, 0), "{st:?}");
        } else {
            assert_eq!((st.direct_reads, st.bounce_reads), (0, 2), "{st:?}");
        }
        assert_eq!(
            st.inline_requests, 1,
            "only the small GET ran inline: {st:?}"
        );
        assert!(st.requests >= 2 && st.completions == st.requests, "{st:?}");
        drop(d);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap().unwrap();
    }
}

/// With 8 KiB rings the host → guest ring fills while the guest does not read: the host waits
/// for space (pending_send_sz) and loses no completion.
#[test]
fn full_completion_ring_loses_nothing() {
    let host = start(&["--no-auth", "--ring-size", "8192"]);
    let mut d = host.driver();
    create_container(&mut d, "full");
    put_blob(&mut d, 0, "full/x", b"xyz");
    let mut ids = Vec::new();
    for _ in 0..4 {
        for _ in 0..30 {
            ids.push(
                d.submit(1, &head("GET", "full/x", &[], 0), b"", 1024, 64)
                    .unwrap(),
            );
        }
        // Not reading: completions pile up in the 4 KiB data area of the host → guest ring.
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while got.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} completions",
            got.len(),
            ids.len()
        );
        got.extend(d.wait_completions(Duration::from_millis(100)).unwrap());
    }
    let mut seen: Vec<u64> = got.iter().map(|c| c.trans_id).collect();
    seen.sort_unstable();
    ids.sort_unstable();
    assert_eq!(seen, ids, "every completion exactly once");
    for c in &got {
        let r = parse(c);
        assert!(r.status == 200 && r.body == b"xyz");
    }
}
