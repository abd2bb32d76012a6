//! The mount's figures: counters updated on the request path (relaxed atomics, no locks, no
//! logging) and served as one JSON document per connection on the mount's own stats socket
//! (`--stats-socket`, the same protocol as blobringd's ctl socket, so
//! `blobring stats --json --ctl-socket <socket>` prints it), and logged once at unmount.

use std::io::Write as _;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::json;

/// Counters of one mount.
#[derive(Debug, Default)]
pub struct Stats {
    /// Open file handles (read and write).
    pub open_files: AtomicU64,
    /// Open handles writing a new blob.
    pub open_writes: AtomicU64,
    /// Reads served from prefetched bytes.
    pub prefetch_hits: AtomicU64,
    /// Bytes served from prefetched bytes.
    pub prefetch_hit_bytes: AtomicU64,
    /// Of those reads, how many had to wait for a prefetch request still in flight.
    pub prefetch_waits: AtomicU64,
    /// Bytes fetched by prefetch requests.
    pub prefetch_bytes: AtomicU64,
    /// Prefetch streams started (a sequential reader detected).
    pub prefetch_streams: AtomicU64,
    /// Prefetch streams not started for lack of budget (the read went out as a ranged GET).
    pub prefetch_denied: AtomicU64,
    /// Reads served by a ranged GET of the size asked (random access).
    pub random_reads: AtomicU64,
    /// Bytes of those reads.
    pub random_bytes: AtomicU64,
    /// Bytes of the prefetch budget held now (in flight and buffered).
    pub cache_used: AtomicU64,
    /// The prefetch budget (`--cache-mib`, at most half the arena).
    pub cache_limit: AtomicU64,
    /// Bytes written through the mount.
    pub bytes_written: AtomicU64,
    /// Blobs committed (Put Block List).
    pub commits: AtomicU64,
    /// Uploads that failed (nothing committed).
    pub commit_failures: AtomicU64,
    /// Lookups answered from the metadata cache (positive or negative).
    pub meta_hits: AtomicU64,
    /// Lookups that asked the service.
    pub meta_misses: AtomicU64,
    /// List Blobs pages fetched for readdir.
    pub list_pages: AtomicU64,
    /// Operations refused (random writes, chmod, links…).
    pub refused: AtomicU64,
    /// Operations failed with EIO (the service or the daemon failed).
    pub io_errors: AtomicU64,
}

impl Stats {
    /// Adds `n` to a counter.
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// The figures as JSON (`{"mount": {...}}`).
    pub fn to_json(&self, source: &str, mountpoint: &Path) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Relaxed);
        json!({ "mount": {
            "source": source,
            "mountpoint": mountpoint.display().to_string(),
            "open_files": g(&self.open_files),
            "open_writes": g(&self.open_writes),
            "prefetch_hits": g(&self.prefetch_hits),
            "prefetch_hit_bytes": g(&self.prefetch_hit_bytes),
            "prefetch_waits": g(&self.prefetch_waits),
            "prefetch_bytes": g(&self.prefetch_bytes),
            "prefetch_streams": g(&self.prefetch_streams),
            "prefetch_denied": g(&self.prefetch_denied),
            "random_reads": g(&self.random_reads),
            "random_bytes": g(&self.random_bytes),
            "cache_used": g(&self.cache_used),
            "cache_limit": g(&self.cache_limit),
            "bytes_written": g(&self.bytes_written),
            "commits": g(&self.commits),
            "commit_failures": g(&self.commit_failures),
            "meta_hits": g(&self.meta_hits),
            "meta_misses": g(&self.meta_misses),
            "list_pages": g(&self.list_pages),
            "refused": g(&self.refused),
            "io_errors": g(&self.io_errors),
        }})
    }
}

/// Serves `stats` on `listener`: one JSON document per connection, then close (a thread).
pub(crate) fn serve(
    listener: UnixListener,
    stats: Arc<Stats>,
    source: String,
    mountpoint: std::path::PathBuf,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mount-stats".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let doc = stats.to_json(&source, &mountpoint).to_string();
                let _ = c.set_write_timeout(Some(std::time::Duration::from_secs(5)));
                let _ = c.write_all(doc.as_bytes());
            }
        })
        .map(drop)
}
