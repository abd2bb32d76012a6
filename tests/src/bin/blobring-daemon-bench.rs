#![forbid(unsafe_code)]
//! Measures requests through `blobringd`: NOP and 4 KiB blob reads (emulated host in this
//! process) at queue depth 1 and 256. Prints requests/s, p50/p99 round trip, and daemon CPU per
//! request from `/proc/<pid>/stat`.
//!
//! `blobring-daemon-bench [SECONDS_PER_CASE] [daemon flags...]`; starts its own daemon (the
//! `blobring-test-daemon` next to this binary) with the extra flags given. With
//! `BLOBRING_BENCH_HOST=/path/to/blobring-host` the 4 KiB GETs go to the real emulated host
//! (`--store mem --no-auth`, a 4 KiB blob PUT first) instead of the in-process test host.

use std::time::{Duration, Instant};

use blobring::{Connection, Cqe, FromZeros, Sqe};
use blobring_tests::{Daemon, TestHost, blob_sqe, nop, scratch};
use hdrhistogram::Histogram;

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based); after ")" the state is field 3.
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

fn run(conn: &mut Connection, template: &[Sqe], depth: usize, secs: f64, pid: u32) -> String {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut started = vec![Instant::now(); template.len()];
    let mut cq = vec![Cqe::new_zeroed(); 512];
    let mut free: Vec<usize> = (0..depth).collect();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    let mut done = 0u64;
    let q = 0;
    let end = t0 + Duration::from_secs_f64(secs);
    let mut batch = Vec::with_capacity(depth);
    while Instant::now() < end {
        batch.clear();
        for &slot in &free {
            let mut s = template[slot];
            s.user_data = slot as u64;
            started[slot] = Instant::now();
            batch.push(s);
        }
        let n = conn.submit(q, &batch).unwrap();
        free.drain(..n);
        let got = conn.reap(q, &mut cq).unwrap();
        if got == 0 {
            conn.wait(q, Some(Duration::from_millis(100))).unwrap();
            continue;
        }
        let now = Instant::now();
        for c in &cq[..got] {
            assert_eq!(c.res, 0);
            let slot = c.user_data as usize;
            let _ = h.record(now.duration_since(started[slot]).as_nanos() as u64);
            free.push(slot);
        }
        done += got as u64;
    }
    let el = t0.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid) - c0;
    // Drain what is still in flight so the next case starts clean.
    while conn.in_flight(q) > 0 {
        if conn.reap(q, &mut cq).unwrap() == 0 {
            conn.wait(q, Some(Duration::from_millis(100))).unwrap();
        }
    }
    let tick_ns = 1e9 / 100.0; // USER_HZ
    format!(
        "{:>10.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  daemon CPU {:>6.0} ns/req",
        done as f64 / el,
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        ticks as f64 * tick_ns / done.max(1) as f64
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let extra: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("blobring-test-daemon");
    let dir = scratch();
    let real = std::env::var_os("BLOBRING_BENCH_HOST");
    let _host = real
        .is_none()
        .then(|| TestHost::start(&dir.path().join("host.sock"), 8));
    let _real_host = real.as_ref().map(|h| {
        blobring_tests::launcher(dir.path())
            .host_bin(h)
            .store("mem")
            .host_args(["--no-auth", "--container", "bench", "--channels", "8"])
            .timeout(Duration::from_secs(10))
            .start_host()
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let d = Daemon::start(bin.to_str().unwrap(), dir.path(), &extra);
    d.wait_stats(Duration::from_secs(10), "host", |s| {
        s["daemon"]["host_connected"] == true
    });
    let pid = d.pid();
    let mut conn = blobring::Connection::connect_with(
        &d.socket,
        blobring::ConnectOptions {
            sq_entries: 256,
            ..Default::default()
        },
    )
    .unwrap();
    let nops: Vec<Sqe> = (0..256).map(nop).collect();
    let head: &[u8] = b"GET /devstoreaccount1/bench/b4k HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\n\r\n";
    if real.is_some() {
        let put = b"PUT /devstoreaccount1/bench/b4k HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\nx-ms-blob-type: BlockBlob\r\nContent-Length: 4096\r\n\r\n";
        let mut s = blob_sqe(&mut conn, 0, put, 4096);
        s.data_valid = 4096;
        s.response_offset = conn.alloc(4096, 64).unwrap().offset;
        s.response_len = 4096;
        conn.submit(0, &[s]).unwrap();
        let mut cq = [Cqe::new_zeroed()];
        while conn.reap(0, &mut cq).unwrap() == 0 {
            conn.wait(0, Some(Duration::from_millis(100))).unwrap();
        }
        assert_eq!((cq[0].res, cq[0].vsp_status), (0, 0), "PUT failed");
    }
    let reads: Vec<Sqe> = (0..256)
        .map(|i| {
            let mut s = blob_sqe(&mut conn, i, head, 4096);
            // Real response heads need more than blob_sqe's 256 bytes.
            s.response_offset = conn.alloc(2048, 64).unwrap().offset;
            s.response_len = 2048;
            s
        })
        .collect();
    println!("daemon flags: {extra:?}, {secs} s per case");
    for depth in [1usize, 256] {
        println!(
            "NOP       depth {depth:>3}: {}",
            run(&mut conn, &nops, depth, secs, pid)
        );
    }
    for depth in [1usize, 256] {
        println!(
            "4 KiB GET depth {depth:>3}: {}",
            run(&mut conn, &reads, depth, secs, pid)
        );
    }
}
