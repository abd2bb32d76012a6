//! Many tasks reading one blob in parallel through one shared [`blobring::Client`].
//!
//! ```text
//! BLOBRING_SOCKET=/run/blobring/blobringd.sock \
//!   cargo run --release -p blobring --example parallel_reader -- <container> <blob> [tasks]
//! ```
//! Each task reads 1 MiB ranges round-robin; the tasks share the client's queues and arena.

use std::time::Instant;

use blobring::blob::{AccountConfig, BlobService, GetOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(container), Some(blob)) = (args.next(), args.next()) else {
        eprintln!("usage: parallel_reader <container> <blob> [tasks]");
        std::process::exit(2);
    };
    let tasks: u64 = args.next().map_or(Ok(32), |t| t.parse())?;
    let svc = BlobService::new(
        blobring::Client::connect_default()?,
        AccountConfig::from_env()?,
    );
    let size = svc
        .head_blob(&container, &blob, &GetOptions::default())
        .await?
        .size;
    let chunk = 1u64 << 20;
    let chunks = size.div_ceil(chunk);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (svc, container, blob) = (svc.clone(), container.clone(), blob.clone());
        handles.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            let mut i = t;
            while i < chunks {
                let start = i * chunk;
                let end = (start + chunk).min(size);
                let g = svc
                    .get_range(&container, &blob, start..end, &GetOptions::default(), None)
                    .await?;
                bytes += g.len as u64;
                i += tasks;
            }
            Ok::<u64, blobring::blob::BlobError>(bytes)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{tasks} tasks read {total} bytes in {s:.3} s ({:.2} GB/s)",
        total as f64 / s / 1e9
    );
    Ok(())
}
