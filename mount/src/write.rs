//! The write path: a new blob written sequentially through one handle streams, as it is
//! written, into [`blobring::transfer::upload_from_stream`] (parallel Put Block, memory bounded
//! by the arena) on a thread of its own, fed through a bounded channel; close, flush or fsync
//! commits it with Put Block List, which makes it visible to every client at once. Until then
//! nothing is visible to other clients, and a failed or abandoned upload commits nothing (the
//! service discards uncommitted blocks).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use blobring::blob::{BlobError, BlobService, PutOptions};
use blobring::block_on;
use blobring::transfer::{TransferOptions, upload_from_stream};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::stats::Stats;

/// Writes queued between the FUSE thread and the uploader (each at most `max_write`, 1 MiB).
const QUEUE: usize = 8;

/// Why a write or commit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// Not at the end of what was written so far (a random write or a gap).
    NotSequential {
        /// Where the next write must start.
        expected: u64,
    },
    /// The data was already committed (after fsync or close); a handle writes once.
    Committed,
    /// The upload failed; nothing was committed.
    Failed(String),
}

/// A blob being written through one open handle.
pub(crate) struct Upload {
    /// Path inside the mount.
    pub path: String,
    written: AtomicU64,
    inner: Mutex<Inner>,
    stats: Arc<Stats>,
}

struct Inner {
    tx: Option<mpsc::Sender<Bytes>>,
    /// Set before the sender is dropped by a commit: the stream's end then means "commit".
    /// A sender dropped without it (the handle abandoned, the mount ending) ends the stream
    /// with an error instead, so nothing is committed.
    commit: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<String, BlobError>>>,
    /// Set once committed (or failed).
    outcome: Option<Result<String, WriteError>>,
}

impl Upload {
    /// Starts the uploader thread for `container`/`key`.
    pub(crate) fn start(
        svc: &BlobService,
        container: &str,
        key: &str,
        path: String,
        stats: Arc<Stats>,
    ) -> std::io::Result<Arc<Upload>> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let (svc, container, key) = (svc.clone(), container.to_owned(), key.to_owned());
        let commit = Arc::new(AtomicBool::new(false));
        let commit_asked = commit.clone();
        let mut ended = false;
        let thread = std::thread::Builder::new()
            .name("mount-upload".into())
            .spawn(move || {
                let stream = futures_util::stream::poll_fn(move |cx| {
                    rx.poll_recv(cx).map(|o| match o {
                        Some(b) => Some(Ok(b)),
                        None if ended || commit_asked.load(Ordering::Acquire) => None,
                        None => {
                            ended = true;
                            Some(Err(std::io::Error::other(
                                "the handle was abandoned before it was closed",
                            )))
                        }
                    })
                });
                block_on(upload_from_stream(
                    &svc,
                    &container,
                    &key,
                    stream,
                    None,
                    &PutOptions::default(),
                    &TransferOptions::default(),
                ))
            })?;
        Stats::add(&stats.open_writes, 1);
        Ok(Arc::new(Upload {
            path,
            written: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                tx: Some(tx),
                commit,
                thread: Some(thread),
                outcome: None,
            }),
            stats,
        }))
    }

    /// Bytes written so far (the file's size while it is open).
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Appends `data` at `offset`, which must be the end of what was written. Waits while the
    /// uploader is behind (bounded by the SDK's deadlines: a stuck upload fails and so does
    /// this write).
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let expected = self.written();
        if let Some(o) = &inner.outcome {
            return Err(match o {
                Ok(_) => WriteError::Committed,
                Err(e) => e.clone(),
            });
        }
        if offset != expected {
            return Err(WriteError::NotSequential { expected });
        }
        let tx = inner
            .tx
            .as_ref()
            .expect("an upload not committed has its sender");
        if tx.blocking_send(Bytes::copy_from_slice(data)).is_err() {
            // The uploader ended early: it failed. Collect why.
            drop(inner);
            return match self.commit() {
                Ok(_) => Err(WriteError::Failed("the upload ended early".into())),
                Err(e) => Err(e),
            };
        }
        self.written
            .store(expected + data.len() as u64, Ordering::Release);
        Stats::add(&self.stats.bytes_written, data.len() as u64);
        Ok(())
    }

    /// Commits what was written (Put Block List): the blob's ETag. Idempotent: later calls
    /// return the first outcome.
    pub(crate) fn commit(&self) -> Result<String, WriteError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = &inner.outcome {
            return o.clone();
        }
        // Closing the channel ends the stream: the uploader sends its last block and commits.
        inner.commit.store(true, Ordering::Release);
        inner.tx = None;
        let r = match inner.thread.take().map(JoinHandle::join) {
            Some(Ok(Ok(etag))) => {
                Stats::add(&self.stats.commits, 1);
                Ok(etag)
            }
            Some(Ok(Err(e))) => Err(WriteError::Failed(e.to_string())),
            Some(Err(_)) => Err(WriteError::Failed("the uploader thread panicked".into())),
            None => Err(WriteError::Failed("no uploader".into())),
        };
        if r.is_err() {
            Stats::add(&self.stats.commit_failures, 1);
        }
        self.stats.open_writes.fetch_sub(1, Ordering::Relaxed);
        inner.outcome = Some(r.clone());
        r
    }
}
