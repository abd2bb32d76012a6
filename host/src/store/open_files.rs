//! The `fs` store's open-file cache: a bounded, least-recently-used set of read-only data files
//! kept open between GETs, so a small read costs one `pread` instead of `open` + `pread` +
//! `close` (path walk and file-table churn were ~15 % of the host's CPU at 4 KiB GETs).
//!
//! **Why caching is safe:** a data file (`containers/<name>/data/<uuid>`) is created with
//! `O_EXCL` under a fresh random name, written and fsynced before any record references it,
//! and never written again: every write path (Put Blob, Put Block List, Copy Blob's hard link
//! or copy) makes a new file, and property updates only rewrite the record. So an open file
//! for a path always has the bytes that path had when it was published. Paths leave the cache
//! when their file is removed ([`OpenFiles::forget`], [`OpenFiles::forget_under`]), so a
//! deleted blob's disk space is not pinned by the cache; a reader that already holds the file
//! finishes its read (unix semantics), which is the snapshot a `BlobReader` promises anyway.
//!
//! **Locking:** one mutex over the map, held for a lookup, an insert or a removal only: files
//! are opened before taking it and closed (the last close of a deleted file frees its blocks)
//! after releasing it. Readers share one descriptor and use positional reads, so concurrent
//! readers of a file need no further coordination.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

/// Most data files the `fs` store keeps open by default (`--open-files`).
pub const DEFAULT_OPEN_FILES: usize = 1024;

struct Inner {
    files: LruCache<Arc<Path>, Arc<File>>,
    /// Bumped by every removal. A miss records it before opening and caches its file only if
    /// no removal happened meanwhile, so a file removed while being opened is never cached.
    removals: u64,
}

/// A bounded LRU cache of open read-only files, keyed by path. Disabled when built with a
/// bound of 0 (every [`OpenFiles::open`] then opens the file).
pub(crate) struct OpenFiles {
    inner: Option<Mutex<Inner>>,
}

impl OpenFiles {
    /// A cache holding at most `bound` files (0: no cache).
    pub(crate) fn new(bound: usize) -> Self {
        OpenFiles {
            inner: NonZeroUsize::new(bound).map(|cap| {
                Mutex::new(Inner {
                    files: LruCache::new(cap),
                    removals: 0,
                })
            }),
        }
    }

    // Every critical section is a single map operation, so a panic cannot leave the map
    // inconsistent: poisoning is ignored.
    fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open file at `path`, from the cache or freshly opened (and then cached).
    pub(crate) fn open(&self, path: &Arc<Path>) -> io::Result<Arc<File>> {
        let Some(m) = &self.inner else {
            return File::open(path).map(Arc::new);
        };
        let seen = {
            let mut g = Self::lock(m);
            if let Some(f) = g.files.get(&**path) {
                return Ok(Arc::clone(f));
            }
            g.removals
        };
        let file = Arc::new(File::open(path)?);
        let evicted = {
            let mut g = Self::lock(m);
            if g.removals == seen {
                g.files.push(Arc::clone(path), Arc::clone(&file))
            } else {
                None
            }
        };
        // Closed here, outside the lock (a racing miss for the same path replaced its entry,
        // or the least recently used file made room).
        drop(evicted);
        Ok(file)
    }

    /// Stop caching `path` (its file is being removed or replaced).
    pub(crate) fn forget(&self, path: &Path) {
        let Some(m) = &self.inner else { return };
        let removed = {
            let mut g = Self::lock(m);
            g.removals += 1;
            g.files.pop(path)
        };
        drop(removed);
    }

    /// Stop caching every path under `dir` (a container being deleted).
    pub(crate) fn forget_under(&self, dir: &Path) {
        let Some(m) = &self.inner else { return };
        let removed: Vec<Arc<File>> = {
            let mut g = Self::lock(m);
            g.removals += 1;
            let keys: Vec<Arc<Path>> = g
                .files
                .iter()
                .filter(|(k, _)| k.starts_with(dir))
                .map(|(k, _)| Arc::clone(k))
                .collect();
            keys.iter().filter_map(|k| g.files.pop(&**k)).collect()
        };
        drop(removed);
    }

    /// Files currently held open by the cache.
    pub(crate) fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |m| Self::lock(m).files.len())
    }
}
