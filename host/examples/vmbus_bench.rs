//! Throughput of the VMBus path, in one process: a `VspServer` on an `fs` store and the guest
//! test driver (`BlobDriver`) with 4 channels.
//!
//! `cargo run --release -p blobring-host --example vmbus_bench [SECONDS]` prints 4 KiB GET
//! requests/s and 16 MiB GET GB/s (warm page cache), the latter with the io_uring direct
//! reads into guest memory and with the `pread` + copy path, plus a `pread` ceiling.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blobring_host::vsp::{VspConfig, VspServer};
use blobring_host::{Executor, ExecutorConfig, Faults, open_store};
use blobring_vmbus::sim::driver::{BlobDriver, DriverConfig};

fn head(method: &str, path: &str, extra: &str, body_len: usize) -> Vec<u8> {
    format!(
        "{method} /devstoreaccount1/bench/{path} HTTP/1.1\r\nHost: h\r\nx-ms-version: 2023-11-03\r\n{extra}Content-Length: {body_len}\r\n\r\n"
    )
    .into_bytes()
}

/// Runs `depth` requests in flight for `secs`; returns (requests, bytes) completed.
fn run(d: &mut BlobDriver, path: &str, size: u32, depth: usize, secs: f64) -> (u64, u64, f64) {
    let h = head("GET", path, "", 0);
    let channels = d.channel_count();
    let mut next = 0usize;
    for _ in 0..depth {
        d.submit(next % channels, &h, b"", 1024, size).unwrap();
        next += 1;
    }
    let t = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    let end = Duration::from_secs_f64(secs);
    while t.elapsed() < end {
        for c in d.wait_completions(Duration::from_millis(100)).unwrap() {
            assert_eq!(c.vsp.error, 0);
            assert_eq!(c.vsp.length, size);
            n += 1;
            bytes += u64::from(c.vsp.length);
            d.submit(next % channels, &h, b"", 1024, size).unwrap();
            next += 1;
        }
    }
    let el = t.elapsed().as_secs_f64();
    while d.in_flight() > 0 {
        d.wait_completions(Duration::from_millis(100)).unwrap();
    }
    (n, bytes, el)
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3.0);
    let dir = tempfile::tempdir()?;
    let store = open_store(&format!("fs:{}", dir.path().join("store").display()))?;
    store.create_container("bench", Vec::new())?;
    let exec = Arc::new(Executor::new(
        store,
        ExecutorConfig {
            account: "devstoreaccount1".into(),
            auth: None,
            faults: Faults::default(),
        },
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for direct in [true, false] {
        let path = dir.path().join(format!("h-{direct}.sock"));
        let server = Arc::new(VspServer::bind(
            &path,
            exec.clone(),
            VspConfig {
                channels: 4,
                direct_reads: direct,
                ..VspConfig::default()
            },
        )?);
        let (s, st) = (server.clone(), stop.clone());
        std::thread::spawn(move || s.run(&st));
        servers.push((direct, path, server));
    }
    let cfg = DriverConfig {
        region_len: 256 << 20,
        ..DriverConfig::default()
    };
    let mut d = BlobDriver::connect_with(&servers[0].1, 4, cfg)?;
    let small = vec![7u8; 4096];
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i >> 7) as u8).collect();
    for (name, body) in [("small", &small), ("big", &big)] {
        let c = d.call(
            0,
            &head("PUT", name, "x-ms-blob-type: BlockBlob\r\n", body.len()),
            body,
            1024,
            0,
        )?;
        assert!(c.response_head.starts_with(b"HTTP/1.1 201"));
    }
    for depth in [1usize, 16, 64] {
        let (n, _, el) = run(&mut d, "small", 4096, depth, secs);
        println!(
            "4 KiB GET, 4 channels, depth {depth:>3}: {:>9.0} requests/s",
            n as f64 / el
        );
    }
    drop(d);
    // The driver leaves bodies in guest memory here, so the figures are the host's.
    let cfg = DriverConfig {
        copy_body: false,
        ..cfg
    };
    for (direct, path, server) in &servers {
        let mut d = BlobDriver::connect_with(path, 4, cfg)?;
        run(&mut d, "big", 16 << 20, 4, 0.5); // warm-up
        let before = server.stats();
        for depth in [1usize, 4] {
            let (_, bytes, el) = run(&mut d, "big", 16 << 20, depth, secs);
            println!(
                "16 MiB GET, {} path, depth {depth}: {:>6.2} GB/s",
                if *direct {
                    "io_uring direct read "
                } else {
                    "pread + copy       "
                },
                bytes as f64 / el / 1e9
            );
        }
        let after = server.stats();
        println!(
            "   (direct reads {}, bounce reads {})",
            after.direct_reads - before.direct_reads,
            after.bounce_reads - before.bounce_reads
        );
    }
    // Ceiling: pread of the same file into a private buffer, one thread.
    let data_file = std::fs::read_dir(dir.path().join("store"))?
        .flatten()
        .flat_map(|e| walk(&e.path()))
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.len())))
        .find(|(_, l)| *l == 16 << 20);
    if let Some((p, _)) = data_file {
        let f = std::fs::File::open(p)?;
        let mut buf = vec![0u8; 16 << 20];
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            f.read_exact_at(&mut buf, 0)?;
            n += buf.len() as u64;
        }
        println!(
            "pread ceiling, 16 MiB, 1 thread: {:>6.2} GB/s",
            n as f64 / t.elapsed().as_secs_f64() / 1e9
        );
    }
    stop.store(true, Ordering::Relaxed);
    Ok(())
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    if p.is_dir() {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|e| walk(&e.path()))
            .collect()
    } else {
        vec![p.to_owned()]
    }
}
